//! The competition's score and the training loss.
//!
//! * [`kaggle_kl`] — Kaggle's KL divergence: solution votes normalised per row (not clipped),
//!   submission clipped to `[1e-15, 1 - 1e-15]`, `s · ln(s / p)` (0 where `s == 0`), summed
//!   over the six classes, then the plain mean over rows, rows matched by `eeg_id`.
//! * [`keras_kl`] — Keras' `KLDivergence` loss that the reference trains with: both sides
//!   clipped to `[1e-7, 1]`, per-row sums averaged over the batch.

use std::collections::HashMap;

use crate::error::{Error, Location, Result};
use crate::hms::N_CLASSES;
use crate::hms::tables::ProbRow;

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
    const EPS: f64 = 1e-15;
    s.iter()
        .zip(p)
        .map(|(&s, &p)| {
            if s == 0.0 {
                0.0
            } else {
                s * (s / p.clamp(EPS, 1.0 - EPS)).ln()
            }
        })
        .sum()
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
}
