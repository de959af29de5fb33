//! The worker service loop: register with the coordinator, then on every slot (one per GPU)
//! lease a job, run it with an [`Executor`] while heartbeating the lease (with the job's epoch
//! and batch, so a hung trainer is noticed) and sending each epoch's metrics, and report the
//! outcome. A cancel order from a heartbeat, or shutdown (SIGTERM / Ctrl-C), stops the job at
//! the next batch and hands the lease back (a disruption, not a failure). Every call has a
//! deadline and the connection HTTP/2 keep-alives; calls that fail in transit are retried, so
//! a coordinator that restarts (or is replaced) mid-job costs nothing: the new one adopts the
//! lease, and the epoch metrics and the report reach it. An unreachable coordinator is retried
//! for `patience`, then reported.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hbac_common::proto::wire::coordinator_client::CoordinatorClient;
use hbac_common::proto::wire::{self, lease_response, report_request};
use hbac_common::proto::{AUTH_HEADER, Backend, JobOrder, Registration};
use tokio::sync::{RwLock, mpsc, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tracing::{info, warn};

use crate::executor::{Events, Executor, Failure};
use crate::train::trainer::EpochReport;

/// Deadline of every unary call: a coordinator that accepts the connection but never answers
/// fails the call instead of hanging it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// `req` with the call deadline.
fn timed<T>(req: T) -> Request<T> {
    let mut r = Request::new(req);
    r.set_timeout(CALL_TIMEOUT);
    r
}

/// Worker settings (`Debug` shows no token).
#[derive(Clone)]
pub struct WorkerOptions {
    /// `http://host:port` (or `https://` with TLS).
    pub coordinator: String,
    pub token: String,
    pub worker_id: String,
    /// Jobs run at once (one per GPU).
    pub slots: usize,
    pub backend: Backend,
    pub tls: Option<ClientTlsConfig>,
    /// Give up when the coordinator has been unreachable this long.
    pub patience: Duration,
    /// The only storage roots a job order may name (data, cache, output, resume folder);
    /// empty: any. Orders come over the wire: this keeps a coordinator (or whoever holds the
    /// token) from pointing the worker at other buckets.
    pub storage_roots: Vec<String>,
}

/// Whether `url` lies below one of `roots` (on a path boundary); any URL when `roots` is empty.
pub fn under_roots(url: &str, roots: &[String]) -> bool {
    roots.is_empty()
        || roots.iter().any(|r| {
            let r = r.trim_end_matches('/');
            url == r
                || url
                    .strip_prefix(r)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// The first URL of `order` outside `roots`, if any: its data, cache, output and resume
/// folders and the pretrained weights it would read.
fn outside_roots<'a>(order: &'a JobOrder, roots: &[String]) -> Option<&'a str> {
    [&order.data, &order.cache, &order.out]
        .into_iter()
        .map(String::as_str)
        .chain(order.resume.as_deref())
        .chain(order.train["pretrained"].as_str())
        .find(|u| !under_roots(u, roots))
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("coordinator", &self.coordinator)
            .field("token", &"<redacted>")
            .field("worker_id", &self.worker_id)
            .field("slots", &self.slots)
            .field("backend", &self.backend)
            .field("tls", &self.tls.is_some())
            .field("patience", &self.patience)
            .field("storage_roots", &self.storage_roots)
            .finish()
    }
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("coordinator {url}: {message}")]
    Refused { url: String, message: String },
    #[error("coordinator {url} unreachable for {secs} s: {message}")]
    Unreachable {
        url: String,
        secs: u64,
        message: String,
    },
    #[error("coordinator {url}: bad address: {message}")]
    BadUrl { url: String, message: String },
    #[error("a worker slot crashed: {0}")]
    SlotCrashed(String),
}

pub type Client = CoordinatorClient<InterceptedService<Channel, AuthHeader>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct AuthHeader(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for AuthHeader {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(AUTH_HEADER, self.0.clone());
        Ok(req)
    }
}

/// A token-carrying client for `url` (connects lazily, reconnects by itself).
pub fn connect(
    url: &str,
    token: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<Client, WorkerError> {
    let bad = |message: String| WorkerError::BadUrl {
        url: url.to_string(),
        message,
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| bad(format!("TLS settings: {}", chain(&e))))?;
    }
    let header = format!("Bearer {token}")
        .parse()
        .map_err(|_| bad("the token has characters not allowed in a header".into()))?;
    Ok(CoordinatorClient::with_interceptor(
        endpoint.connect_lazy(),
        AuthHeader(header),
    ))
}

