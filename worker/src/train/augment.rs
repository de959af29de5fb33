//! The reference augmentations, applied to a whole batch on the device, each with its own
//! probability per batch: MixUp (one `Beta(α, α)` weight per sample, partner from a
//! permutation of the batch, targets mixed alike), a time cutout (all 400 frequency rows ×
//! 6–10 % of the time columns) and a frequency cutout (6–10 % of the rows × all columns),
//! cutouts filled with 0. Random draws come from a seeded CPU generator, so a run is
//! reproducible per seed.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

/// Augmentation settings (the reference's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    pub mixup_prob: f64,
    pub mixup_alpha: f64,
    pub time_cutout_prob: f64,
    pub freq_cutout_prob: f64,
    /// Cutout size as a fraction of the axis, drawn uniformly from this range.
    pub cutout_fraction: (f64, f64),
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            mixup_prob: 0.5,
            mixup_alpha: 2.0,
            time_cutout_prob: 0.5,
            freq_cutout_prob: 0.5,
            cutout_fraction: (0.06, 0.10),
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            mixup_prob: 0.0,
            time_cutout_prob: 0.0,
            freq_cutout_prob: 0.0,
            ..Self::default()
        }
    }
}

/// A `[N, 1, 1, len]`-broadcastable 0/1 mask (or its transpose) with one zeroed band per sample.
fn band_mask(rng: &mut ChaCha8Rng, n: usize, len: usize, fraction: (f64, f64)) -> Vec<f32> {
    let mut m = vec![1.0f32; n * len];
    for row in m.chunks_mut(len) {
        let width = ((rng.random_range(fraction.0..=fraction.1) * len as f64).round() as usize)
            .clamp(1, len);
        let start = rng.random_range(0..=len - width);
        row[start..start + width].fill(0.0);
    }
    m
}

/// Applies the batch augmentations to inputs `x` `[N, C, H, W]` and targets `y` `[N, K]`.
pub fn augment<B: Backend>(
    cfg: &AugmentConfig,
    rng: &mut ChaCha8Rng,
    x: Tensor<B, 4>,
    y: Tensor<B, 2>,
) -> (Tensor<B, 4>, Tensor<B, 2>) {
    let [n, _, h, w] = x.dims();
    let device = x.device();
    let (mut x, mut y) = (x, y);
    if n > 1 && rng.random_bool(cfg.mixup_prob.clamp(0.0, 1.0)) {
        let beta = Beta::new(cfg.mixup_alpha, cfg.mixup_alpha).expect("alpha > 0");
        let lam: Vec<f32> = (0..n).map(|_| beta.sample(rng) as f32).collect();
        let mut perm: Vec<i64> = (0..n as i64).collect();
        perm.shuffle(rng);
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(perm, [n]), &device);
        let lam_x = Tensor::<B, 4>::from_data(TensorData::new(lam.clone(), [n, 1, 1, 1]), &device);
        let lam_y = Tensor::<B, 2>::from_data(TensorData::new(lam, [n, 1]), &device);
        let xp = x.clone().select(0, idx.clone());
        let yp = y.clone().select(0, idx);
        x = x.clone() * lam_x.clone() + xp * (lam_x.neg() + 1.0);
        y = y.clone() * lam_y.clone() + yp * (lam_y.neg() + 1.0);
    }
    if rng.random_bool(cfg.time_cutout_prob.clamp(0.0, 1.0)) {
        let m = band_mask(rng, n, w, cfg.cutout_fraction);
        x = x * Tensor::<B, 4>::from_data(TensorData::new(m, [n, 1, 1, w]), &device);
    }
    if rng.random_bool(cfg.freq_cutout_prob.clamp(0.0, 1.0)) {
        let m = band_mask(rng, n, h, cfg.cutout_fraction);
        x = x * Tensor::<B, 4>::from_data(TensorData::new(m, [n, 1, h, 1]), &device);
    }
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    type B = burn::backend::Flex;

    #[test]
    fn cutouts_zero_full_bands_of_the_right_size() {
        let device = Default::default();
        let cfg = AugmentConfig {
            mixup_prob: 0.0,
            time_cutout_prob: 1.0,
            freq_cutout_prob: 0.0,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let x = Tensor::<B, 4>::ones([2, 3, 40, 100], &device);
        let y = Tensor::<B, 2>::ones([2, 6], &device);
        let (x, _) = augment(&cfg, &mut rng, x, y);
        let v: Vec<f32> = x.into_data().to_vec().unwrap();
        for s in 0..2 {
            // Every row of every channel has the same 6-10 zeroed columns.
            let zero_cols: Vec<usize> = (0..100).filter(|&c| v[s * 12000 + c] == 0.0).collect();
            assert!((6..=10).contains(&zero_cols.len()), "{zero_cols:?}");
            assert!(zero_cols.windows(2).all(|w| w[1] == w[0] + 1), "contiguous");
            for ch in 0..3 {
                for r in 0..40 {
                    for &c in &zero_cols {
                        assert_eq!(v[s * 12000 + ch * 4000 + r * 100 + c], 0.0);
                    }
                }
            }
            assert_eq!(
                v[s * 12000..(s + 1) * 12000]
                    .iter()
                    .filter(|&&a| a == 0.0)
                    .count(),
                zero_cols.len() * 120
            );
        }
    }

    #[test]
    fn mixup_mixes_inputs_and_targets_with_the_same_weight() {
        let device = Default::default();
        let cfg = AugmentConfig {
            mixup_prob: 1.0,
            time_cutout_prob: 0.0,
            freq_cutout_prob: 0.0,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Sample i is constant i; its target is one-hot i.
        let x = Tensor::<B, 1>::from_floats([0.0, 1.0, 2.0, 3.0], &device)
            .reshape([4, 1, 1, 1])
            .repeat_dim(2, 2);
        let mut eye = vec![0.0f32; 16];
        for i in 0..4 {
            eye[i * 4 + i] = 1.0;
        }
        let y = Tensor::<B, 2>::from_data(TensorData::new(eye, [4, 4]), &device);
        let (x, y) = augment(&cfg, &mut rng, x, y);
        let xv: Vec<f32> = x.into_data().to_vec().unwrap();
        let yv: Vec<f32> = y.into_data().to_vec().unwrap();
        for i in 0..4 {
            let row = &yv[i * 4..i * 4 + 4];
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            // The mixed input equals the target-weighted mean of the constants.
            let expect: f32 = row.iter().enumerate().map(|(k, w)| k as f32 * w).sum();
            assert!(
                (xv[i * 2] - expect).abs() < 1e-5,
                "{} vs {expect}",
                xv[i * 2]
            );
        }
    }
}
