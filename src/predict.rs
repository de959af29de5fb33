//! `hbac predict --run` and `hbac export --run`: a finished run, found finished by the
//! coordinator's journal ([`open_run`]), handed to the worker's
//! [`hbac_worker::finished`] on the backend `--device` picks.

use anyhow::{Context, Result, bail};
use hbac_common::hms::tables::{ProbRow, TestRow};
use hbac_common::prepare::Cache;
use hbac_common::proto::wire::{JobPhase, RunPhase};
use hbac_common::storage::Store;
use hbac_worker::finished::predict::{self, Settings};
use hbac_worker::finished::{FinishedError, FinishedRun};
use hbac_worker::ops::TrainBackend;

use crate::backend::{DeviceKind, OnBackend, Task, run_on};

/// Opens the run at `url`, refusing one that is not finished or lacks a job's files.
pub async fn open_run(url: &str) -> Result<FinishedRun> {
    let out = Store::open(url)?;
    let view = hbac_coordinator::report::view(&out)
        .await
        .with_context(|| format!("reading the run at {url}"))?;
    let report = match (view.phase, view.results) {
        (RunPhase::Finished, Some(report)) => report,
        (phase, _) => {
            let done = view
                .jobs
                .iter()
                .filter(|j| j.phase == JobPhase::Done)
                .count();
            bail!(
                "the run at {} is not finished ({}, {done} of {} jobs done{}): `hbac predict --run` needs a finished run",
                out.root(),
                phase.label(),
                view.jobs.len(),
                view.error.map(|e| format!("; {e}")).unwrap_or_default()
            );
        }
    };
    Ok(FinishedRun::open(&out, report).await?)
}

/// The ensemble's submission rows for the data set's `test.csv`, in `eeg_id` order.
pub async fn predict_run(
    run: &FinishedRun,
    data: &Store,
    cache: &Store,
    settings: Settings,
    device: DeviceKind,
) -> Result<Vec<ProbRow>> {
    let (rows, cache) = predict::test_set(run, data, cache, settings.concurrency).await?;
    let task = Ensemble {
        run,
        rows: &rows,
        cache: &cache,
        settings,
    };
    Ok(run_on(device, task)?.await?)
}

/// The whole ensemble on one backend.
struct Ensemble<'a> {
    run: &'a FinishedRun,
    rows: &'a [TestRow],
    cache: &'a Cache,
    settings: Settings,
}

impl<'a> OnBackend for Ensemble<'a> {
    type Output = Task<'a, Result<Vec<ProbRow>, FinishedError>>;
    fn run<B: TrainBackend>(self, device: fn(usize) -> B::Device) -> Self::Output {
        Box::pin(predict::ensemble::<B::InnerBackend>(
            self.run,
            self.rows,
            self.cache,
            self.settings,
            device(0),
        ))
    }
}