/// An error with its sources ("transport error: …: …"): tonic's own messages are terse.
fn chain(e: &dyn std::error::Error) -> String {
    sources(e.to_string(), e.source())
}

/// A refused or failed call: its message, then the causes behind it.
pub fn describe(s: &Status) -> String {
    sources(s.message().to_string(), std::error::Error::source(s))
}

fn sources(mut text: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(&format!(": {part}"));
        }
        source = e.source();
    }
    text
}

/// Transient transport trouble worth retrying.
fn transient(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

struct Ctx {
    opts: WorkerOptions,
    client: Client,
    session: RwLock<String>,
    /// Heartbeat period the coordinator asked for.
    heartbeat: std::sync::Mutex<Duration>,
    executor: Arc<dyn Executor>,
    shutdown: watch::Receiver<bool>,
}

impl Ctx {
    fn refused(&self, s: &Status) -> WorkerError {
        WorkerError::Refused {
            url: self.opts.coordinator.clone(),
            message: s.message().to_string(),
        }
    }

    /// Calls `f` until it succeeds, retrying transport errors for `patience`.
    async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, WorkerError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            match f(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(s) if transient(&s) && start.elapsed() < self.opts.patience => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(s) if transient(&s) => {
                    return Err(WorkerError::Unreachable {
                        url: self.opts.coordinator.clone(),
                        secs: self.opts.patience.as_secs(),
                        message: s.message().to_string(),
                    });
                }
                Err(s) => return Err(self.refused(&s)),
            }
        }
    }

    async fn register(&self) -> Result<(), WorkerError> {
        let reg = Registration {
            worker_id: self.opts.worker_id.clone(),
            gpus: self.opts.slots as u32,
            backend: self.opts.backend,
        };
        let resp = self
            .retry(|mut c| {
                let req = wire::RegisterRequest::from(&reg);
                async move { c.register(timed(req)).await }
            })
            .await?
            .into_inner();
        *self.session.write().await = resp.session;
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) =
            Duration::from_millis(resp.heartbeat_ms.max(10));
        info!(
            worker = self.opts.worker_id,
            coordinator = self.opts.coordinator,
            "registered"
        );
        Ok(())
    }
}

/// Why a worker stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ended {
    /// The coordinator said the run is over (finished or failed).
    RunOver,
    /// The coordinator drained this worker; its jobs ended first.
    Drained,
    /// Shutdown was requested; running jobs were handed back.
    Shutdown,
}

/// Runs the worker until the run is over, it is drained, or shutdown is requested (leases
/// handed back); `Err` when the coordinator refuses or stays unreachable.
pub async fn run(
    opts: WorkerOptions,
    executor: Arc<dyn Executor>,
    shutdown: watch::Receiver<bool>,
) -> Result<Ended, WorkerError> {
    let client = connect(&opts.coordinator, &opts.token, opts.tls.clone())?;
    let ctx = Arc::new(Ctx {
        opts,
        client,
        session: RwLock::new(String::new()),
        heartbeat: std::sync::Mutex::new(Duration::from_secs(1)),
        executor,
        shutdown,
    });
    ctx.register().await?;
    // A JoinSet aborts its tasks when dropped: a worker torn down mid-job stops everything.
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..ctx.opts.slots.max(1) {
        slots.spawn(slot_loop(ctx.clone(), slot));
    }
    // Slots end on their own; the worker's ending is the most telling of theirs.
    let mut result = Ok(Ended::RunOver);
    while let Some(s) = slots.join_next().await {
        match (s, &result) {
            (Ok(Err(e)), Ok(_)) => result = Err(e),
            (Err(e), Ok(_)) => result = Err(WorkerError::SlotCrashed(e.to_string())),
            (Ok(Ok(ended)), Ok(so_far)) if ended > *so_far => result = Ok(ended),
            _ => {}
        }
    }
    if *ctx.shutdown.borrow() && result.is_ok() {
        result = Ok(Ended::Shutdown);
    }
    result
}

