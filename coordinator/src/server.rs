//! Running a coordinator: claim the run's journal (waiting out a previous owner that may still
//! be alive), resume its state, serve gRPC (the service, health, reflection; token-checked,
//! optional TLS / mutual TLS, HTTP/2 keep-alives) and the HTTP port (dashboard, API, Prometheus metrics), apply the deadlines,
//! renew the claim, and aggregate when every job is done. A coordinator replaced by a newer
//! one stops leasing and exits with [`RunError::Fenced`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbac_common::proto::FILE_DESCRIPTOR_SET;
use hbac_common::proto::wire::coordinator_server::CoordinatorServer;
use hbac_common::storage::Store;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Server, ServerTlsConfig};
use tracing::{error, info, warn};

use crate::aggregate::aggregate;
use crate::error::RunError;
use crate::http::{self, HttpConfig};
use crate::journal::{Journal, JournalError};
use crate::plan::Plan;
use crate::service::{Service, check_token, tick_period};
use crate::shared::Shared;
use crate::state::{RunState, Settings, State};
use hbac_common::records::RunReport;

/// A coordinator's settings.
#[derive(Clone)]
pub struct Config {
    pub plan: Plan,
    pub settings: Settings,
    /// The shared worker token.
    pub token: String,
    pub tls: Option<ServerTlsConfig>,
    /// Serve the dashboard, its API and Prometheus metrics ([`http`]).
    pub http: Option<HttpConfig>,
    /// How long to keep answering "stop" to workers after the run ends.
    pub linger: Duration,
    /// This coordinator's id in the journal (who owns the run).
    pub id: String,
}

impl Config {
    /// How long a claim on the run lives without a journal write: a starting coordinator that
    /// finds a younger one watches the journal this long before it takes the run over.
    pub fn owner_lifetime(&self) -> Duration {
        (self.settings.lease_ttl / 2).max(Duration::from_millis(200))
    }
}

/// A started coordinator.
pub struct Handle {
    /// Where it listens for gRPC.
    pub addr: SocketAddr,
    /// Where it serves the dashboard and metrics, if asked to.
    pub http_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    task: JoinHandle<Result<RunReport, RunError>>,
    serving: tokio::task::AbortHandle,
}

impl Handle {
    /// Waits for the run to end: the report, or why it failed.
    pub async fn wait(self) -> Result<RunReport, RunError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(RunError::Failed(format!("coordinator task: {e}"))),
        }
    }

    /// Stops the coordinator at once, as a crash would (the journal stays as it was).
    pub fn abort(&self) {
        self.task.abort();
        self.serving.abort();
    }
}

