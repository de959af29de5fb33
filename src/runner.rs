//! The distributed roles: `coordinator`, `worker`, `local` (both in one process over loopback
//! gRPC) and `status`, plus the live progress view they share.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use hbac_common::proto;
use hbac_common::proto::wire::RunPhase;
use hbac_common::records::RunReport;
use hbac_common::storage::Store;
use hbac_common::synth::{self, SynthConfig};
use hbac_coordinator::error::RunError;
use hbac_coordinator::plan::{Locations, Plan, PlanError};
use hbac_coordinator::server::{self, Config};
use hbac_coordinator::state::Settings;
use hbac_coordinator::view::{JobView, RunView};
use hbac_worker::client::{self, Ended, WorkerOptions};
use hbac_worker::train::recipe::{Preset, Recipe};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
use tracing::info;

use crate::backend::wire_backend;
use crate::cli::{
    AdminArgs, ClientTlsArgs, CoordinatorArgs, DrainArgs, LocalArgs, ReportArgs, ScheduleArgs,
    StatusArgs, TokenArgs, WorkerArgs,
};
use crate::local::Cluster;

fn secs(s: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{flag} must be a positive number"))
}

impl ScheduleArgs {
    fn settings(&self) -> Result<Settings> {
        Ok(Settings {
            lease_ttl: secs(self.lease_ttl, "lease-ttl")?,
            max_attempts: self.max_attempts.max(1),
            max_disruptions: self.max_disruptions,
            job_timeout: secs(self.job_timeout, "job-timeout")?,
            stall_timeout: secs(self.stall_timeout, "stall-timeout")?,
            worker_grace: secs(self.worker_grace, "worker-grace")?,
        })
    }

    /// The coordinator's id in the journal: `--id`, else this host and process.
    fn coordinator_id(&self) -> String {
        self.coordinator_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "coordinator".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

impl TokenArgs {
    /// The token from `--token-file` or `--token`.
    fn resolve(&self) -> Result<Option<String>> {
        if let Some(f) = &self.token_file {
            let t = std::fs::read_to_string(f).with_context(|| format!("token file {f}"))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                bail!("token file {f} is empty");
            }
            return Ok(Some(t));
        }
        Ok(self.token.clone().filter(|t| !t.is_empty()))
    }

    fn required(&self) -> Result<String> {
        self.resolve()?.context(
            "no worker token: pass --token-file FILE (or set HBAC_TOKEN); every worker must present the same token",
        )
    }
}

fn read(path: &str, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what} {path}"))
}

