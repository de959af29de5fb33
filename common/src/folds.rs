//! Stratified group k-fold, identical to scikit-learn ≥ 1.8's
//! `StratifiedGroupKFold(n_splits, shuffle, random_state)` on the same rows, including
//! `shuffle=True`, for which numpy's legacy `RandomState` (MT19937 seeded by `init_genrand`,
//! `shuffle` drawing with `random_interval`) is reproduced exactly, as are numpy's summation
//! orders where they decide ties. Parameter errors use scikit-learn's messages.

use std::collections::BTreeMap;

use rand_mt::Mt;

use crate::error::{Error, Result};
use crate::hms::tables::TrainRow;

/// Splitter settings: scikit-learn's `n_splits`, `shuffle` and `random_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KFold {
    pub k: usize,
    pub shuffle: bool,
    pub seed: Option<u64>,
}

/// A split: the 0-based test fold of every input row, plus scikit-learn's warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub fold: Vec<usize>,
    pub warnings: Vec<String>,
}

/// Folds for HMS rows: stratified by `expert_consensus`, grouped by `patient_id`.
pub fn hms_folds(rows: &[TrainRow], kfold: &KFold) -> Result<Split> {
    let y: Vec<&str> = rows.iter().map(|r| r.expert_consensus.name()).collect();
    let groups: Vec<i64> = rows.iter().map(|r| r.patient_id).collect();
    stratified_group_kfold(&y, &groups, kfold)
}

/// scikit-learn's `StratifiedGroupKFold(...).split(X, y, groups)`, returned as the test fold
/// of each row. Classes and groups are ordered as `np.unique` orders them (`Ord`).
pub fn stratified_group_kfold<Y: Ord, G: Ord>(
    y: &[Y],
    groups: &[G],
    kfold: &KFold,
) -> Result<Split> {
    let k = kfold.k;
    if k <= 1 {
        return Err(Error::Folds(format!(
            "k-fold cross-validation requires at least one train/test split by setting n_splits=2 or more, got n_splits={k}."
        )));
    }
    let mut rng = match (kfold.shuffle, kfold.seed) {
        (false, Some(_)) => {
            return Err(Error::Folds(
                "Setting a random_state has no effect since shuffle is False. You should leave random_state to its default (None), or set shuffle=True.".into(),
            ));
        }
        (true, None) => {
            return Err(Error::Folds(
                "shuffle without a seed would not be reproducible; give a seed (scikit-learn's random_state)".into(),
            ));
        }
        (true, Some(seed)) => {
            let seed = u32::try_from(seed)
                .map_err(|_| Error::Folds("Seed must be between 0 and 2**32 - 1".into()))?;
            Some(Mt::new(seed))
        }
        (false, None) => None,
    };
    let n = y.len();
    assert_eq!(n, groups.len(), "y and groups must have one entry per row");
    if k > n {
        return Err(Error::Folds(format!(
            "Cannot have number of splits n_splits={k} greater than the number of samples: n_samples={n}."
        )));
    }
    let (y_inv, y_cnt) = unique_inverse(y);
    let mut warnings = Vec::new();
    if y_cnt.iter().all(|&c| k > c) {
        return Err(Error::Folds(format!(
            "n_splits={k} cannot be greater than the number of members in each class."
        )));
    }
    let smallest = *y_cnt.iter().min().expect("n > 0");
    if k > smallest {
        warnings.push(format!(
            "The least populated class in y has only {smallest} members, which is less than n_splits={k}."
        ));
    }
    let n_classes = y_cnt.len();
    let (groups_inv, groups_cnt) = unique_inverse(groups);
    let n_groups = groups_cnt.len();
    if k > n_groups {
        return Err(Error::Folds(format!(
            "Cannot have number of splits n_splits={k} greater than the number of groups: {n_groups}."
        )));
    }

    let mut counts = vec![vec![0.0f64; n_classes]; n_groups];
    for (&c, &g) in y_inv.iter().zip(&groups_inv) {
        counts[g][c] += 1.0;
    }
    // Shuffling permutes the groups; `order[p]` is the original group at position p.
    let mut order: Vec<usize> = (0..n_groups).collect();
    if let Some(rng) = rng.as_mut() {
        legacy_shuffle(rng, &mut order);
    }
    let stds: Vec<f64> = order.iter().map(|&g| np_std(&counts[g])).collect();
    let mut by_std: Vec<usize> = (0..n_groups).collect();
    by_std.sort_by(|&a, &b| stds[b].total_cmp(&stds[a])); // stable: ties keep shuffled order

    let y_cnt_f: Vec<f64> = y_cnt.iter().map(|&c| c as f64).collect();
    let mut per_fold = vec![vec![0.0f64; n_classes]; k];
    let mut fold_of_group = vec![usize::MAX; n_groups];
    for p in by_std {
        let g = order[p];
        let best = best_fold(&mut per_fold, &y_cnt_f, &counts[g]);
        for (acc, c) in per_fold[best].iter_mut().zip(&counts[g]) {
            *acc += c;
        }
        fold_of_group[g] = best;
    }
    Ok(Split {
        fold: groups_inv.iter().map(|&g| fold_of_group[g]).collect(),
        warnings,
    })
}

