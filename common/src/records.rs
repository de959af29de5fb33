//! Run records: the files a job writes and other parts of hbac read back, with their typed
//! readers and writers in one place, so a renamed field is a compile error on both sides
//! instead of a silent default. One job attempt's folder (`<out>/jobs/<job>/<lease>/`) holds:
//!
//! ```text
//! config.json        the job: data URL, fold, split, sample selection, labels, training config
//! metrics.jsonl      one EpochReport per line (rewritten atomically after each epoch)
//! state/epoch-NNNN/  the training state after NNNN epochs (TrainState + weights, optimizer
//!                    moments, best weights), written before that epoch is reported
//! checkpoint.mpk     weights of the best epoch (burn named MessagePack, full precision)
//! oof.csv            out-of-fold predictions: eeg_id, the six *_vote columns, fold, label_id
//! test.csv           test-set predictions in the Kaggle submission format (if test.csv exists)
//! loss.svg           train/valid KL per epoch
//! summary.json       JobSummary: best epoch, validation KL, OOF Kaggle KL, prior baseline
//! ```
//!
//! and the run's folder `report.json` ([`RunReport`]), its scores and ensemble weights.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metric::ClassBreakdown;

use crate::error::{Error, Location, Result};

/// `config.json`.
pub const CONFIG: &str = "config.json";
/// `metrics.jsonl`.
pub const METRICS: &str = "metrics.jsonl";
/// `checkpoint.mpk`.
pub const CHECKPOINT: &str = "checkpoint.mpk";
/// `oof.csv`.
pub const OOF: &str = "oof.csv";
/// `test.csv`.
pub const TEST: &str = "test.csv";
/// `loss.svg`.
pub const LOSS: &str = "loss.svg";
/// `summary.json`, written last: its presence means the attempt's files are complete.
pub const SUMMARY: &str = "summary.json";

/// Epochs a training configuration runs in all — its `epochs`, plus `stage2.epochs` when it
/// has a second stage — read from the JSON of the worker's `TrainConfig` (which the
/// coordinator forwards without linking the trainer).
pub fn planned_epochs(train: &serde_json::Value) -> Option<usize> {
    let first = train.get("epochs")?.as_u64()?;
    let second = match train.get("stage2") {
        None | Some(serde_json::Value::Null) => 0,
        Some(s) => s.get("epochs")?.as_u64()?,
    };
    usize::try_from(first.checked_add(second)?).ok()
}

/// Stage 1's epochs when a training configuration (JSON, as [`planned_epochs`]) has a second
/// stage: where the figures draw the stage boundary.
pub fn stage1_epochs(train: &serde_json::Value) -> Option<usize> {
    match train.get("stage2") {
        None | Some(serde_json::Value::Null) => None,
        Some(_) => train.get("epochs")?.as_u64().map(|e| e as usize),
    }
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub lr: f64,
    /// Mean Keras KL over the epoch's training batches (augmented).
    pub train_kl: f64,
    /// Keras KL on the validation fold (`None` without one).
    pub valid_kl: Option<f64>,
    pub seconds: f64,
    pub samples_per_second: f64,
    /// Whether this epoch is the best so far (lowest validation KL, or the last without one).
    pub best: bool,
}

/// `summary.json`: a finished job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub best_epoch: usize,
    /// Keras KL of the best epoch on the validation fold.
    pub valid_kl: f64,
    /// Kaggle KL of the out-of-fold predictions (rows keyed by label_id).
    pub oof_kaggle_kl: f64,
    /// Kaggle KL of predicting the training folds' mean target everywhere.
    pub prior_kaggle_kl: f64,
    pub history: Vec<EpochReport>,
}

impl JobSummary {
    /// Encodes `summary.json`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("serialisable")
    }

    /// Decodes `summary.json` from `url`.
    pub fn parse(bytes: &[u8], url: &str) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(Location::file(url), format!("not a job summary: {e}")))
    }
}

/// Encodes `metrics.jsonl`.
pub fn metrics_jsonl(history: &[EpochReport]) -> Vec<u8> {
    history
        .iter()
        .map(|r| serde_json::to_string(r).expect("serialisable") + "\n")
        .collect::<String>()
        .into_bytes()
}

/// Decodes `metrics.jsonl` from `url`; a bad line is an error naming it.
pub fn parse_metrics_jsonl(bytes: &[u8], url: &str) -> Result<Vec<EpochReport>> {
    String::from_utf8_lossy(bytes)
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::invalid(
                    Location::file(url).line(i as u64 + 1),
                    format!("epoch line: {e}"),
                )
            })
        })
        .collect()
}

/// The folder, inside an attempt's folder, of the training state after `epochs` epochs.
pub fn state_dir(epochs: usize) -> String {
    format!("state/epoch-{epochs:04}")
}

/// A saved training state (`state/epoch-NNNN/state.json`), beside `model.mpk` (the weights and
/// BatchNorm statistics), `optimizer.mpk` (the optimizer's moments and step counts) and
/// `best.mpk` (the best epoch's weights). `state.json` is written last: a folder without it is
/// incomplete and never resumed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Epochs completed; training resumes at this epoch index.
    pub epochs: usize,
    /// Every completed epoch's report.
    pub history: Vec<EpochReport>,
    /// The best epoch so far (its weights are `best.mpk`).
    pub best_epoch: usize,
    /// Its validation KL (`None` without a validation fold).
    pub best_valid_kl: Option<f64>,
    /// The training seed the state belongs to (a resume with another seed is refused).
    pub seed: u64,
}

