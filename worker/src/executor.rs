//! The production [`Executor`]: a leased [`JobOrder`] becomes a [`JobSpec`] and runs through
//! [`job::run`] on the slot's device, with epochs forwarded and cancellation honoured. Errors
//! are sorted into retryable (storage or transport trouble, cancellation) and not (bad input,
//! bad configuration, divergence: another attempt would fail the same way).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::ops::TrainBackend;
use hbac_common::Error;
use hbac_common::proto::JobOrder;
use hbac_common::storage::Store;

use crate::TrainError;
use crate::client::{Events, Executor, Failure, Outcome};
use crate::job::{self, JobSpec};
use crate::train::trainer::{EpochReport, TrainConfig, TrainHooks};

/// Trains on backend `B`; `device(slot)` gives the device of accelerator `slot`.
pub struct TrainExecutor<B: TrainBackend> {
    pub device: Arc<dyn Fn(usize) -> B::Device + Send + Sync>,
}

struct Forward(Events);

impl TrainHooks for Forward {
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
                job::run::<B>(&spec, device, Forward(events)).await
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
