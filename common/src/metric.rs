//! The competition's score and the training loss.
//!
//! * [`kaggle_kl`] — Kaggle's KL divergence: solution votes normalised per row (not clipped),
//!   submission clipped to `[1e-15, 1 - 1e-15]`, `s · ln(s / p)` (0 where `s == 0`), summed
//!   over the six classes, then the plain mean over rows, rows matched by `eeg_id`.
//! * [`keras_kl`] — Keras' `KLDivergence` loss that the reference trains with: both sides
//!   clipped to `[1e-7, 1]`, per-row sums averaged over the batch.
//! * [`per_class`] — each class's share of the Kaggle KL and the confusion matrix of the most
//!   probable class against `expert_consensus`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, Result};
use crate::hms::tables::ProbRow;
use crate::hms::{CLASS_NAMES, Class, N_CLASSES};

/// Submission rows must sum to 1 within this tolerance.
pub const SUM_TOLERANCE: f64 = 1e-3;

/// Kaggle's KL divergence of `submission` against `solution` (raw votes or probabilities).
/// `solution_file` and `submission_file` name the inputs in errors.
pub fn kaggle_kl(
    solution: &[ProbRow],
    solution_file: &str,
    submission: &[ProbRow],
    submission_file: &str,
) -> Result<f64> {
    let by_id: HashMap<i64, usize> = submission
        .iter()
        .enumerate()
        .map(|(i, r)| (r.eeg_id, i))
        .collect();
    for (i, r) in submission.iter().enumerate() {
        let sum: f64 = r.values.iter().sum();
        if (sum - 1.0).abs() > SUM_TOLERANCE {
            return Err(Error::invalid(
                Location::file(submission_file).line(i as u64 + 2),
                format!("eeg_id {}: probabilities sum to {sum}, not 1", r.eeg_id),
            ));
        }
    }
    let mut missing = Vec::new();
    let mut total = 0.0f64;
    for (i, s) in solution.iter().enumerate() {
        let votes: f64 = s.values.iter().sum();
        if votes <= 0.0 {
            return Err(Error::invalid(
                Location::file(solution_file).line(i as u64 + 2),
                format!("eeg_id {}: all vote columns are 0", s.eeg_id),
            ));
        }
        let Some(&j) = by_id.get(&s.eeg_id) else {
            missing.push(s.eeg_id);
            continue;
        };
        total += row_kl(&s.values.map(|v| v / votes), &submission[j].values);
    }
    if !missing.is_empty() {
        return Err(Error::invalid(
            Location::file(submission_file).field("eeg_id"),
            format!(
                "{} eeg_id(s) of {solution_file} are missing, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ),
        ));
    }
    if submission.len() != solution.len() {
        let known: std::collections::HashSet<i64> = solution.iter().map(|r| r.eeg_id).collect();
        let extra: Vec<i64> = submission
            .iter()
            .map(|r| r.eeg_id)
            .filter(|id| !known.contains(id))
            .take(5)
            .collect();
        return Err(Error::invalid(
            Location::file(submission_file).field("eeg_id"),
            format!(
                "{} rows are not in {solution_file}, e.g. {extra:?}",
                submission.len() - solution.len()
            ),
        ));
    }
    Ok(total / solution.len() as f64)
}

/// One row's `Σ s · ln(s / clip(p))`, skipping `s == 0`.
fn row_kl(s: &[f64; N_CLASSES], p: &[f64; N_CLASSES]) -> f64 {
    row_kl_terms(s, p).iter().sum()
}

/// One row's Kaggle KL term per class: `s · ln(s / clip(p))`, 0 where `s == 0`.
pub fn row_kl_terms(s: &[f64; N_CLASSES], p: &[f64; N_CLASSES]) -> [f64; N_CLASSES] {
    const EPS: f64 = 1e-15;
    std::array::from_fn(|k| {
        if s[k] == 0.0 {
            0.0
        } else {
            s[k] * (s[k] / p[k].clamp(EPS, 1.0 - EPS)).ln()
        }
    })
}

/// Per-class view of a set of predictions: what a user deciding whether a model can flag
/// seizures reads first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassBreakdown {
    /// Class names, in vote-column order (the order of every list below).
    pub classes: Vec<String>,
    /// Rows whose `expert_consensus` is each class.
    pub rows: Vec<u64>,
    /// Each class's share of the Kaggle KL: the mean over rows of its term `s · ln(s / p)`.
    /// They add up to the Kaggle KL (a term can be negative where a row's prediction puts
    /// more than its target on that class).
    pub kl: Vec<f64>,
    /// `confusion[i][j]`: rows whose `expert_consensus` is class `i` whose most probable
    /// predicted class is `j`.
    pub confusion: Vec<Vec<u64>>,
    /// Per class, the share of its rows predicted as it (`None` without rows of the class).
    pub recall: Vec<Option<f64>>,
}

