//! `hbac predict --run`: a finished run's whole ensemble on a data set's `test.csv` (the
//! competition's hidden test, tomorrow's recordings). Every job's best checkpoint; per
//! architecture the mean of its folds; architectures blended with the run's weights from
//! `report.json` — the same [`TestEnsemble`] the run's aggregation wrote `submission.csv` with.
//!
//! Everything is checked before the first prediction (the run finished, every checkpoint and
//! configuration present, the test set's files converted); the test set is predicted in chunks
//! of [`CHUNK`] rows, each loaded once for all models; the submission is written only at the
//! end.

use anyhow::{Context, Result, bail};
use hbac_common::hms::tables::{self, ProbRow};
use hbac_common::prepare::{self, Cache, Split};
use hbac_common::preprocess::Input;
use hbac_common::proto::wire::RunPhase;
use hbac_common::records;
use hbac_common::storage::Store;
use hbac_coordinator::aggregate::{Report, TestEnsemble};
use hbac_worker::job;
use hbac_worker::ops::FusedOps;

use crate::backend::DeviceKind;

/// Test rows loaded and predicted at once (each ≈ 0.5 MB of windows in memory).
pub const CHUNK: usize = 512;

/// A finished run, checked: its report and each job's output folder with its architecture.
pub struct FinishedRun {
    pub url: String,
    pub report: Report,
    /// (index into `report.archs`, job id, the job's output folder).
    pub jobs: Vec<(usize, String, Store)>,
    /// Each job's input, in the order of `jobs` (from its `config.json`).
    pub inputs: Vec<Input>,
}

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
                .filter(|j| j.phase == hbac_common::proto::wire::JobPhase::Done)
                .count();
            bail!(
                "the run at {} is not finished ({}, {done} of {} jobs done{}): `hbac predict --run` needs a finished run",
                out.root(),
                phase
                    .as_str_name()
                    .trim_start_matches("RUN_PHASE_")
                    .to_lowercase(),
                view.jobs.len(),
                view.error.map(|e| format!("; {e}")).unwrap_or_default()
            );
        }
    };
    if report.archs.len() != report.weights.len() || report.jobs.is_empty() {
        bail!(
            "{}: {} architectures, {} weights, {} jobs: not a complete hbac report",
            out.url("report.json"),
            report.archs.len(),
            report.weights.len(),
            report.jobs.len()
        );
    }
    let mut jobs = Vec::new();
    let mut inputs = Vec::new();
    for line in &report.jobs {
        let Some(arch) = report.archs.iter().position(|a| *a == line.arch) else {
            bail!(
                "{}: job {} is of architecture {:?}, which the report's ensemble does not list",
                out.url("report.json"),
                line.job,
                line.arch
            );
        };
        let dir = job_dir(&out, &line.job, &line.out).await?;
        for file in [records::CHECKPOINT, records::CONFIG] {
            if !dir.exists(file).await? {
                bail!(
                    "{} is missing: job {} of the run at {} has no {file}",
                    dir.url(file),
                    line.job,
                    out.root()
                );
            }
        }
        inputs.push(job_input(&dir).await?);
        jobs.push((arch, line.job.clone(), dir));
    }
    Ok(FinishedRun {
        url: out.root().to_string(),
        report,
        jobs,
        inputs,
    })
}

/// The input a job's model takes, from its `config.json` (Kaggle's spectrograms when the
/// config predates the choice).
pub async fn job_input(dir: &Store) -> Result<Input> {
    let url = dir.url(records::CONFIG);
    let record: serde_json::Value = serde_json::from_slice(&dir.get(records::CONFIG).await?)
        .with_context(|| format!("{url}: not JSON"))?;
    match record.get("train").and_then(|t| t.get("input")) {
        None => Ok(Input::Kaggle),
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("{url}: train.input {v} is not kaggle, eeg or both")),
    }
}

/// A job's output folder: under the run's root as it is now when the run was moved or copied
/// (a bucket downloaded, a Kaggle data set: `jobs/<job>/<attempt>/`), else where the run wrote it.
async fn job_dir(run: &Store, job: &str, written: &str) -> Result<Store> {
    let marker = format!("jobs/{job}/");
    if let Some(at) = written.find(&marker) {
        let moved = Store::open(&run.url(written[at..].trim_end_matches('/')))?;
        if moved.exists(records::CHECKPOINT).await? {
            return Ok(moved);
        }
    }
    Ok(Store::open(written)?)
}

/// How to predict.
pub struct Settings {
    pub batch_size: usize,
    pub threads: usize,
    pub concurrency: usize,
    pub device: DeviceKind,
}

/// The ensemble's submission rows for the data set's `test.csv`, in `eeg_id` order.
pub async fn predict_run(
    run: &FinishedRun,
    data: &Store,
    cache: &Store,
    s: &Settings,
) -> Result<Vec<ProbRow>> {
    let test_url = data.url("test.csv");
    let rows = tables::parse_test_csv(&data.get("test.csv").await?, &test_url)?;
    if rows.is_empty() {
        bail!("{test_url} has no rows");
    }
    prepare::prepare_splits(data, cache, &[Split::Test], s.concurrency).await?;
    if run.inputs.iter().any(|i| i.uses_eegs()) {
        hbac_common::eeg_cache::prepare_splits(data, cache, &[Split::Test], s.concurrency).await?;
    }
    let cache = Cache::new(cache.clone());
    crate::backend::check(s.device)?;
    match s.device {
        DeviceKind::Cpu => {
            ensemble::<crate::backend::Cpu>(run, &rows, &cache, s, Default::default()).await
        }
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            ensemble::<crate::backend::Cuda>(run, &rows, &cache, s, crate::backend::cuda_device(0))
                .await
        }
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => {
            ensemble::<crate::backend::Wgpu>(run, &rows, &cache, s, crate::backend::wgpu_device(0))
                .await
        }
        #[allow(unreachable_patterns)]
        other => unreachable!("backend::check refuses {other:?} in this build"),
    }
}

async fn ensemble<B: FusedOps>(
    run: &FinishedRun,
    rows: &[tables::TestRow],
    cache: &Cache,
    s: &Settings,
    device: B::Device,
) -> Result<Vec<ProbRow>> {
    let mut models = Vec::with_capacity(run.jobs.len());
    for (arch, id, dir) in &run.jobs {
        let (model, train) = job::load_checkpoint::<B>(dir, &device)
            .await
            .with_context(|| format!("loading job {id}'s checkpoint from {}", dir.root()))?;
        models.push((*arch, train.input, model));
    }
    let bar = hbac_common::progress::bar((rows.len() * models.len()) as u64, "predict");
    let mut ensemble = TestEnsemble::new(&run.report.archs);
    for chunk in rows.chunks(CHUNK) {
        // Each chunk's images are built once per input kind the models take.
        let mut sets = std::collections::HashMap::new();
        for (arch, input, model) in &models {
            let set = match sets.get(input) {
                Some(set) => std::sync::Arc::clone(set),
                None => {
                    let samples = job::test_samples(chunk);
                    let set = job::load_test_set(cache, *input, samples, s.concurrency).await?;
                    sets.insert(*input, set.clone());
                    set
                }
            };
            let preds =
                job::predict_set(model, set, s.batch_size, s.threads, device.clone()).await?;
            ensemble.add(*arch, &preds);
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    Ok(ensemble.blend(&run.report.weights, |arch| {
        format!("{} (the {arch} jobs' predictions)", run.url)
    })?)
}