/// scikit-learn's `_find_best_fold`: the fold whose class proportions stay most even, ties
/// (within `np.isclose`) going to the fold with fewer samples, then the lowest index.
fn best_fold(per_fold: &mut [Vec<f64>], y_cnt: &[f64], group: &[f64]) -> usize {
    let k = per_fold.len();
    let n_classes = y_cnt.len();
    let mut best = 0;
    let mut min_eval = f64::INFINITY;
    let mut min_samples = f64::INFINITY;
    let mut column = vec![0.0f64; k];
    let mut std_per_class = vec![0.0f64; n_classes];
    for i in 0..k {
        for (a, g) in per_fold[i].iter_mut().zip(group) {
            *a += g;
        }
        // np.std(y_counts_per_fold / y_cnt, axis=0): reductions over rows run in row order.
        for (c, s) in std_per_class.iter_mut().enumerate() {
            for (j, v) in column.iter_mut().enumerate() {
                *v = per_fold[j][c] / y_cnt[c];
            }
            *s = std_sequential(&column);
        }
        for (a, g) in per_fold[i].iter_mut().zip(group) {
            *a -= g;
        }
        let fold_eval = pairwise_sum(&std_per_class) / n_classes as f64;
        let samples: f64 = pairwise_sum(&per_fold[i]);
        if fold_eval < min_eval || (isclose(fold_eval, min_eval) && samples < min_samples) {
            min_eval = fold_eval;
            min_samples = samples;
            best = i;
        }
    }
    best
}

/// `np.isclose` with its defaults (rtol 1e-5, atol 1e-8).
fn isclose(a: f64, b: f64) -> bool {
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= 1e-8 + 1e-5 * b.abs()
}

/// `np.std` of a contiguous row (reduction along the last axis uses pairwise summation).
fn np_std(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = pairwise_sum(x) / n;
    let sq: Vec<f64> = x.iter().map(|v| (v - mean) * (v - mean)).collect();
    (pairwise_sum(&sq) / n).sqrt()
}

/// `np.std` along axis 0 of a C-ordered 2-D array: plain accumulation in row order.
fn std_sequential(x: &[f64]) -> f64 {
    let n = x.len() as f64;
    let mean = x.iter().fold(0.0, |a, v| a + v) / n;
    (x.iter().fold(0.0, |a, v| a + (v - mean) * (v - mean)) / n).sqrt()
}

