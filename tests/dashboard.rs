//! The live dashboard in a real browser: headless Chromium (`--dump-dom`, which runs the page's
//! script, with a NetLog of every request it makes) against a real `hbac local` run whose workers
//! are named `<script>…</script>`. It checks that the page shows every job, that a job's curve
//! gains points while it trains, that the final CV table holds `report.json`'s numbers, that the
//! worker name is shown as text, and that nothing is requested from outside loopback; and that
//! `hbac report` writes the same page as one offline file.
//!
//! Chromium comes from `HBAC_CHROMIUM`, or `chromium` / `chromium-browser` / `google-chrome` on
//! the PATH. Without one the test says so and passes, unless `HBAC_REQUIRE_BROWSER` is set (CI
//! sets it, and installs Debian's `chromium`).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EVIL: &str = "<script>document.title='pwned'</script><b>w</b>";

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HBAC_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// A plain HTTP/1.0 GET on loopback: status line and body.
fn get(addr: &str, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// Loads `url` in headless Chromium, lets its script run, and returns the DOM; every request
/// it made is appended to `netlog`'s list.
fn dom(chrome: &Path, url: &str, work: &Path, netlogs: &mut Vec<PathBuf>) -> String {
    let netlog = work.join(format!("netlog-{}.json", netlogs.len()));
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            // Chromium's own form-autofill lookups (the token form) are filed under the page's
            // site in the NetLog; they are the browser's, not the page's.
            "--disable-features=AutofillServerCommunication",
            "--virtual-time-budget=2500",
        ])
        .arg(format!(
            "--user-data-dir={}",
            work.join("profile").display()
        ))
        .arg(format!("--log-net-log={}", netlog.display()))
        .args(["--dump-dom", url])
        .stderr(Stdio::null())
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed on {url}");
    netlogs.push(netlog);
    String::from_utf8(out.stdout).unwrap()
}

/// The value of attribute `name` in the tag that starts at `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let end = tag.find('>')?;
    let tag = &tag[..end];
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// `(data-job, data-points)` of every job figure, and `data-job` of every job row.
fn jobs_in(dom: &str) -> (Vec<(String, usize)>, Vec<String>) {
    let figures = dom
        .match_indices("<figure ")
        .filter_map(|(i, _)| {
            let t = &dom[i..];
            Some((
                attr(t, "data-job")?.to_string(),
                attr(t, "data-points")?.parse().ok()?,
            ))
        })
        .collect();
    let rows = dom
        .match_indices("<tr ")
        .filter_map(|(i, _)| attr(&dom[i..], "data-job").map(str::to_string))
        .collect();
    (figures, rows)
}

/// `data-key` → `data-value` of every number in the CV table.
fn cv_cells(dom: &str) -> std::collections::BTreeMap<String, f64> {
    dom.match_indices("<td ")
        .filter_map(|(i, _)| {
            let t = &dom[i..];
            Some((
                attr(t, "data-key")?.to_string(),
                attr(t, "data-value")?.parse().ok()?,
            ))
        })
        .collect()
}

