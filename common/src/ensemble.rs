//! Blending predictions: the weighted mean of architectures' probabilities ([`blend`]) and a
//! run's test ensemble ([`TestEnsemble`]), which the coordinator's aggregation and
//! `hbac predict --run` both build `submission.csv` with.

use std::collections::BTreeMap;

use crate::error::Location;
use crate::hms::N_CLASSES;
use crate::hms::tables::ProbRow;
use crate::{Error, Result};

/// The weighted mean of `parts`, renormalised to sum to 1.
pub fn blend(parts: &[&[f64; N_CLASSES]], weights: &[f64]) -> [f64; N_CLASSES] {
    let mut out = [0.0; N_CLASSES];
    for (p, w) in parts.iter().zip(weights) {
        for k in 0..N_CLASSES {
            out[k] += w * p[k];
        }
    }
    let sum: f64 = out.iter().sum();
    out.map(|v| v / sum)
}

/// Test predictions of a run's jobs gathered into its ensemble: per architecture the mean of
/// its folds' rows (by `eeg_id`), then the architectures blended with the run's weights. The
/// run's aggregation and `hbac predict --run` both build `submission.csv` with it.
#[derive(Debug, Clone)]
pub struct TestEnsemble {
    archs: Vec<String>,
    /// Per architecture: eeg_id → (sum of the folds' probabilities, folds).
    sums: Vec<BTreeMap<i64, ([f64; N_CLASSES], usize)>>,
}

impl TestEnsemble {
    /// An empty ensemble of `archs` (the order of the blend weights).
    pub fn new(archs: &[String]) -> Self {
        Self {
            archs: archs.to_vec(),
            sums: vec![BTreeMap::new(); archs.len()],
        }
    }

    /// Adds one job's test predictions to its architecture (`arch`, an index into `archs`).
    pub fn add(&mut self, arch: usize, rows: &[ProbRow]) {
        for row in rows {
            let e = self.sums[arch]
                .entry(row.eeg_id)
                .or_insert(([0.0; N_CLASSES], 0));
            for k in 0..N_CLASSES {
                e.0[k] += row.values[k];
            }
            e.1 += 1;
        }
    }

    /// Whether every architecture has test predictions.
    pub fn is_complete(&self) -> bool {
        self.sums.iter().all(|m| !m.is_empty())
    }

    /// Per architecture, the mean of its folds' predictions (`submission-<arch>.csv`).
    pub fn per_arch(&self) -> Vec<Vec<ProbRow>> {
        self.sums
            .iter()
            .map(|m| {
                m.iter()
                    .map(|(id, (s, n))| ProbRow {
                        eeg_id: *id,
                        values: s.map(|v| v / *n as f64),
                    })
                    .collect()
            })
            .collect()
    }

    /// The blend (`submission.csv`). Every architecture must have predicted the same rows (a
    /// job's predictions of another data set, or cut short, would otherwise blend nothing into
    /// a row): an error names the eeg_id and, through `file`, where the lacking architecture's
    /// predictions are.
    pub fn blend(&self, weights: &[f64], file: impl Fn(&str) -> String) -> Result<Vec<ProbRow>> {
        let means = self.per_arch();
        let ids: Vec<BTreeMap<i64, &[f64; N_CLASSES]>> = means
            .iter()
            .map(|rows| rows.iter().map(|r| (r.eeg_id, &r.values)).collect())
            .collect();
        for (a, m) in ids.iter().enumerate().skip(1) {
            let differ = ids[0]
                .keys()
                .find(|id| !m.contains_key(id))
                .map(|id| (id, &self.archs[0], &self.archs[a]))
                .or_else(|| {
                    m.keys()
                        .find(|id| !ids[0].contains_key(id))
                        .map(|id| (id, &self.archs[a], &self.archs[0]))
                });
            if let Some((id, has, lacks)) = differ {
                return Err(Error::invalid(
                    Location::file(file(lacks)),
                    format!(
                        "the architectures' test predictions differ: eeg_id {id} is predicted \
                         by {has} but not by {lacks}"
                    ),
                ));
            }
        }
        Ok(ids[0]
            .keys()
            .map(|id| {
                let parts: Vec<&[f64; N_CLASSES]> = ids.iter().map(|m| m[id]).collect();
                ProbRow {
                    eeg_id: *id,
                    values: blend(&parts, weights),
                }
            })
            .collect())
    }
}