/// Aborts a helper task when the job that owns it ends or is torn down.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets the cancel flag when dropped: a slot torn down mid-job stops its training thread.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn slot_loop(ctx: Arc<Ctx>, slot: usize) -> Result<Ended, WorkerError> {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return Ok(Ended::Shutdown);
        }
        let session = ctx.session.read().await.clone();
        let leased = ctx
            .retry(|mut c| {
                let req = wire::LeaseRequest {
                    session: session.clone(),
                    slot: slot as u32,
                };
                async move {
                    match c.lease(timed(req)).await {
                        Err(s) if s.code() == Code::NotFound => Ok(None),
                        other => other.map(|r| Some(r.into_inner())),
                    }
                }
            })
            .await?;
        let Some(resp) = leased else {
            // Unknown session: the coordinator restarted.
            ctx.register().await?;
            continue;
        };
        match resp.outcome {
            Some(lease_response::Outcome::Lease(l)) => run_lease(&ctx, slot, l, &session).await?,
            Some(lease_response::Outcome::WaitMs(ms)) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms.max(10))) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Some(lease_response::Outcome::Stop(why)) => {
                info!(slot, reason = why, "coordinator says stop");
                return Ok(Ended::RunOver);
            }
            Some(lease_response::Outcome::Drain(why)) => {
                info!(slot, reason = why, "drained: this slot takes no new job");
                return Ok(Ended::Drained);
            }
            None => return Err(ctx.refused(&Status::internal("empty lease response"))),
        }
    }
}