/// Resumes the plan's journal (if any), starts serving on `listener`, and runs the plan to
/// the end in a background task.
pub async fn start(cfg: Config, listener: TcpListener) -> Result<Handle, RunError> {
    let out = Store::create(&cfg.plan.out)?;
    let (journal, seen) = retrying("claim the run", journal_trouble, || {
        Journal::claim(&out, &cfg.plan, &cfg.id, cfg.owner_lifetime())
    })
    .await?;
    let (entries, drained) = seen.map(|s| (s.jobs, s.drained)).unwrap_or_default();
    let mut state = State::new(
        cfg.plan.jobs(),
        &entries,
        drained,
        cfg.settings.clone(),
        Instant::now().into_std(),
    );
    state.set_generation(journal.generation());
    {
        let c = state.counters();
        let done = state.done().len();
        if done > 0 || c.adopted > 0 {
            info!(done, adopted = c.adopted, "resuming from the journal");
        }
    }
    let shared = Arc::new(Shared::new(state, cfg.plan.clone(), out, journal));
    // The claim entry: the run is ours from here on.
    retrying("write the claim entry", journal_trouble, || {
        shared.renew(Duration::ZERO, false)
    })
    .await?;

    let addr = listener
        .local_addr()
        .map_err(|e| RunError::Transport(e.to_string()))?;
    let http_addr = match &cfg.http {
        Some(h) => Some(http::serve(h, shared.clone()).await?),
        None => None,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CoordinatorServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RunError::Transport(e.to_string()))?;
    let mut server = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE * 2));
    if let Some(tls) = cfg.tls.clone() {
        server = server
            .tls_config(tls)
            .map_err(|e| RunError::Transport(e.to_string()))?;
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(CoordinatorServer::with_interceptor(
            Service(shared.clone()),
            check_token(cfg.token.clone()),
        ));
    let serving = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async {
            let _ = stop_rx.await;
        },
    ));
    info!(%addr, out = shared.out.root(), "coordinator listening");
    let serving_abort = serving.abort_handle();

    let run = shared.clone();
    let task = tokio::spawn(async move {
        let result = drive(&run, &cfg).await;
        match &result {
            Ok(report) => {
                let _ = run.report.set(report.clone());
            }
            Err(e @ RunError::Journal(JournalError::Fenced { .. })) => {
                // Not a failed run: another coordinator runs it now. Close at once, so the
                // workers' retries reach the new owner.
                error!(error = %e, "replaced by another coordinator; stopping");
            }
            Err(e) => {
                error!(error = %e, "run failed");
                // Every job may be done while aggregation failed: status must say failed.
                run.lock().fail_run(e.to_string());
            }
        }
        // Keep answering "stop" for a while so workers exit cleanly, then close.
        if run.fenced.get().is_none() {
            tokio::time::sleep(cfg.linger).await;
        }
        let _ = stop_tx.send(());
        let _ = serving.await;
        health.set_not_serving::<CoordinatorServer<Service>>().await;
        result
    });
    Ok(Handle {
        addr,
        http_addr,
        shared,
        task,
        serving: serving_abort,
    })
}

/// HTTP/2 pings on idle connections, both ways: a peer that stops answering is dropped
/// instead of hanging calls until the operating system's TCP timeout.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// Storage trouble that may pass (a refused or missing object will not).
fn storage_trouble(e: &hbac_common::Error) -> bool {
    matches!(e, hbac_common::Error::Storage { .. })
}

fn journal_trouble(e: &JournalError) -> bool {
    matches!(e, JournalError::Storage(e) if storage_trouble(e))
}

/// Runs `f` until it succeeds, retrying errors that `transient` accepts a few times with a
/// growing pause: a store that fails for a moment must not fail a run whose jobs are done.
async fn retrying<T, E, F, Fut>(what: &str, transient: fn(&E) -> bool, mut f: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(250);
    for _ in 0..6 {
        match f().await {
            Err(e) if transient(&e) => {
                warn!(error = %e, "could not {what}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    f().await
}

/// Applies deadlines and keeps the journal current (at least every third of the owner
/// lifetime, which renews the claim) until every job is done or the run fails, then aggregates
/// and releases the run.
async fn drive(shared: &Arc<Shared>, cfg: &Config) -> Result<RunReport, RunError> {
    let period = tick_period(cfg.settings.lease_ttl);
    let renew = cfg.owner_lifetime() / 3;
    loop {
        let run = {
            let mut s = shared.lock();
            s.tick(Instant::now().into_std());
            s.run().clone()
        };
        match shared.renew(renew, false).await {
            Ok(()) => {}
            Err(e @ JournalError::Fenced { .. }) => return Err(e.into()),
            Err(e) => warn!(error = %e, "could not write the journal; retrying"),
        }
        match run {
            RunState::Running => {}
            RunState::Finished => break,
            RunState::Failed(e) => {
                let _ = shared.renew(Duration::ZERO, true).await;
                return Err(RunError::Failed(e));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shared.changed.notified() => {}
        }
    }
    let done = shared.lock().done();
    info!("every job is done; aggregating");
    let report = retrying("aggregate the results", storage_trouble, || {
        aggregate(&shared.plan, &shared.jobs, &done, &shared.out)
    })
    .await?;
    // The results are written: let the run go (a later coordinator claims it at once).
    retrying("release the run", journal_trouble, || {
        shared.renew(Duration::ZERO, true)
    })
    .await?;
    info!(cv = report.cv, "run finished");
    Ok(report)
}