/// numpy's `pairwise_sum` for float64 (blocks of 128, eight accumulators).
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, v| s + v)
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &a[i..] {
            res += v;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.unique(x, return_inverse=True, return_counts=True)`: inverse indices and counts, in
/// sorted order of the distinct values.
fn unique_inverse<T: Ord>(x: &[T]) -> (Vec<usize>, Vec<usize>) {
    let mut index: BTreeMap<&T, usize> = x.iter().map(|v| (v, 0)).collect();
    for (i, v) in index.values_mut().enumerate() {
        *v = i;
    }
    let mut counts = vec![0; index.len()];
    let inv = x
        .iter()
        .map(|v| {
            let i = index[v];
            counts[i] += 1;
            i
        })
        .collect();
    (inv, counts)
}

/// numpy's legacy `RandomState.shuffle` of a 1-D array (Fisher–Yates from the end).
pub fn legacy_shuffle<T>(rng: &mut Mt, x: &mut [T]) {
    for i in (1..x.len()).rev() {
        let j = random_interval(rng, i as u64) as usize;
        x.swap(i, j);
    }
}

/// numpy's `random_interval`: uniform in `[0, max]` by masked rejection sampling.
pub fn random_interval(rng: &mut Mt, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let mut mask = max;
    for s in [1, 2, 4, 8, 16, 32] {
        mask |= mask >> s;
    }
    loop {
        let v = if max <= 0xffff_ffff {
            u64::from(rng.next_u32()) & mask
        } else {
            ((u64::from(rng.next_u32()) << 32) | u64::from(rng.next_u32())) & mask
        };
        if v <= max {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_numpy_seed_42() {
        // np.random.RandomState(42)._bit_generator.random_raw(2)
        let mut mt = Mt::new(42);
        assert_eq!(mt.next_u32(), 1608637542);
        assert_eq!(mt.next_u32(), 3421126067);
    }

    #[test]
    fn legacy_shuffle_matches_numpy() {
        // np.random.RandomState(42).shuffle(a := np.arange(10)); a
        let mut mt = Mt::new(42);
        let mut a: Vec<usize> = (0..10).collect();
        legacy_shuffle(&mut mt, &mut a);
        assert_eq!(a, vec![8, 1, 5, 0, 7, 2, 9, 4, 3, 6]);
    }

    #[test]
    fn pairwise_sum_matches_blocks() {
        let v: Vec<f64> = (0..300).map(|i| 0.1 * i as f64).collect();
        let s = pairwise_sum(&v);
        assert!((s - 4485.0).abs() < 1e-9);
    }

    fn kf(k: usize, shuffle: bool, seed: Option<u64>) -> KFold {
        KFold { k, shuffle, seed }
    }

    #[test]
    fn sklearn_parameter_errors() {
        let y = ["a", "b", "a", "b"];
        let g = [1, 2, 3, 4];
        let msg = |k: KFold| stratified_group_kfold(&y, &g, &k).unwrap_err().to_string();
        assert!(msg(kf(1, false, None)).contains("got n_splits=1"));
        assert!(msg(kf(2, false, Some(3))).contains("Setting a random_state has no effect"));
        assert!(
            msg(kf(5, false, None)).contains("greater than the number of samples: n_samples=4")
        );
        assert!(
            msg(kf(3, false, None))
                .contains("cannot be greater than the number of members in each class")
        );
        assert!(msg(kf(2, true, Some(1 << 33))).contains("Seed must be between 0 and 2**32 - 1"));
        let g2 = [1, 1, 1, 2, 2, 2];
        let y2 = ["a", "a", "a", "a", "a", "a"];
        let e = stratified_group_kfold(&y2, &g2, &kf(3, false, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("greater than the number of groups: 2"), "{e}");
    }

    #[test]
    fn groups_never_straddle_folds() {
        let y: Vec<u8> = (0..200).map(|i| (i * 7 % 5) as u8).collect();
        let g: Vec<u32> = (0..200).map(|i| i / 3).collect();
        let s = stratified_group_kfold(&y, &g, &kf(5, true, Some(7))).unwrap();
        for i in 0..200 {
            for j in 0..200 {
                if g[i] == g[j] {
                    assert_eq!(s.fold[i], s.fold[j]);
                }
            }
        }
        assert!((0..5).all(|f| s.fold.contains(&f)));
    }
}
