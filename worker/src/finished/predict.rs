//! A finished run's whole ensemble on a data set's `test.csv` (the competition's hidden test,
//! tomorrow's recordings): every job's best checkpoint; per architecture the mean of its
//! folds; architectures blended with the run's weights from `report.json` — the same
//! [`TestEnsemble`] the run's aggregation wrote `submission.csv` with.
//!
//! The test set is predicted in chunks of [`CHUNK`] rows, each loaded once for all models;
//! the rows are returned only at the end, so nothing partial is ever written.

use std::collections::HashMap;
use std::sync::Arc;

use hbac_common::ensemble::TestEnsemble;
use hbac_common::hms::tables::{self, ProbRow, TestRow};
use hbac_common::prepare::{self, Cache, Split};
use hbac_common::storage::Store;

use super::{FinishedError, FinishedRun};
use crate::job;
use crate::ops::FusedOps;

/// Test rows loaded and predicted at once (each ≈ 0.5 MB of windows in memory).
pub const CHUNK: usize = 512;

/// How to predict.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch_size: usize,
    /// Threads building batches.
    pub threads: usize,
    /// Files read at once.
    pub concurrency: usize,
}

/// The data set's `test.csv` rows, with every input the run's models take converted into
/// `cache` (missing files are computed once and kept).
pub async fn test_set(
    run: &FinishedRun,
    data: &Store,
    cache: &Store,
    concurrency: usize,
) -> Result<(Vec<TestRow>, Cache), FinishedError> {
    let test_url = data.url("test.csv");
    let rows = tables::parse_test_csv(&data.get("test.csv").await?, &test_url)?;
    if rows.is_empty() {
        return Err(FinishedError::Invalid(format!("{test_url} has no rows")));
    }
    prepare::prepare_splits(data, cache, &[Split::Test], concurrency).await?;
    if run.inputs.iter().any(|i| i.uses_eegs()) {
        hbac_common::eeg_cache::prepare_splits(data, cache, &[Split::Test], concurrency).await?;
    }
    Ok((rows, Cache::new(cache.clone())))
}

/// The ensemble's rows for `rows` (the test set, its inputs already in `cache`), in `eeg_id`
/// order, on `device`.
pub async fn ensemble<B: FusedOps>(
    run: &FinishedRun,
    rows: &[TestRow],
    cache: &Cache,
    s: Settings,
    device: B::Device,
) -> Result<Vec<ProbRow>, FinishedError> {
    let mut models = Vec::with_capacity(run.jobs.len());
    for (arch, id, dir) in &run.jobs {
        let (model, train) = job::load_checkpoint::<B>(dir, &device)
            .await
            .map_err(|source| FinishedError::Train {
                context: format!("loading job {id}'s checkpoint from {}", dir.root()),
                source,
            })?;
        models.push((*arch, train.input, model));
    }
    let failed = |source| FinishedError::Train {
        context: format!("predicting with the run at {}", run.url),
        source,
    };
    let bar = hbac_common::progress::bar((rows.len() * models.len()) as u64, "predict");
    let mut ensemble = TestEnsemble::new(&run.report.archs);
    for chunk in rows.chunks(CHUNK) {
        // Each chunk's images are built once per input kind the models take.
        let mut sets = HashMap::new();
        for (arch, input, model) in &models {
            let set = match sets.get(input) {
                Some(set) => Arc::clone(set),
                None => {
                    let samples = job::test_samples(chunk);
                    let set = job::load_test_set(cache, *input, samples, s.concurrency)
                        .await
                        .map_err(failed)?;
                    sets.insert(*input, set.clone());
                    set
                }
            };
            let preds = job::predict_set(model, set, s.batch_size, s.threads, device.clone())
                .await
                .map_err(failed)?;
            ensemble.add(*arch, &preds);
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    Ok(ensemble.blend(&run.report.weights, |arch| {
        format!("{} (the {arch} jobs' predictions)", run.url)
    })?)
}
