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

/// One training step's loss and every parameter's gradient (no optimizer step), for comparing
/// two devices on the same weights and batch ([`compare_steps`]).
#[derive(Debug, Clone)]
pub struct StepGradients {
    pub loss: f64,
    /// `(parameter path, gradient values)` in the model's visiting order.
    pub grads: Vec<(String, Vec<f32>)>,
}

/// The batch [`step_gradients`] trains on: `[batch, 3, 400, 300]` pixels in `[0, 255)` and
/// softmax targets, drawn from `seed` on the host, so every device sees the same values.
pub fn seeded_batch(batch: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let x = (0..batch * 3 * 400 * 300)
        .map(|_| rng.random_range(0.0f32..255.0))
        .collect();
    let mut y = Vec::with_capacity(batch * 6);
    for _ in 0..batch {
        let row: Vec<f32> = (0..6)
            .map(|_| rng.random_range(0.0f32..1.0).exp())
            .collect();
        let sum: f32 = row.iter().sum();
        y.extend(row.iter().map(|v| v / sum));
    }
    (x, y)
}

/// Forward, Keras KL and backward for the model drawn from `seed` ([`ModelConfig::init_seeded`],
/// the same weights on every backend) on [`seeded_batch`].
pub fn step_gradients<B: TrainBackend>(
    bench: &StepBench,
    seed: u64,
    device: &B::Device,
) -> Result<StepGradients, String> {
    use burn::tensor::TensorData;

    let model: Model<B> = ModelConfig::new(bench.arch)
        .with_width(bench.width)
        .init_seeded(seed, device);
    let (x, y) = seeded_batch(bench.batch, seed);
    let x = Tensor::<B, 4>::from_data(TensorData::new(x, [bench.batch, 3, 400, 300]), device);
    let y = Tensor::<B, 2>::from_data(TensorData::new(y, [bench.batch, 6]), device);
    let loss = keras_kl(model.forward_on(x, bench.path), y);
    let loss_value = loss
        .clone()
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| format!("reading the loss: {e:?}"))?[0] as f64;
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    Ok(StepGradients {
        loss: loss_value,
        grads: gradients(&model, &grads)?,
    })
}

/// Every trainable parameter's gradient in `grads`, as `(parameter path, values)` in the
/// model's visiting order (running statistics have none and are left out).
pub fn gradients<B: TrainBackend>(
    model: &Model<B>,
    grads: &GradientsParams,
) -> Result<Vec<(String, Vec<f32>)>, String> {
    use burn::module::{Module, ModuleVisitor, Param};

    struct Collect<'a, B: TrainBackend> {
        grads: &'a GradientsParams,
        path: Vec<String>,
        out: Vec<(String, Vec<f32>)>,
        error: Option<String>,
        backend: std::marker::PhantomData<B>,
    }
    impl<B: TrainBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) else {
                return; // running statistics: no gradient
            };
            match g.into_data().to_vec::<f32>() {
                Ok(v) => self.out.push((self.path.join("."), v)),
                Err(e) => self.error = Some(format!("reading a gradient: {e:?}")),
            }
        }
    }

    let mut collect = Collect::<B> {
        grads,
        path: Vec::new(),
        out: Vec::new(),
        error: None,
        backend: std::marker::PhantomData,
    };
    model.visit(&mut collect);
    match collect.error {
        Some(e) => Err(e),
        None => Ok(collect.out),
    }
}

/// How far one device's step is from another's.
#[derive(Debug, Clone, PartialEq)]
pub struct StepComparison {
    /// `|loss_b − loss_a| / |loss_a|`.
    pub loss_rel: f64,
    /// `‖g_b − g_a‖ / max(‖g_a‖, floor)` of the worst parameter, and its path; `floor` is 1e-2
    /// of the norm the tensor would have with the whole gradient's average element size.
    pub grad_rel_max: f64,
    pub worst: String,
    pub grad_rel_median: f64,
    pub params: usize,
}

