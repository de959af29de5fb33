//! What runs a leased job ([`Executor`], with the [`Events`] it reports through and its
//! [`Outcome`]), and the production one, [`TrainExecutor`]: a leased [`JobOrder`] becomes a
//! [`JobSpec`] and runs through [`job::run`] on the slot's device, with epochs forwarded and
//! cancellation honoured. Errors
//! are sorted into retryable (storage or transport trouble, cancellation) and not (bad input,
//! bad configuration, divergence: another attempt would fail the same way).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::ops::TrainBackend;
use hbac_common::Error;
use hbac_common::proto::JobOrder;
use hbac_common::storage::Store;
use tokio::sync::mpsc;

use crate::TrainError;
use crate::job::{self, JobSpec};
use crate::train::trainer::{EpochReport, TrainConfig, TrainHooks};

/// How one job ended badly.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    /// Whether another attempt (elsewhere) could succeed.
    pub retryable: bool,
}

/// What a running job tells the loop, and how the loop stops it.
#[derive(Clone)]
pub struct Events {
    pub epochs: mpsc::UnboundedSender<EpochReport>,
    pub cancel: Arc<AtomicBool>,
    /// Where the job is: `(epoch + 1) << 32 | batches done`, sent with every heartbeat.
    pub position: Arc<AtomicU64>,
}

impl Events {
    /// Records that `done` batches of `epoch` (0-based) have been trained.
    pub fn at(&self, epoch: usize, done: usize) {
        let p = ((epoch as u64 + 1) << 32) | (done as u64 & 0xffff_ffff);
        self.position.store(p, Ordering::Relaxed);
    }
}

/// Result of one job: its `summary.json`, or why it failed.
pub type Outcome = Result<String, Failure>;

/// Runs jobs: the trainer in production, a timed stand-in in scheduling benchmarks.
pub trait Executor: Send + Sync + 'static {
    /// Runs `order` on accelerator `slot`; the order's `out` URL receives its files.
    fn execute(
        &self,
        order: JobOrder,
        slot: usize,
        events: Events,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;
}

/// Trains on backend `B`; `device(slot)` gives the device of accelerator `slot`.
pub struct TrainExecutor<B: TrainBackend> {
    pub device: Arc<dyn Fn(usize) -> B::Device + Send + Sync>,
}

struct EventHooks(Events);

impl TrainHooks for EventHooks {
    fn batch(&mut self, epoch: usize, done: usize, _total: usize) {
        self.0.at(epoch, done);
    }
    fn epoch(&mut self, r: &EpochReport) {
        let _ = self.0.epochs.send(r.clone());
    }
    fn cancelled(&self) -> bool {
        self.0.cancel.load(Ordering::SeqCst)
    }
}

/// Whether another attempt could do better than this one.
pub fn retryable(e: &TrainError) -> bool {
    matches!(
        e,
        TrainError::Data(Error::Storage { .. } | Error::Io { .. })
            | TrainError::Cancelled
            | TrainError::LoaderStopped
            | TrainError::Panicked(_)
    )
}

async fn spec(order: JobOrder) -> Result<JobSpec, TrainError> {
    let train: TrainConfig = serde_json::from_value(order.train)
        .map_err(|e| TrainError::Config(format!("training configuration: {e}")))?;
    train.validate().map_err(TrainError::Config)?;
    Ok(JobSpec {
        data: Store::open(&order.data)?,
        cache: Store::create(&order.cache)?,
        out: Store::create(&order.out)?,
        fold: order.fold,
        kfold: order.kfold,
        selection: order.selection,
        labels: order.labels,
        train,
        io_concurrency: order.io_concurrency,
        // A folder that cannot be opened holds no state to resume from: start over.
        resume: order.resume.as_deref().and_then(|url| {
            Store::open(url)
                .inspect_err(
                    |e| tracing::warn!(error = %e, "cannot resume; training from the start"),
                )
                .ok()
        }),
    })
}

impl<B: TrainBackend> Executor for TrainExecutor<B> {
    fn execute(
        &self,
        order: JobOrder,
        slot: usize,
        events: Events,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        let device = (self.device)(slot);
        Box::pin(async move {
            let run = async {
                let spec = spec(order).await?;
                job::run::<B>(&spec, device, EventHooks(events)).await
            };
            match run.await {
                Ok(summary) => Ok(serde_json::to_string(&summary).expect("serialisable")),
                Err(e) => Err(Failure {
                    retryable: retryable(&e),
                    message: e.to_string(),
                }),
            }
        })
    }
}
