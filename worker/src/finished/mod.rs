//! A finished run, used after the fact: its whole ensemble predicting a test set it never saw
//! ([`predict`], `hbac predict --run`) and its models leaving hbac as ONNX ([`export`],
//! `hbac export`). [`FinishedRun::open`] checks everything first: each job's checkpoint and
//! configuration present, and where to find them when the run was moved or copied.

pub mod export;
pub mod predict;

use hbac_common::preprocess::Input;
use hbac_common::records::{self, RunReport};
use hbac_common::storage::Store;

use crate::TrainError;
use crate::model::export::ExportError;

/// Why a finished run cannot be used; the message names the file or job.
#[derive(Debug, thiserror::Error)]
pub enum FinishedError {
    #[error(transparent)]
    Data(#[from] hbac_common::Error),
    #[error("{context}: {source}")]
    Train {
        context: String,
        #[source]
        source: TrainError,
    },
    #[error("{context}: {source}")]
    Export {
        context: String,
        #[source]
        source: ExportError,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A finished run, checked: its report and each job's output folder with its architecture.
pub struct FinishedRun {
    pub url: String,
    pub report: RunReport,
    /// (index into `report.archs`, job id, the job's output folder).
    pub jobs: Vec<(usize, String, Store)>,
    /// Each job's input, in the order of `jobs` (from its `config.json`).
    pub inputs: Vec<Input>,
}

impl FinishedRun {
    /// The run in `out` whose `report.json` is `report` (the caller has checked that the run
    /// finished), refusing a report that lists no complete ensemble or a job without its files.
    pub async fn open(out: &Store, report: RunReport) -> Result<FinishedRun, FinishedError> {
        if report.archs.len() != report.weights.len() || report.jobs.is_empty() {
            return Err(FinishedError::Invalid(format!(
                "{}: {} architectures, {} weights, {} jobs: not a complete hbac report",
                out.url("report.json"),
                report.archs.len(),
                report.weights.len(),
                report.jobs.len()
            )));
        }
        let mut jobs = Vec::new();
        let mut inputs = Vec::new();
        for line in &report.jobs {
            let Some(arch) = report.archs.iter().position(|a| *a == line.arch) else {
                return Err(FinishedError::Invalid(format!(
                    "{}: job {} is of architecture {:?}, which the report's ensemble does not list",
                    out.url("report.json"),
                    line.job,
                    line.arch
                )));
            };
            let dir = job_dir(out, &line.job, &line.out).await?;
            for file in [records::CHECKPOINT, records::CONFIG] {
                if !dir.exists(file).await? {
                    return Err(FinishedError::Invalid(format!(
                        "{} is missing: job {} of the run at {} has no {file}",
                        dir.url(file),
                        line.job,
                        out.root()
                    )));
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
}

/// The input a job's model takes, from its `config.json` (Kaggle's spectrograms when the
/// config predates the choice).
pub async fn job_input(dir: &Store) -> Result<Input, FinishedError> {
    let url = dir.url(records::CONFIG);
    let record: serde_json::Value = serde_json::from_slice(&dir.get(records::CONFIG).await?)
        .map_err(|e| FinishedError::Invalid(format!("{url}: not JSON: {e}")))?;
    match record.get("train").and_then(|t| t.get("input")) {
        None => Ok(Input::Kaggle),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
            FinishedError::Invalid(format!("{url}: train.input {v} is not kaggle, eeg or both"))
        }),
    }
}

/// A job's output folder: under the run's root as it is now when the run was moved or copied
/// (a bucket downloaded, a Kaggle data set: `jobs/<job>/<attempt>/`), else where the run wrote
/// it.
async fn job_dir(run: &Store, job: &str, written: &str) -> Result<Store, FinishedError> {
    let marker = format!("jobs/{job}/");
    if let Some(at) = written.find(&marker) {
        let moved = Store::open(&run.url(written[at..].trim_end_matches('/')))?;
        if moved.exists(records::CHECKPOINT).await? {
            return Ok(moved);
        }
    }
    Ok(Store::open(written)?)
}