async fn run_lease(
    ctx: &Arc<Ctx>,
    slot: usize,
    lease: wire::Lease,
    session: &str,
) -> Result<(), WorkerError> {
    info!(
        slot,
        job = lease.job_id,
        lease = lease.lease_id,
        attempt = lease.attempt,
        "job leased"
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());
    let position = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel::<EpochReport>();

    let order = serde_json::from_str::<JobOrder>(&lease.order_json);
    let outside = order
        .as_ref()
        .ok()
        .and_then(|o| outside_roots(o, &ctx.opts.storage_roots));
    let outcome = match order {
        Err(e) => Err(Failure {
            message: format!("unreadable job order: {e}"),
            retryable: false,
        }),
        // Another worker may be allowed there: retryable, on the failure budget.
        Ok(_) if outside.is_some() => Err(Failure {
            message: format!(
                "worker {}: the order names {} outside its storage roots (--storage-root)",
                ctx.opts.worker_id,
                outside.unwrap_or_default()
            ),
            retryable: true,
        }),
        Ok(order) => {
            let epochs = hbac_common::records::planned_epochs(&order.train).unwrap_or(0) as u32;
            // Metrics: one short call per epoch, retried through coordinator restarts. The
            // job saves its training state before it reports an epoch.
            let (c, s, id) = (ctx.clone(), session.to_string(), lease.lease_id.clone());
            let mut forward = AbortOnDrop(tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    let m = hbac_common::proto::epoch_metrics(&r, &s, &id, epochs, true);
                    let sent = c
                        .retry(|mut client| {
                            let m = m.clone();
                            async move {
                                let stream = tokio_stream::once(m);
                                client.stream_metrics(timed(stream)).await
                            }
                        })
                        .await;
                    if let Err(e) = sent {
                        warn!(error = %e, "epoch metrics not delivered");
                    }
                }
            }));
            let beat = AbortOnDrop(tokio::spawn(heartbeat(
                ctx.clone(),
                session.to_string(),
                lease.lease_id.clone(),
                cancel.clone(),
                position.clone(),
            )));
            let outcome = ctx
                .executor
                .execute(
                    order,
                    slot,
                    Events {
                        epochs: tx,
                        cancel: cancel.clone(),
                        position,
                    },
                )
                .await;
            drop(beat);
            let _ = (&mut forward.0).await;
            outcome
        }
    };
    let stopping = *ctx.shutdown.borrow();
    let cancelled = cancel.load(Ordering::SeqCst);
    let result = match outcome {
        // Where the files are is the coordinator's to know; nothing is sent but the summary.
        Ok(summary_json) => report_request::Result::Success(wire::Success {
            out_url: String::new(),
            summary_json,
        }),
        Err(f) => {
            warn!(
                job = lease.job_id,
                retryable = f.retryable,
                error = f.message,
                "job failed"
            );
            // Handed back, not failed: this worker is leaving or was told to stop.
            let lost = stopping || (cancelled && f.retryable);
            report_request::Result::Failure(wire::Failure {
                message: if stopping {
                    format!("worker {} is shutting down", ctx.opts.worker_id)
                } else {
                    f.message
                },
                retryable: f.retryable || stopping,
                lost,
            })
        }
    };
    let req = wire::ReportRequest {
        session: session.to_string(),
        lease_id: lease.lease_id.clone(),
        result: Some(result),
    };
    // Acknowledged only once the coordinator's journal holds it: UNAVAILABLE is retried.
    let resp = ctx
        .retry(|mut c| {
            let req = req.clone();
            async move { c.report(timed(req)).await }
        })
        .await;
    match resp {
        Ok(r) if !r.get_ref().accepted => {
            warn!(
                lease = lease.lease_id,
                reason = r.get_ref().reason,
                "report not accepted"
            )
        }
        Ok(_) => info!(job = lease.job_id, "reported"),
        Err(WorkerError::Refused { message, .. }) => {
            warn!(lease = lease.lease_id, message, "report refused")
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Renews the lease with the job's position until aborted; a cancel order or shutdown sets
/// `cancel`. Transport errors are only logged: a restarting coordinator adopts the lease.
async fn heartbeat(
    ctx: Arc<Ctx>,
    session: String,
    lease_id: String,
    cancel: Arc<AtomicBool>,
    position: Arc<AtomicU64>,
) {
    let mut shutdown = ctx.shutdown.clone();
    let period = *ctx.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
    let mut next = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            cancel.store(true, Ordering::SeqCst);
        }
        if tokio::time::Instant::now() >= next {
            let p = position.load(Ordering::Relaxed);
            let req = wire::HeartbeatRequest {
                session: session.clone(),
                lease_id: lease_id.clone(),
                epoch: (p >> 32) as u32,
                batch: p as u32,
            };
            match ctx.client.clone().heartbeat(timed(req)).await {
                Ok(r) if r.get_ref().cancel => {
                    warn!(
                        lease = lease_id,
                        reason = r.get_ref().reason,
                        "cancel order"
                    );
                    cancel.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %describe(&e), "heartbeat failed"),
            }
            next = tokio::time::Instant::now() + period;
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            // A closed channel (its sender gone) is no news: wait out the period instead of
            // spinning on it.
            changed = shutdown.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(period).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_roots_are_matched_on_path_boundaries() {
        let roots = vec!["s3://b/data/".to_string(), "/runs/r1".to_string()];
        assert!(under_roots("s3://b/data/train.csv", &roots));
        assert!(under_roots("s3://b/data", &roots));
        assert!(under_roots("/runs/r1/jobs/x", &roots));
        assert!(!under_roots("s3://b/data-other/x", &roots));
        assert!(!under_roots("/runs/r10", &roots));
        assert!(!under_roots("s3://evil/data", &roots));
        assert!(under_roots("anything", &[]));
    }

    #[test]
    fn an_orders_pretrained_weights_must_lie_under_the_roots_too() {
        let mut order = JobOrder {
            job_id: "j".into(),
            arch: "mobilenetv3-large".into(),
            fold: 0,
            data: "s3://b/data".into(),
            cache: "s3://b/data/cache".into(),
            out: "/runs/r1/jobs/j".into(),
            kfold: hbac_common::folds::KFold {
                k: 5,
                shuffle: true,
                seed: Some(42),
            },
            selection: hbac_common::preprocess::SampleSelection::FirstPerSpectrogram,
            labels: hbac_common::preprocess::LabelMode::Votes,
            train: serde_json::json!({"pretrained": null}),
            io_concurrency: 4,
            resume: None,
        };
        let roots = vec!["s3://b/data/".to_string(), "/runs/r1".to_string()];
        assert_eq!(outside_roots(&order, &roots), None);
        order.train["pretrained"] = "s3://b/data/w.pth".into();
        assert_eq!(outside_roots(&order, &roots), None);
        order.train["pretrained"] = "s3://other/w.pth".into();
        assert_eq!(outside_roots(&order, &roots), Some("s3://other/w.pth"));
        order.resume = Some("/elsewhere".into());
        assert_eq!(outside_roots(&order, &roots), Some("/elsewhere"));
    }
}
