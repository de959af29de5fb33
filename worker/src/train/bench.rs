//! Training-step throughput on any backend: full-size (or `width`-scaled) models on random
//! `[batch, 3, 400, 300]` inputs, forward + Keras KL + backward + Adam, the device synchronised
//! after every step so GPU time is counted. Used by `hbac model bench` (any device) and by the
//! CPU benchmarks in `bench/`.

use std::time::Instant;

use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::{Distribution, Tensor};

use super::loss::keras_kl;
use crate::model::layers::Path;
use crate::model::{Arch, Model, ModelConfig};
use crate::ops::TrainBackend;

/// What to time.
#[derive(Debug, Clone, Copy)]
pub struct StepBench {
    pub arch: Arch,
    pub width: f64,
    pub batch: usize,
    /// Untimed steps first (allocation, kernel compilation, autotuning).
    pub warmup: usize,
    pub steps: usize,
    pub path: Path,
}

/// Seconds of each timed step; `before_step(i)` runs before step `i` (warm-up steps count).
pub fn train_steps<B: TrainBackend>(
    bench: &StepBench,
    device: &B::Device,
    mut before_step: impl FnMut(usize),
) -> Result<Vec<f64>, String> {
    let mut model: Model<B> = ModelConfig::new(bench.arch)
        .with_width(bench.width)
        .init(device);
    let mut optim = AdamConfig::new().with_epsilon(1e-7).init::<B, Model<B>>();
    let x = Tensor::<B, 4>::random(
        [bench.batch, 3, 400, 300],
        Distribution::Uniform(0.0, 255.0),
        device,
    );
    let y = burn::tensor::activation::softmax(
        Tensor::<B, 2>::random([bench.batch, 6], Distribution::Default, device),
        1,
    );
    let sync = || B::sync(device).map_err(|e| format!("device error: {e:?}"));
    sync()?;
    let mut times = Vec::with_capacity(bench.steps);
    for step in 0..bench.warmup + bench.steps {
        before_step(step);
        let start = Instant::now();
        let loss = keras_kl(model.forward_on(x.clone(), bench.path), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        sync()?;
        if step >= bench.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(times)
}

/// `train_step arch=… step_seconds=[…] samples_per_s=…`, the benchmarks' line format.
pub fn report(bench: &StepBench, times: &[f64]) -> String {
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    format!(
        "train_step arch={} step_seconds={:?} samples_per_s={:.2}",
        bench.arch,
        times
            .iter()
            .map(|t| (t * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        bench.batch as f64 / mean
    )
}
