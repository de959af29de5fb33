// The hbac dashboard. Live, it polls GET /api/run every second and fetches a figure again only
// when its curve changed; in report.html it draws the snapshot embedded in the page. Every
// string from the run is written with textContent (never as markup), and figures are shown as
// data: images, so nothing in them can run.
"use strict";
(function () {
  const snapshotEl = document.getElementById("snapshot");
  const snapshot = snapshotEl ? JSON.parse(snapshotEl.textContent) : null;
  let token = sessionStorage.getItem("hbac-token") || "";
  const shownFigures = {};

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function num(v, digits) {
    return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
  }
  function duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? h + " h " + m + " min" : m ? m + " min " + r + " s" : r + " s";
  }
  function cell(row, text, cls) {
    const td = el("td", text, cls);
    row.appendChild(td);
    return td;
  }
  function svgUrl(svg) {
    return "data:image/svg+xml;charset=utf-8," + encodeURIComponent(svg);
  }

  async function get(path, json) {
    const r = await fetch(path, {
      headers: token ? { Authorization: "Bearer " + token } : {},
      cache: "no-store",
    });
    if (r.status === 401) throw new Error("401");
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return json ? r.json() : r.text();
  }

  // A link to a run file: relative to report.html, or through /files/ (with the token).
  function fileLink(path, name) {
    const a = el("a", name);
    if (snapshot) {
      a.href = path.split("/").map(encodeURIComponent).join("/");
      return a;
    }
    const url = "/files/" + path.split("/").map(encodeURIComponent).join("/");
    a.href = url;
    a.addEventListener("click", async (ev) => {
      if (!token) return;
      ev.preventDefault();
      const r = await fetch(url, { headers: { Authorization: "Bearer " + token } });
      window.open(URL.createObjectURL(await r.blob()), "_blank");
    });
    return a;
  }

  function showFigure(img, name, version, figures) {
    if (shownFigures[name] === version) return;
    const load = figures
      ? Promise.resolve(figures[name])
      : get(name === "cv" ? "/plots/cv.svg" : "/plots/jobs/" + encodeURIComponent(name) + ".svg", false);
    load.then((svg) => {
      if (svg) {
        img.src = svgUrl(svg);
        img.dataset.version = version;
        shownFigures[name] = version;
      }
    }).catch(() => {});
  }

  function renderHeader(run) {
    const phase = document.getElementById("phase");
    phase.textContent = run.phase;
    phase.className = "phase " + run.phase;
    const parts = [
      run.jobs.length + " jobs",
      run.epochs_done + " / " + run.epochs_total + " epochs",
      run.workers.length + " workers",
      "output " + run.out,
    ];
    if (run.phase === "running") parts.push("ETA " + duration(run.eta_s));
    document.getElementById("summary").textContent = parts.join(" · ");
    const pct = run.epochs_total ? (100 * run.epochs_done) / run.epochs_total : 0;
    document.getElementById("bar").style.width = pct.toFixed(1) + "%";
    const error = document.getElementById("error");
    error.hidden = !run.error;
    error.textContent = run.error || "";
  }

  function renderJobs(run) {
    const body = document.querySelector("#jobs tbody");
    body.replaceChildren();
    for (const j of run.jobs) {
      const tr = el("tr");
      tr.dataset.job = j.id;
      tr.dataset.phase = j.phase;
      tr.dataset.epoch = j.epoch;
      cell(tr, j.id);
      cell(tr, j.arch);
      cell(tr, j.fold, "num");
      cell(tr, "").appendChild(el("span", j.phase, "phase " + j.phase));
      cell(tr, j.worker || "–", "worker");
      cell(tr, j.attempt, "num");
      cell(tr, j.epoch + " / " + j.epochs, "num");
      cell(tr, num(j.train_kl, 4), "num");
      cell(tr, num(j.valid_kl, 4), "num");
      cell(tr, num(j.samples_per_second, 1), "num");
      cell(tr, j.phase === "leased" ? duration(j.eta_s) : "–", "num");
      const files = cell(tr, "");
      if (j.error) files.appendChild(el("span", j.error, "error"));
      for (const f of j.files) {
        files.appendChild(fileLink(j.folder + "/" + f, f));
        files.appendChild(document.createTextNode(" "));
      }
      body.appendChild(tr);
    }
  }

  function renderWorkers(run) {
    const body = document.querySelector("#workers tbody");
    body.replaceChildren();
    for (const w of run.workers) {
      const tr = el("tr");
      tr.dataset.worker = w.id;
      cell(tr, w.id + (w.draining ? " (draining)" : ""), "worker");
      cell(tr, w.backend);
      cell(tr, w.gpus, "num");
      cell(tr, w.jobs, "num");
      cell(tr, duration(w.last_seen_s) + " ago", "num");
      body.appendChild(tr);
    }
    if (!run.workers.length) {
      const tr = el("tr");
      cell(tr, snapshot ? "not recorded in a report" : "none connected", "muted").colSpan = 5;
      body.appendChild(tr);
    }
  }

  function valueCell(row, v, digits, key) {
    const td = cell(row, num(v, digits), "num");
    if (v !== null && v !== undefined) td.dataset.value = String(v);
    if (key) td.dataset.key = key;
    return td;
  }

  function renderResults(run) {
    const box = document.getElementById("results");
    const r = run.results;
    if (!r) return;
    const folds = Math.max(0, ...Object.values(r.folds_by_arch).map((f) => f.length));
    const table = el("table");
    table.id = "cv";
    const head = el("tr");
    head.appendChild(el("th", "Kaggle KL (out of fold)"));
    for (let f = 0; f < folds; f++) head.appendChild(el("th", "fold " + f, "num"));
    head.appendChild(el("th", "CV", "num"));
    head.appendChild(el("th", "ensemble weight", "num"));
    table.appendChild(head);
    r.archs.forEach((arch, a) => {
      const tr = el("tr");
      cell(tr, arch);
      (r.folds_by_arch[arch] || []).forEach((v, f) => valueCell(tr, v, 4, arch + "/fold" + f));
      valueCell(tr, r.cv_by_arch[arch], 4, arch + "/cv");
      valueCell(tr, r.weights[a], 2, arch + "/weight");
      table.appendChild(tr);
    });
    const prior = el("tr", null, "baseline");
    cell(prior, "prior only (training folds' mean target)");
    for (let f = 0; f < folds; f++) {
      const line = r.jobs.find((j) => j.fold === f && j.prior_kl !== null && j.prior_kl !== undefined);
      valueCell(prior, line ? line.prior_kl : null, 4, "prior/fold" + f);
    }
    cell(prior, "");
    cell(prior, "");
    table.appendChild(prior);
    const total = el("tr", null, "total");
    cell(total, "ensemble");
    for (let f = 0; f < folds; f++) cell(total, "");
    valueCell(total, r.cv, 4, "ensemble/cv");
    cell(total, "");
    table.appendChild(total);
    const perClass = renderPerClass(r);
    const files = el("p");
    for (const f of run.files) {
      files.appendChild(fileLink(f, f));
      files.appendChild(document.createTextNode(" "));
    }
    box.replaceChildren(table, ...perClass, files);
  }

  // Per class, out of fold, for the ensemble and each architecture: the class's share of the
  // KL, recall of expert_consensus, and the confusion matrix (rows: expert_consensus, columns:
  // the most probable predicted class). Cells carry data-key "<model>/<class>/kl|recall|<to>".
  function renderPerClass(r) {
    const pc = r.per_class || {};
    const keys = ["ensemble", ...r.archs].filter((k) => pc[k]);
    if (!keys.length) return [];
    const details = el("details");
    details.id = "per-class";
    details.open = true;
    details.appendChild(el("summary", "Per class (out of fold): share of the KL, recall, confusion"));
    for (const key of keys) {
      const b = pc[key];
      const table = el("table", null, "per-class");
      table.dataset.model = key;
      const caption = el("caption", key === "ensemble" ? "ensemble" : key);
      table.appendChild(caption);
      const head = el("tr");
      head.appendChild(el("th", "expert_consensus"));
      head.appendChild(el("th", "rows", "num"));
      head.appendChild(el("th", "KL share", "num"));
      head.appendChild(el("th", "recall", "num"));
      for (const c of b.classes) head.appendChild(el("th", "→ " + c, "num"));
      table.appendChild(head);
      b.classes.forEach((c, i) => {
        const tr = el("tr");
        tr.dataset.class = c;
        cell(tr, c);
        valueCell(tr, b.rows[i], 0, key + "/" + c + "/rows");
        valueCell(tr, b.kl[i], 4, key + "/" + c + "/kl");
        valueCell(tr, b.recall[i], 2, key + "/" + c + "/recall");
        b.confusion[i].forEach((n, j) => {
          const td = valueCell(tr, n, 0, key + "/" + c + "/" + b.classes[j]);
          if (i === j) td.classList.add("diagonal");
        });
        table.appendChild(tr);
      });
      details.appendChild(table);
    }
    return [details];
  }

  function renderFigures(run, figures) {
    const version = (j) => j.curve.length + ":" + j.phase;
    showFigure(document.getElementById("cv-plot"), "cv", run.jobs.map(version).join(","), figures);
    const grid = document.getElementById("job-plots");
    for (const j of run.jobs) {
      let fig = grid.querySelector('figure[data-job="' + CSS.escape(j.id) + '"]');
      if (!fig) {
        fig = el("figure");
        fig.dataset.job = j.id;
        const img = el("img", null, "plot");
        img.alt = "KL divergence per epoch of " + j.id;
        fig.appendChild(img);
        grid.appendChild(fig);
      }
      fig.dataset.points = j.curve.length;
      showFigure(fig.querySelector("img"), j.id, version(j), figures);
    }
  }

  function render(run, figures) {
    document.getElementById("login").hidden = true;
    document.getElementById("run").hidden = false;
    renderHeader(run);
    renderResults(run);
    renderJobs(run);
    renderWorkers(run);
    renderFigures(run, figures);
    document.body.dataset.phase = run.phase;
    document.getElementById("footer").textContent = snapshot
      ? "hbac report of " + run.out
      : "live · updated " + new Date().toLocaleTimeString();
  }

  function askToken(message) {
    document.getElementById("run").hidden = true;
    document.getElementById("login").hidden = false;
    document.getElementById("login-error").textContent = message || "";
  }

  document.getElementById("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = document.getElementById("token").value;
    sessionStorage.setItem("hbac-token", token);
    poll();
  });

  let timer = null;
  async function poll() {
    clearTimeout(timer);
    try {
      const run = await get("/api/run", true);
      render(run, null);
      timer = setTimeout(poll, run.phase === "running" || run.phase === "aggregating" ? 1000 : 5000);
    } catch (e) {
      if (e.message === "401") {
        askToken(token ? "That token was refused." : "");
      } else {
        document.getElementById("footer").textContent = "cannot reach the coordinator (" + e.message + "); retrying";
        timer = setTimeout(poll, 2000);
      }
    }
  }

  if (snapshot) render(snapshot.run, snapshot.figures);
  else poll();
})();