/// Compares `b` against the reference `a` (the same model and batch on another device).
pub fn compare_steps(a: &StepGradients, b: &StepGradients) -> Result<StepComparison, String> {
    if a.grads.len() != b.grads.len() {
        return Err(format!(
            "{} gradients against {}",
            a.grads.len(),
            b.grads.len()
        ));
    }
    // A gradient that should be zero (a BatchNorm shift whose layer feeds another BatchNorm)
    // is rounding noise on both sides: each tensor's difference is measured against its own
    // norm or, when that is smaller, against 1e-2 of the norm an average element of the whole
    // gradient would give it. (1e-3 was too tight: on lavapipe with 8-wide subgroups, the
    // zero-by-construction shift of MobileNetV3's first projection came out at 1.1e-2 of it,
    // with the median tensor at 9e-6.)
    let total: usize = a.grads.iter().map(|(_, g)| g.len()).sum();
    let global = a
        .grads
        .iter()
        .flat_map(|(_, g)| g.iter())
        .map(|&v| (v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let mut rels = Vec::with_capacity(a.grads.len());
    for ((name, ga), (name_b, gb)) in a.grads.iter().zip(&b.grads) {
        if name != name_b || ga.len() != gb.len() {
            return Err(format!("parameter {name} does not match {name_b}"));
        }
        let (mut diff, mut norm) = (0f64, 0f64);
        for (&p, &q) in ga.iter().zip(gb) {
            diff += (p as f64 - q as f64).powi(2);
            norm += (p as f64).powi(2);
        }
        let floor = 1e-2 * global * (ga.len() as f64 / total.max(1) as f64).sqrt();
        let denom = norm.sqrt().max(floor);
        let rel = if denom > 0.0 {
            diff.sqrt() / denom
        } else {
            diff.sqrt()
        };
        rels.push((if rel.is_nan() { f64::INFINITY } else { rel }, name.clone()));
    }
    let mut sorted: Vec<f64> = rels.iter().map(|r| r.0).collect();
    sorted.sort_by(f64::total_cmp);
    let (grad_rel_max, worst) = rels
        .into_iter()
        .max_by(|p, q| p.0.total_cmp(&q.0))
        .unwrap_or((0.0, String::new()));
    let loss_rel = ((b.loss - a.loss) / a.loss).abs();
    Ok(StepComparison {
        loss_rel: if loss_rel.is_nan() {
            f64::INFINITY
        } else {
            loss_rel
        },
        grad_rel_max,
        worst,
        grad_rel_median: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        params: sorted.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    fn bench() -> StepBench {
        StepBench {
            arch: Arch::MobileNetV3Large,
            width: 0.25,
            batch: 2,
            warmup: 0,
            steps: 1,
            path: Path::Fused,
        }
    }

    #[test]
    fn the_same_step_twice_compares_equal_and_another_path_close() {
        let device = Default::default();
        let a = step_gradients::<B>(&bench(), 7, &device).unwrap();
        let b = step_gradients::<B>(&bench(), 7, &device).unwrap();
        assert!(a.loss.is_finite() && a.loss > 0.0);
        assert!(a.grads.len() > 50, "{}", a.grads.len());
        assert!(a.grads.iter().any(|(n, _)| n.contains("head")));
        let same = compare_steps(&a, &b).unwrap();
        assert_eq!((same.loss_rel, same.grad_rel_max), (0.0, 0.0));
        // One tensor 5 % off (a kernel wrong for one layer) fails the check and is named.
        let mut wrong = b;
        let norm = |g: &[f32]| g.iter().map(|v| v * v).sum::<f32>();
        let (name, g) = wrong
            .grads
            .iter_mut()
            .max_by(|p, q| norm(&p.1).total_cmp(&norm(&q.1)))
            .unwrap();
        g.iter_mut().for_each(|v| *v *= 1.05);
        let name = name.clone();
        let one = compare_steps(&a, &wrong).unwrap();
        assert!(one.grad_rel_max > 0.04 && one.worst == name, "{one:?}");
        // burn's stock ops compute the same step by other kernels: close, not equal.
        let stock = StepBench {
            path: Path::Stock,
            ..bench()
        };
        let c = step_gradients::<B>(&stock, 7, &device).unwrap();
        let near = compare_steps(&a, &c).unwrap();
        assert!(near.loss_rel < 1e-4, "{near:?}");
        assert!(
            near.grad_rel_max > 0.0 && near.grad_rel_max < 1e-2,
            "{near:?}"
        );
        // Another seed is another model and batch: far.
        let d = step_gradients::<B>(&bench(), 8, &device).unwrap();
        let far = compare_steps(&a, &d).unwrap();
        assert!(far.grad_rel_median > 0.1, "{far:?}");
    }
}