/// The [`ClassBreakdown`] of `rows`: (raw votes or probabilities, expert consensus, prediction).
pub fn per_class<'a>(
    rows: impl IntoIterator<Item = (&'a [f64; N_CLASSES], Class, &'a [f64; N_CLASSES])>,
) -> ClassBreakdown {
    let mut kl = [0.0f64; N_CLASSES];
    let mut confusion = [[0u64; N_CLASSES]; N_CLASSES];
    let mut n = 0usize;
    for (votes, consensus, pred) in rows {
        let total: f64 = votes.iter().sum();
        let s = votes.map(|v| if total > 0.0 { v / total } else { 0.0 });
        for (k, t) in row_kl_terms(&s, pred).into_iter().enumerate() {
            kl[k] += t;
        }
        let argmax = (0..N_CLASSES)
            .max_by(|&a, &b| pred[a].total_cmp(&pred[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        confusion[consensus.index()][argmax] += 1;
        n += 1;
    }
    let rows: Vec<u64> = confusion.iter().map(|r| r.iter().sum()).collect();
    ClassBreakdown {
        classes: CLASS_NAMES.iter().map(|c| c.to_string()).collect(),
        kl: kl.iter().map(|v| v / n.max(1) as f64).collect(),
        recall: (0..N_CLASSES)
            .map(|i| (rows[i] > 0).then(|| confusion[i][i] as f64 / rows[i] as f64))
            .collect(),
        confusion: confusion.iter().map(|r| r.to_vec()).collect(),
        rows,
    }
}

/// Keras `KLDivergence()` over a batch: rows of `y_true` and `y_pred` (six values each).
pub fn keras_kl(y_true: &[[f32; N_CLASSES]], y_pred: &[[f32; N_CLASSES]]) -> f64 {
    assert_eq!(y_true.len(), y_pred.len());
    let clip = |v: f32| (v as f64).clamp(1e-7, 1.0);
    let total: f64 = y_true
        .iter()
        .zip(y_pred)
        .map(|(t, p)| {
            t.iter()
                .zip(p)
                .map(|(&t, &p)| clip(t) * (clip(t) / clip(p)).ln())
                .sum::<f64>()
        })
        .sum();
    total / y_true.len().max(1) as f64
}

/// The prior-only baseline: predict the mean training target everywhere. Returns the
/// mean distribution (vote-column order).
pub fn prior(targets: &[[f32; N_CLASSES]]) -> [f64; N_CLASSES] {
    let mut p = [0.0f64; N_CLASSES];
    for t in targets {
        for (a, &v) in p.iter_mut().zip(t) {
            *a += v as f64;
        }
    }
    let n = targets.len().max(1) as f64;
    p.map(|v| v / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, v: [f64; 6]) -> ProbRow {
        ProbRow {
            eeg_id: id,
            values: v,
        }
    }

    #[test]
    fn matches_hand_computation_and_joins_by_id() {
        let sol = vec![
            row(1, [3.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
            row(2, [0.0, 0.0, 0.0, 0.0, 0.0, 2.0]),
        ];
        // Submission in the other order, with a zero that gets clipped.
        let sub = vec![
            row(2, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
            row(1, [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]),
        ];
        let want = ((0.75f64 * (0.75f64 / 0.5).ln() + 0.25 * (0.25f64 / 0.5).ln())
            + 1.0 * (1.0 / (1.0 - 1e-15f64)).ln())
            / 2.0;
        let got = kaggle_kl(&sol, "s.csv", &sub, "p.csv").unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // A zero prediction where the solution has mass is clipped to 1e-15, not infinite.
        let sub0 = vec![
            row(1, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
            row(2, [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
        ];
        let v = kaggle_kl(&sol, "s.csv", &sub0, "p.csv").unwrap();
        assert!(v.is_finite() && v > 10.0, "{v}");
    }

    #[test]
    fn mismatches_are_named() {
        let sol = vec![
            row(1, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            row(2, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        ];
        let e = kaggle_kl(
            &sol,
            "s.csv",
            &[row(1, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0])],
            "p.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("p.csv") && e.contains("missing") && e.contains("[2]"),
            "{e}"
        );
        let sub = vec![
            row(1, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            row(2, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            row(3, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        ];
        let e = kaggle_kl(&sol, "s.csv", &sub, "p.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[3]"), "{e}");
        let bad = vec![
            row(1, [0.9, 0.0, 0.0, 0.0, 0.0, 0.0]),
            row(2, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        ];
        let e = kaggle_kl(&sol, "s.csv", &bad, "p.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("sum to 0.9"), "{e}");
        let zero = vec![row(1, [0.0; 6]), row(2, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0])];
        let e = kaggle_kl(&zero, "s.csv", &sol, "p.csv")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s.csv") && e.contains("line 2") && e.contains("all vote columns are 0"),
            "{e}"
        );
    }

    #[test]
    fn keras_kl_clips_both_sides() {
        let t = [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]];
        let p = [[0.5, 0.5, 0.0, 0.0, 0.0, 0.0]];
        // 1·ln(1/0.5) + 1e-7·ln(1e-7/0.5) + 4·1e-7·ln(1e-7/1e-7)
        let want = 2f64.ln() + 1e-7 * (1e-7f64 / 0.5).ln();
        assert!((keras_kl(&t, &p) - want).abs() < 1e-9);
        assert_eq!(keras_kl(&t, &t), 0.0);
    }

    #[test]
    fn prior_is_the_mean_target() {
        let p = prior(&[
            [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.5, 0.5, 0.0, 0.0, 0.0],
        ]);
        assert_eq!(p, [0.5, 0.25, 0.25, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn per_class_terms_add_up_to_the_kaggle_kl_and_count_the_argmax() {
        let votes = [
            [3.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0, 0.0, 2.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 5.0],
        ];
        let consensus = [Class::Seizure, Class::Gpd, Class::Other];
        let pred = [
            [0.5, 0.3, 0.05, 0.05, 0.05, 0.05],
            [0.1, 0.1, 0.2, 0.1, 0.1, 0.4],
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        ];
        let b = per_class((0..3).map(|i| (&votes[i], consensus[i], &pred[i])));
        let solution: Vec<ProbRow> = (0..3).map(|i| row(i as i64, votes[i])).collect();
        let submission: Vec<ProbRow> = (0..3).map(|i| row(i as i64, pred[i])).collect();
        let kl = kaggle_kl(&solution, "s", &submission, "p").unwrap();
        assert!((b.kl.iter().sum::<f64>() - kl).abs() < 1e-12);
        // Seizure's term: 0.75 · ln(0.75 / 0.5) over 3 rows.
        assert!((b.kl[0] - 0.75 * (1.5f64).ln() / 3.0).abs() < 1e-12);
        assert_eq!(b.classes[0], "Seizure");
        assert_eq!(b.rows, vec![1, 0, 1, 0, 0, 1]);
        // The GPD row's most probable prediction is Other.
        assert_eq!(b.confusion[2][5], 1);
        assert_eq!(b.confusion[0][0], 1);
        assert_eq!(b.recall[0], Some(1.0));
        assert_eq!(b.recall[2], Some(0.0));
        assert_eq!(b.recall[1], None);
    }
}