impl TrainState {
    pub const FILE: &'static str = "state.json";
    pub const MODEL: &'static str = "model.mpk";
    pub const OPTIMIZER: &'static str = "optimizer.mpk";
    pub const BEST: &'static str = "best.mpk";

    /// Encodes `state.json`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("serialisable")
    }

    /// Decodes `state.json` from `url`.
    pub fn parse(bytes: &[u8], url: &str) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(Location::file(url), format!("not a training state: {e}")))
    }
}

/// `report.json`: a finished run's scores and ensemble weights, written by the coordinator's
/// aggregation, read by `hbac predict --run`, `hbac export --run` and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Kaggle KL of every out-of-fold prediction of each architecture.
    pub cv_by_arch: BTreeMap<String, f64>,
    /// Per architecture, the folds' out-of-fold KL in fold order.
    pub folds_by_arch: BTreeMap<String, Vec<f64>>,
    /// Ensemble weights (same order as `archs`) and the blended out-of-fold KL.
    pub archs: Vec<String>,
    pub weights: Vec<f64>,
    pub cv: f64,
    /// Rows scored out of fold.
    pub oof_rows: usize,
    /// `submission.csv` rows (0 without a test set).
    pub test_rows: usize,
    pub jobs: Vec<JobLine>,
    /// Per class, out of fold: each architecture's and the ensemble's (key `ensemble`) share
    /// of the KL per class and confusion matrix against `expert_consensus` (absent from
    /// reports of older hbac versions).
    #[serde(default)]
    pub per_class: BTreeMap<String, ClassBreakdown>,
    /// The out-of-fold Kaggle KL scored per `eeg_id` instead of per row: each recording's rows'
    /// predictions averaged, against their votes summed (per architecture, and `ensemble`).
    /// Top HMS solutions validated this way; absent from reports of older hbac versions.
    #[serde(default)]
    pub cv_per_eeg: BTreeMap<String, f64>,
}

/// The key of the blended predictions in [`RunReport::per_class`].
pub const ENSEMBLE: &str = "ensemble";

/// One job's line in [`RunReport::jobs`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobLine {
    pub job: String,
    pub arch: String,
    pub fold: usize,
    pub worker: String,
    pub attempt: u32,
    pub out: String,
    pub oof_kl: f64,
    /// Kaggle KL of predicting the training folds' mean target on this fold: the baseline a
    /// model must beat (absent from reports of older hbac versions).
    #[serde(default)]
    pub prior_kl: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_epochs_count_both_stages() {
        use serde_json::json;
        assert_eq!(planned_epochs(&json!({"epochs": 13})), Some(13));
        assert_eq!(
            planned_epochs(&json!({"epochs": 13, "stage2": null})),
            Some(13)
        );
        let two = json!({"epochs": 13, "stage2": {"min_votes": 10.0, "epochs": 4, "lr": null}});
        assert_eq!(planned_epochs(&two), Some(17));
        assert_eq!(planned_epochs(&json!({"epochs": 13, "stage2": {}})), None);
        assert_eq!(planned_epochs(&json!({})), None);
    }

    fn report(epoch: usize) -> EpochReport {
        EpochReport {
            epoch,
            lr: 1e-3,
            train_kl: 0.5,
            valid_kl: (epoch > 0).then_some(0.25),
            seconds: 1.5,
            samples_per_second: 10.0,
            best: true,
        }
    }

    #[test]
    fn metrics_round_trip_and_bad_lines_are_named() {
        let history = vec![report(0), report(1)];
        let bytes = metrics_jsonl(&history);
        assert_eq!(parse_metrics_jsonl(&bytes, "m").unwrap(), history);
        let mut bad = bytes.clone();
        bad.extend_from_slice(b"{\"epoch\": 2}\n");
        let e = parse_metrics_jsonl(&bad, "s3://b/metrics.jsonl").unwrap_err();
        assert!(e.to_string().contains("s3://b/metrics.jsonl"), "{e}");
        assert!(e.to_string().contains('3'), "{e}");
    }

    #[test]
    fn summaries_and_states_round_trip() {
        let s = JobSummary {
            best_epoch: 1,
            valid_kl: 0.25,
            oof_kaggle_kl: 0.5,
            prior_kaggle_kl: 1.3,
            history: vec![report(0), report(1)],
        };
        assert_eq!(JobSummary::parse(&s.to_json(), "x").unwrap(), s);
        assert!(JobSummary::parse(b"{}", "u/summary.json").is_err());
        let t = TrainState {
            epochs: 2,
            history: s.history.clone(),
            best_epoch: 1,
            best_valid_kl: Some(0.25),
            seed: 42,
        };
        assert_eq!(TrainState::parse(&t.to_json(), "x").unwrap(), t);
        assert_eq!(state_dir(7), "state/epoch-0007");
    }
}
