//! The in-process cluster: a coordinator on a loopback port the OS picks, and workers as
//! tasks talking to it over real gRPC. `hbac local` runs a whole run on it; the integration
//! tests (tests/cluster.rs) build their clusters from the same pieces. This is the one place
//! that wires the coordinator and the worker together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbac_common::proto::Backend;
use hbac_common::records::RunReport;
use hbac_coordinator::error::RunError;
use hbac_coordinator::server::{self, Config, Handle};
use hbac_worker::client::{self, Ended, WorkerError, WorkerOptions};
use hbac_worker::executor::Executor;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long an in-process worker waits for an unreachable coordinator before it gives up.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A coordinator on `127.0.0.1:0` and the in-process workers started on it.
pub struct Cluster {
    pub coordinator: Handle,
    token: String,
    roots: Vec<String>,
    workers: Vec<JoinHandle<Result<Ended, WorkerError>>>,
}

/// A worker task: how it ended, or why it could not go on.
pub type WorkerTask = JoinHandle<Result<Ended, WorkerError>>;

impl Cluster {
    /// Starts the coordinator of `config` ([`start_coordinator`]).
    pub async fn start(config: Config) -> Result<Cluster, RunError> {
        let token = config.token.clone();
        let plan = &config.plan;
        let roots = vec![plan.data.clone(), plan.cache.clone(), plan.out.clone()];
        let coordinator = start_coordinator(config).await?;
        Ok(Cluster {
            coordinator,
            token,
            roots,
            workers: Vec::new(),
        })
    }

    /// The coordinator's gRPC URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.coordinator.addr)
    }

    /// The options of in-process worker `id`: this coordinator, its token, one slot, and the
    /// plan's data, cache and output as the only storage roots an order may name.
    pub fn worker_options(&self, id: &str, backend: Backend) -> WorkerOptions {
        WorkerOptions {
            coordinator: self.url(),
            token: self.token.clone(),
            worker_id: id.to_string(),
            slots: 1,
            backend,
            tls: None,
            patience: PATIENCE,
            storage_roots: self.roots.clone(),
        }
    }

    /// Starts a worker as a task of this cluster; it leaves when the run ends or `shutdown`
    /// turns true, and [`Cluster::finish`] waits for it.
    pub fn add_worker(
        &mut self,
        opts: WorkerOptions,
        executor: Arc<dyn Executor>,
        shutdown: watch::Receiver<bool>,
    ) {
        self.workers.push(spawn_worker(opts, executor, shutdown));
    }

    /// Waits for the run to end (the report, or why it failed), then for every worker of
    /// this cluster to leave.
    pub async fn finish(self) -> Result<RunReport, RunError> {
        let report = self.coordinator.wait().await;
        for w in self.workers {
            match w.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "an in-process worker stopped"),
                Err(e) => tracing::warn!(error = %e, "an in-process worker's task failed"),
            }
        }
        report
    }
}

/// Starts the coordinator of `config` on `127.0.0.1`, on a port the OS picks (`Handle::addr`).
pub async fn start_coordinator(config: Config) -> Result<Handle, RunError> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| RunError::Transport(format!("cannot listen on loopback: {e}")))?;
    server::start(config, listener).await
}

/// Starts a worker as a task: it registers with `opts.coordinator` and trains with `executor`
/// until the run ends or `shutdown` turns true.
pub fn spawn_worker(
    opts: WorkerOptions,
    executor: Arc<dyn Executor>,
    shutdown: watch::Receiver<bool>,
) -> WorkerTask {
    tokio::spawn(client::run(opts, executor, shutdown))
}