/// Every request the page made (the NetLog's jobs whose initiator or network isolation key is
/// the loopback site: Chromium's own background traffic has neither) that did not go to
/// loopback.
fn outside_requests(netlogs: &[PathBuf]) -> Vec<String> {
    let mut outside = Vec::new();
    for log in netlogs {
        let text = std::fs::read_to_string(log).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a NetLog: {e}", log.display()));
        let start = &v["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
        let mut page = 0;
        for e in v["events"].as_array().unwrap() {
            let p = &e["params"];
            let from_page = ["initiator", "network_isolation_key"].iter().any(|k| {
                p[*k]
                    .as_str()
                    .is_some_and(|s| s.starts_with("http://127.0.0.1"))
            });
            if e["type"] != *start || !from_page {
                continue;
            }
            page += 1;
            let url = p["url"].as_str().unwrap_or_default();
            if !["http://127.0.0.1:", "data:", "blob:"]
                .iter()
                .any(|l| url.starts_with(l))
            {
                outside.push(url.to_string());
            }
        }
        assert!(
            page > 0,
            "{}: no request of the page recorded",
            log.display()
        );
    }
    outside
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Local(Child);

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Local {
    /// `hbac local --serve` of the reduced model (2 folds × 2 architectures, one worker) on
    /// `data` into `out`, serving the dashboard on `addr`, once it answers there.
    fn start(data: &str, out: &Path, addr: &str, epochs: usize, env: &[(&str, &str)]) -> Local {
        let epochs = epochs.to_string();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hbac"));
        cmd.args(["local", "--data", data, "--out"])
            .arg(out)
            .args([
                "--k",
                "2",
                "--workers",
                "1",
                "--width",
                "0.25",
                "--downsample",
                "8",
            ])
            .args([
                "--epochs",
                &epochs,
                "--batch-size",
                "16",
                "--http",
                addr,
                "--serve",
            ])
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let local = Local(cmd.spawn().unwrap());
        wait_for("the dashboard", Duration::from_secs(60), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        local
    }
}

#[test]
fn the_dashboard_shows_a_live_run_in_a_real_browser() {
    let Some(chrome) = chromium() else {
        assert!(
            std::env::var_os("HBAC_REQUIRE_BROWSER").is_none(),
            "HBAC_REQUIRE_BROWSER is set but no Chromium was found (set HBAC_CHROMIUM)"
        );
        eprintln!("SKIPPED: no Chromium on this machine (install `chromium` or set HBAC_CHROMIUM)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 16, 3);
    let out = tmp.path().join("run");
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let local = Local::start(&data, &out, &addr, 8, &[("HBAC_WORKER_ID", EVIL)]);
    let url = format!("http://{addr}/");
    let run = || -> serde_json::Value {
        let (status, _, body) = get(&addr, "/api/run", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    // Security headers on the page, and nothing but what it lists is served.
    let (status, head, _) = get(&addr, "/", None);
    assert_eq!(status, 200);
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert_eq!(get(&addr, "/files/data/train.csv", None).0, 404);
    assert_eq!(get(&addr, "/files/../run/journal", None).0, 404);

    let work = tmp.path().join("chromium");
    std::fs::create_dir_all(&work).unwrap();
    let mut netlogs = Vec::new();
    // While a job trains: its figure gains points between two loads of the page.
    wait_for("a job with an epoch", Duration::from_secs(120), || {
        run()["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["phase"] == "leased" && !j["curve"].as_array().unwrap().is_empty())
    });
    let first = dom(&chrome, &url, &work, &mut netlogs);
    let (figures, rows) = jobs_in(&first);
    let planned: Vec<String> = run()["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(planned.len(), 4, "2 architectures × 2 folds");
    assert_eq!(rows, planned, "the page lists every job");
    let before: usize = figures.iter().map(|f| f.1).sum();
    assert!(before >= 1, "{figures:?}");
    let mut grew = false;
    let start = Instant::now();
    while !grew && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1500));
        let later = dom(&chrome, &url, &work, &mut netlogs);
        let now: usize = jobs_in(&later).0.iter().map(|f| f.1).sum();
        grew = now > before;
    }
    assert!(grew, "no curve gained a point while the run trained");

    // The worker's name is text on the page, never markup.
    assert!(
        !first.contains(EVIL),
        "the worker name reached the page as markup"
    );
    assert!(
        first.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;b&gt;w&lt;/b&gt;-0")
    );
    assert!(first.contains("<title>hbac run</title>"));

    // Finished: the CV table holds report.json's numbers.
    wait_for("the end of the run", Duration::from_secs(300), || {
        run()["phase"] == "finished"
    });
    let last = dom(&chrome, &url, &work, &mut netlogs);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let cells = cv_cells(&last);
    assert_eq!(cells["ensemble/cv"], report["cv"].as_f64().unwrap());
    for (a, arch) in report["archs"].as_array().unwrap().iter().enumerate() {
        let arch = arch.as_str().unwrap();
        assert_eq!(
            cells[&format!("{arch}/cv")],
            report["cv_by_arch"][arch].as_f64().unwrap()
        );
        assert_eq!(
            cells[&format!("{arch}/weight")],
            report["weights"][a].as_f64().unwrap()
        );
        for (f, v) in report["folds_by_arch"][arch]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(cells[&format!("{arch}/fold{f}")], v.as_f64().unwrap());
        }
    }
    assert!(cells.contains_key("prior/fold0"), "the prior-only baseline");
    // Per class: the ensemble's and each architecture's KL shares, recall and confusion.
    let per_class = report["per_class"]
        .as_object()
        .expect("report.json per_class");
    let mut models: Vec<&str> = vec!["ensemble"];
    models.extend(
        report["archs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap()),
    );
    for model in models {
        let b = &per_class[model];
        let classes: Vec<&str> = b["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(classes[0], "Seizure");
        let (mut share, mut counted) = (0.0, 0);
        for (i, c) in classes.iter().enumerate() {
            let kl = b["kl"][i].as_f64().unwrap();
            assert_eq!(cells[&format!("{model}/{c}/kl")], kl, "{model} {c}");
            share += kl;
            if let Some(r) = b["recall"][i].as_f64() {
                assert_eq!(cells[&format!("{model}/{c}/recall")], r);
            }
            for (j, to) in classes.iter().enumerate() {
                let n = b["confusion"][i][j].as_f64().unwrap();
                assert_eq!(cells[&format!("{model}/{c}/{to}")], n, "{model} {c} → {to}");
                counted += n as usize;
            }
        }
        assert_eq!(counted, report["oof_rows"].as_u64().unwrap() as usize);
        let cv = match model {
            "ensemble" => report["cv"].as_f64().unwrap(),
            arch => report["cv_by_arch"][arch].as_f64().unwrap(),
        };
        assert!(
            (share - cv).abs() < 1e-9,
            "{model}: shares add to {share}, CV {cv}"
        );
    }
    assert!(last.contains("data-phase=\"finished\""));

    // Nothing from outside loopback, in any load.
    let outside = outside_requests(&netlogs);
    assert!(outside.is_empty(), "requests outside loopback: {outside:?}");

    // hbac report: the same page, offline, from the files alone.
    drop(local);
    let page = out.join("report.html");
    common::ok(&["report", out.to_str().unwrap()]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains("src=\"app.js\"") && !html.contains("href=\"style.css\""));
    let offline = dom(
        &chrome,
        &format!("file://{}", page.display()),
        &work,
        &mut netlogs,
    );
    let (figures, rows) = jobs_in(&offline);
    assert_eq!(rows, planned);
    assert_eq!(figures.len(), 4);
    assert!(figures.iter().all(|f| f.1 == 8), "{figures:?}");
    assert_eq!(
        cv_cells(&offline),
        cells,
        "the report's table is the live one"
    );
    assert!(!offline.contains(EVIL));
    // A page from a file has no origin to tell its requests by: it holds no address to request.
    let addresses = html.matches("http://").count() + html.matches("https://").count();
    let svg_namespaces = html.matches("http://www.w3.org/").count();
    assert_eq!(
        addresses, svg_namespaces,
        "report.html names an address to load"
    );
}

#[test]
fn the_api_wants_the_token_when_one_is_set() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::synth(&tmp.path().join("data"), 8, 4);
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let out = tmp.path().join("run");
    let _local = Local::start(&data, &out, &addr, 1, &[("HBAC_HTTP_TOKEN", "s3cret")]);
    // The page itself and /metrics are open; the data is not, without the right token.
    assert_eq!(get(&addr, "/", None).0, 200);
    assert_eq!(get(&addr, "/metrics", None).0, 200);
    for path in ["/api/run", "/plots/cv.svg", "/files/report.json"] {
        assert_eq!(get(&addr, path, None).0, 401, "{path}");
        assert_eq!(get(&addr, path, Some("s3cre")).0, 401, "{path}");
    }
    let (status, _, body) = get(&addr, "/api/run", Some("s3cret"));
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["format"], 1);
    assert_eq!(v["jobs"].as_array().unwrap().len(), 4);
    assert!(!body.contains("s3cret"));
}