/// The plan of a run: one training configuration per architecture.
fn plan(
    data: &str,
    cache: &Option<String>,
    out: &str,
    archs: &[hbac_worker::model::Arch],
    recipe: &Recipe,
    jobs: usize,
) -> Result<Plan> {
    let configs = archs
        .iter()
        .map(|a| {
            let cfg = recipe.train_config(*a)?;
            Ok((a.name().to_string(), serde_json::to_value(&cfg)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let at = Locations {
        data: data.to_string(),
        cache: cache.clone(),
        out: out.to_string(),
    };
    let plan = Plan::new(
        &at,
        recipe.kfold,
        recipe.selection(),
        recipe.labels,
        configs,
        jobs,
    );
    plan.map_err(|e| match e {
        PlanError::NoArchitecture => anyhow::anyhow!("--archs names no architecture"),
        e => e.into(),
    })
}

/// A watch that turns true on SIGTERM or Ctrl-C.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("shutdown requested: stopping jobs and handing leases back");
        let _ = tx.send(true);
    });
    rx
}

/// One bar per job, refreshed from the run's view until the run ends.
fn progress_view(view: impl Fn() -> RunView + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let multi = hbac_common::progress::bars();
        let style = ProgressStyle::with_template("{prefix:28} {bar:20} {pos:>2}/{len:2} {msg}")
            .expect("valid template");
        let mut bars: Vec<ProgressBar> = Vec::new();
        loop {
            let v = view();
            if bars.is_empty() {
                bars = v
                    .jobs
                    .iter()
                    .map(|j| {
                        let b = multi.add(ProgressBar::new(1).with_style(style.clone()));
                        b.set_prefix(j.id.clone());
                        b
                    })
                    .collect();
            }
            for (b, j) in bars.iter().zip(&v.jobs) {
                b.set_length(j.epochs.max(1) as u64);
                b.set_position(j.epoch as u64);
                b.set_message(job_line(j));
            }
            if v.phase != RunPhase::Running {
                for b in &bars {
                    b.finish();
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

fn job_line(j: &JobView) -> String {
    let kl = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
    let mut line = format!(
        "{:7} {} try {} train {} valid {}",
        j.phase.label(),
        if j.worker.is_empty() { "-" } else { &j.worker },
        j.attempt,
        kl(j.train_kl),
        kl(j.valid_kl)
    );
    if let Some(eta) = j.eta_s {
        line.push_str(&format!(" eta {eta:.0}s"));
    }
    line
}

fn print_report(r: &RunReport, out: &str) {
    for (arch, kl) in &r.cv_by_arch {
        println!(
            "cv {arch}: kaggle kl {kl:.4} (folds {:?})",
            r.folds_by_arch[arch]
        );
    }
    println!(
        "cv ensemble: kaggle kl {:.4} with weights {:?} on {:?}",
        r.cv, r.weights, r.archs
    );
    if !r.cv_per_eeg.is_empty() {
        let per: Vec<String> = r
            .cv_per_eeg
            .iter()
            .map(|(k, v)| format!("{k} {v:.4}"))
            .collect();
        println!(
            "cv per eeg_id (rows averaged per recording): {}",
            per.join(", ")
        );
    }
    if let Some(b) = r.per_class.get(hbac_common::records::ENSEMBLE) {
        let classes: Vec<String> = (0..b.classes.len())
            .map(|i| {
                let recall = b.recall[i].map_or("-".into(), |v| format!("{v:.2}"));
                format!("{} kl {:.4} recall {recall}", b.classes[i], b.kl[i])
            })
            .collect();
        println!("per class (ensemble): {}", classes.join("; "));
    }
    println!(
        "wrote {out}/submission.csv ({} rows), report.json, oof.csv, cv.svg",
        r.test_rows
    );
}

/// Prints the report of a finished run; a failed run is an [`Exit`].
fn finish(result: Result<RunReport, RunError>, out: &str) -> Result<()> {
    let report = match result {
        Err(RunError::Failed(why)) => return Err(Exit::RunFailed(why).into()),
        other => other?,
    };
    print_report(&report, out);
    Ok(())
}

/// `hbac coordinator`.
pub async fn coordinator(a: CoordinatorArgs) -> Result<()> {
    let token = a.token.required()?;
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => {
            let mut t = ServerTlsConfig::new().identity(Identity::from_pem(
                read(c, "TLS certificate")?,
                read(k, "TLS key")?,
            ));
            if let Some(ca) = &a.tls_client_ca {
                t = t.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
            }
            Some(t)
        }
        _ => None,
    };
    let plan = plan(
        &a.data,
        &a.cache,
        &a.out,
        &a.schedule.archs,
        &Recipe::from(&a.recipe),
        a.jobs,
    )?;
    a.check_transport().map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    let out = plan.out.clone();
    let handle = server::start(
        Config {
            plan,
            settings: a.schedule.settings()?,
            http: Some(a.schedule.http(Some(token.clone()))),
            token,
            tls,
            linger: secs(a.linger, "linger")?,
            id: a.schedule.coordinator_id(),
        },
        listener,
    )
    .await?;
    println!(
        "coordinator on {} ({} jobs); output {out}",
        handle.addr,
        handle.shared.jobs.len()
    );
    if let Some(h) = handle.http_addr {
        println!("dashboard on http://{h}/ (metrics at /metrics)");
    }
    let shared = handle.shared.clone();
    let view = progress_view(move || shared.view());
    let result = finish(handle.wait().await, &out);
    let _ = view.await;
    result
}

/// `hbac worker`.
pub async fn worker(a: WorkerArgs) -> Result<()> {
    let token = a.token.required()?;
    let id = a.id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let opts = WorkerOptions {
        coordinator: a.coordinator.clone(),
        token,
        worker_id: id,
        slots: a.gpus.max(1),
        backend: wire_backend(a.device),
        tls: {
            a.tls
                .check_transport(&a.coordinator)
                .map_err(anyhow::Error::msg)?;
            client_tls(&a.tls)?
        },
        patience: secs(a.patience, "patience")?,
        storage_roots: a.storage_roots.clone(),
    };
    // Exit 0 only when the run is over (for the Kubernetes worker Job, a zero exit ends the
    // whole Job): a drained worker exits with its own code, a signalled one with an error.
    match client::run(opts, crate::backend::executor(a.device)?, shutdown_signal()).await? {
        Ended::RunOver => {
            println!("worker done");
            Ok(())
        }
        Ended::Drained => Err(Exit::Drained.into()),
        Ended::Shutdown => {
            bail!("stopped by a signal; running jobs were handed back to the coordinator")
        }
    }
}

/// `hbac local`.
pub async fn local(a: LocalArgs) -> Result<()> {
    let out = Store::create(&a.out)?;
    let mut recipe = Recipe::from(&a.recipe);
    let data = match &a.data {
        Some(d) => d.clone(),
        None => {
            // The built-in defaults: a synthetic data set, the CPU-sized recipe, 3 folds
            // unless --k says otherwise.
            recipe.preset = Preset::Quick;
            if recipe.kfold.k == 5 {
                recipe.kfold.k = 3;
            }
            let dir = out.url("data");
            let store = Store::create(&dir)?;
            if !store.exists("train.csv").await? {
                let cfg = SynthConfig {
                    patients: a.patients,
                    eeg_files: 1,
                    // Every EEG, carrying its class, when the models look at them.
                    all_eegs: recipe.input.uses_eegs(),
                    concurrency: a.jobs,
                    ..SynthConfig::default()
                };
                let summary = synth::generate(&cfg, &store).await?;
                println!(
                    "synthetic data set in {dir}: {} labelled rows, {} test spectrograms",
                    summary.train_rows, summary.test_spectrograms
                );
            }
            dir
        }
    };
    let plan = plan(
        &data,
        &a.cache,
        out.root(),
        &a.schedule.archs,
        &recipe,
        a.jobs,
    )?;
    let out_root = plan.out.clone();
    let jobs = plan.jobs().len();
    let mut cluster = Cluster::start(Config {
        plan,
        settings: a.schedule.settings()?,
        token: hbac_coordinator::state::random_hex(32),
        tls: None,
        http: Some(a.schedule.http(None)),
        linger: Duration::from_secs(2),
        id: a.schedule.coordinator_id(),
    })
    .await?;
    println!(
        "hbac local: {jobs} jobs ({} × {} folds) on {} in-process workers, coordinator on {}",
        a.schedule.archs.len(),
        recipe.kfold.k,
        a.workers,
        cluster.coordinator.addr
    );
    let exec = crate::backend::executor(a.device)?;
    let shutdown = shutdown_signal();
    for i in 0..a.workers.max(1) {
        let opts = cluster.worker_options(&format!("{}-{i}", a.worker_id), wire_backend(a.device));
        cluster.add_worker(opts, exec.clone(), shutdown.clone());
    }
    let http_addr = cluster.coordinator.http_addr;
    if let Some(h) = http_addr {
        println!("dashboard: http://{h}/");
    }
    let shared = cluster.coordinator.shared.clone();
    let view = progress_view(move || shared.view());
    let result = finish(cluster.finish().await, &out_root);
    let _ = view.await;
    if let (true, Some(h)) = (a.serve, http_addr) {
        println!("serving the dashboard on http://{h}/ until Ctrl-C");
        let _ = tokio::signal::ctrl_c().await;
    }
    result
}

/// `hbac report`.
pub async fn report(a: ReportArgs) -> Result<()> {
    let out = Store::open(&a.run)?;
    let at = hbac_coordinator::report::write(&out, a.to.as_deref()).await?;
    println!("wrote {at}");
    Ok(())
}

/// Exits that are not plain errors: `main` exits with their own code, so that a scheduler
/// (the Kubernetes Jobs' pod failure policies) can tell them from a crash.
#[derive(Debug)]
pub enum Exit {
    /// `hbac worker` was drained; its jobs are done and the run goes on.
    Drained,
    /// The run failed for good: a job failed non-retryably or spent its attempts, or no
    /// worker came. Restarting the coordinator would not help.
    RunFailed(String),
}

impl Exit {
    /// The process's exit code.
    pub fn code(&self) -> u8 {
        match self {
            Exit::Drained => crate::cli::DRAINED_EXIT_CODE,
            Exit::RunFailed(_) => crate::cli::RUN_FAILED_EXIT_CODE,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Drained => write!(
                f,
                "drained: this worker's jobs are done and it takes no new one (the run goes on)"
            ),
            Exit::RunFailed(why) => write!(f, "error: the run failed: {why}"),
        }
    }
}

impl std::error::Error for Exit {}

/// A token-carrying client for an operator's command.
fn admin_client(a: &AdminArgs) -> Result<client::Client> {
    let token = a.token.required()?;
    a.tls
        .check_transport(&a.coordinator)
        .map_err(anyhow::Error::msg)?;
    Ok(client::connect(
        &a.coordinator,
        &token,
        client_tls(&a.tls)?,
    )?)
}

/// The TLS settings of a coordinator client (`None`: plain text).
fn client_tls(a: &ClientTlsArgs) -> Result<Option<ClientTlsConfig>> {
    if a.tls_ca.is_none() && a.tls_cert.is_none() {
        return Ok(None);
    }
    // The given CA, or else the system's trusted roots (a coordinator with a public certificate).
    let mut t = match &a.tls_ca {
        Some(ca) => {
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "TLS CA")?))
        }
        None => ClientTlsConfig::new().with_native_roots(),
    };
    if let (Some(c), Some(k)) = (&a.tls_cert, &a.tls_key) {
        t = t.identity(Identity::from_pem(
            read(c, "TLS certificate")?,
            read(k, "TLS key")?,
        ));
    }
    Ok(Some(t))
}

/// `hbac drain`.
pub async fn drain(a: DrainArgs) -> Result<()> {
    let r = admin_client(&a.admin)?
        .drain(proto::wire::DrainRequest {
            worker_id: a.worker.clone(),
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "coordinator {}: {}",
                a.admin.coordinator,
                client::describe(&e)
            )
        })?
        .into_inner();
    println!(
        "worker {}: draining ({} registration(s)); it exits after its {} running job(s)",
        a.worker, r.sessions, r.jobs
    );
    Ok(())
}

/// `hbac status`: the run's view ([`RunView`], as `GET /api/run` answers it), as JSON or a
/// line per job.
pub async fn status(a: StatusArgs) -> Result<()> {
    let s = admin_client(&a.admin)?
        .status(proto::wire::StatusRequest {})
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "coordinator {}: {}",
                a.admin.coordinator,
                client::describe(&e)
            )
        })?
        .into_inner();
    let v: RunView = serde_json::from_str(&s.run_json).with_context(|| {
        format!(
            "coordinator {} sent no readable run view (an older hbac?)",
            a.admin.coordinator
        )
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "run {} · {} worker(s) · output {}",
        v.phase.label(),
        v.live_workers,
        v.out
    );
    if let Some(e) = &v.error {
        println!("error: {e}");
    }
    if let Some(r) = &v.results {
        println!(
            "cv kaggle kl {:.4}: submission.csv, report.json and cv.svg are written",
            r.cv
        );
    }
    for j in &v.jobs {
        println!("{:28} {:>2}/{:<2} {}", j.id, j.epoch, j.epochs, job_line(j));
    }
    Ok(())
}
