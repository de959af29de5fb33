//! The reference learning-rate schedule, per epoch: linear warm-up from `start` to `max` over
//! `warmup` epochs, then cosine decay from `max` towards `min` over `decay_epochs`. This is the
//! KerasCV starter's `get_lr_callback(batch_size, mode="cos", epochs=10)` with
//! `max = 6e-6 × batch_size`; trained for 13 epochs at batch 64 it gives
//! 5e-5, 1.613e-4, 2.727e-4, 3.84e-4, 3.749e-4, …, 1.92e-5.

use serde::{Deserialize, Serialize};

/// Warm-up + cosine schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    pub start: f64,
    pub max: f64,
    pub min: f64,
    pub warmup: usize,
    /// Length of the cosine half-period in epochs (the notebook's `epochs - warmup + 3` with
    /// its callback's `epochs=10`, i.e. 10).
    pub decay_epochs: usize,
}

impl LrSchedule {
    /// The reference schedule for `epochs` epochs at `batch_size`.
    pub fn reference(batch_size: usize, epochs: usize) -> Self {
        Self {
            start: 5e-5,
            max: 6e-6 * batch_size as f64,
            min: 1e-5,
            warmup: 3,
            decay_epochs: epochs.saturating_sub(3).max(1),
        }
    }

    /// Learning rate of epoch `epoch` (0-based).
    pub fn lr(&self, epoch: usize) -> f64 {
        if epoch < self.warmup {
            return (self.max - self.start) / self.warmup as f64 * epoch as f64 + self.start;
        }
        let phase = std::f64::consts::PI * (epoch - self.warmup) as f64 / self.decay_epochs as f64;
        (self.max - self.min) * 0.5 * (1.0 + phase.cos()) + self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebook_values_for_13_epochs_at_batch_64() {
        // As the notebook printed them: equal to within one unit of the last digit shown.
        let want = [
            "5e-5", "1.613e-4", "2.727e-4", "3.84e-4", "3.749e-4", "3.483e-4", "3.069e-4",
            "2.548e-4", "1.97e-4", "1.392e-4", "8.71e-5", "4.57e-5", "1.92e-5",
        ];
        let s = LrSchedule::reference(64, 13);
        for (e, w) in want.iter().enumerate() {
            let (mantissa, exp) = w.split_once('e').unwrap();
            let decimals = mantissa.split_once('.').map_or(0, |(_, d)| d.len());
            let unit = 10f64.powi(exp.parse::<i32>().unwrap() - decimals as i32);
            let want: f64 = w.parse().unwrap();
            assert!(
                (s.lr(e) - want).abs() <= unit,
                "epoch {e}: {} vs {w}",
                s.lr(e)
            );
        }
    }
}
