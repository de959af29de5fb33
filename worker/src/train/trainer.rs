//! The training loop (hand-written, so every epoch can be reported to someone else): shuffled
//! batches from the loader, batch augmentations, Keras KL loss, Adam/AdamW with the per-epoch
//! schedule, validation on the held-out fold, and the best epoch by validation loss kept.
//! Blocking work: run it on its own thread, never on an async runtime.

use std::sync::Arc;
use std::time::Instant;

use burn::config::Config;
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use hbac_common::hms::N_CLASSES;
use hbac_common::hms::spectrogram::{FEATURES, WINDOW};
use hbac_common::preprocess::CHANNELS;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::augment::{AugmentConfig, augment};
use super::loss::keras_kl;
use super::schedule::LrSchedule;
use crate::TrainError;
use crate::model::pretrained::Pretrained;
use crate::model::{Model, ModelConfig};
use crate::ops::{FusedOps, TrainBackend};
use crate::train::data::{HostBatch, WindowSet, prefetch};

/// Optimizer choice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (Keras defaults: β 0.9/0.999, ε 1e-7), the reference.
    Adam,
    /// AdamW with decoupled weight decay.
    AdamW { weight_decay: f64 },
}

/// Everything that defines a training run; saved beside every run as `config.json`.
#[derive(Config, Debug)]
pub struct TrainConfig {
    pub model: ModelConfig,
    #[config(default = 13)]
    pub epochs: usize,
    #[config(default = 64)]
    pub batch_size: usize,
    #[config(default = "OptimizerKind::Adam")]
    pub optimizer: OptimizerKind,
    /// `None`: the reference schedule for `batch_size` and `epochs`.
    #[config(default = "None")]
    pub lr: Option<LrSchedule>,
    #[config(default = "AugmentConfig::default()")]
    pub augment: AugmentConfig,
    #[config(default = 42)]
    pub seed: u64,
    /// Loader threads building batches ahead of the training step.
    #[config(default = 2)]
    pub loader_threads: usize,
    /// timm ImageNet weights the backbone starts from (file or URL); `None`: random init.
    #[config(default = "None")]
    pub pretrained: Option<String>,
}

impl TrainConfig {
    /// The learning-rate schedule in force.
    pub fn schedule(&self) -> LrSchedule {
        self.lr
            .unwrap_or_else(|| LrSchedule::reference(self.batch_size, self.epochs))
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

/// Observers of a training run: per-batch progress and per-epoch reports.
pub trait TrainHooks {
    /// `done` of `total` batches of `epoch` have been trained.
    fn batch(&mut self, _epoch: usize, _done: usize, _total: usize) {}
    /// An epoch finished.
    fn epoch(&mut self, _report: &EpochReport) {}
    /// Whether to stop now (checked before every batch): the run ends with
    /// [`TrainError::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

impl<F: FnMut(&EpochReport)> TrainHooks for F {
    fn epoch(&mut self, report: &EpochReport) {
        self(report)
    }
}

/// Hooks that ignore everything.
pub struct NoHooks;

impl TrainHooks for NoHooks {}

/// The result of a training run.
pub struct Trained<B: Backend> {
    /// The weights of the best epoch.
    pub model: Model<B>,
    pub best_epoch: usize,
    pub history: Vec<EpochReport>,
}

fn to_device<B: Backend>(b: &HostBatch, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 2>) {
    let n = b.indices.len();
    let x = Tensor::from_data(
        TensorData::new(b.inputs.clone(), [n, CHANNELS, FEATURES, WINDOW]),
        device,
    );
    let y = Tensor::from_data(TensorData::new(b.targets.clone(), [n, N_CLASSES]), device);
    (x, y)
}

fn batches(order: &[usize], size: usize) -> Vec<Vec<usize>> {
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Trains `cfg.model` on `train`, validating on `valid` after every epoch; `hooks` see progress
/// and each epoch's report as soon as it exists. The backbone starts from `init` when given
/// (the weights `cfg.pretrained` names). Deterministic for a given seed and backend.
pub fn train<B: TrainBackend>(
    cfg: &TrainConfig,
    train: Arc<WindowSet>,
    valid: Option<Arc<WindowSet>>,
    init: Option<&Pretrained>,
    device: &B::Device,
    mut hooks: impl TrainHooks,
) -> Result<Trained<B::InnerBackend>, TrainError> {
    if train.is_empty() {
        return Err(TrainError::Config("no training samples".into()));
    }
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(TrainError::Config(
            "epochs and batch size must be at least 1".into(),
        ));
    }
    // Backends seed one process-wide generator: hold it while the weights are drawn, so
    // trainings running side by side in one process (local mode, tests) stay reproducible.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let mut model: Model<B> = {
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        B::seed(device, cfg.seed);
        let model: Model<B> = cfg.model.init(device);
        // Parameters are drawn lazily on first use: touch them all while the lock is held.
        let _ = burn::module::Module::num_params(&model);
        model
    };
    if let Some(weights) = init {
        model = weights.apply(model, &cfg.model)?;
    }
    let schedule = cfg.schedule();
    let mut adam;
    let mut adamw;
    let optim: &mut dyn FnMut(f64, Model<B>, GradientsParams) -> Model<B> = match cfg.optimizer {
        OptimizerKind::Adam => {
            adam = AdamConfig::new().with_epsilon(1e-7).init::<B, Model<B>>();
            &mut move |lr, m, g| adam.step(lr, m, g)
        }
        OptimizerKind::AdamW { weight_decay } => {
            adamw = AdamWConfig::new()
                .with_epsilon(1e-7)
                .with_weight_decay(weight_decay as f32)
                .init::<B, Model<B>>();
            &mut move |lr, m, g| adamw.step(lr, m, g)
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut history = Vec::with_capacity(cfg.epochs);
    let mut best: Option<(f64, usize, Model<B::InnerBackend>)> = None;
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        let lr = schedule.lr(epoch);
        order.shuffle(&mut rng);
        let (mut sum, mut seen) = (0.0f64, 0usize);
        let plan = batches(&order, cfg.batch_size);
        let total = plan.len();
        for (done, batch) in prefetch(train.clone(), plan, cfg.loader_threads, 2).enumerate() {
            if hooks.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let batch = batch?;
            let n = batch.indices.len();
            let (x, y) = to_device::<B>(&batch, device);
            let (x, y) = augment(&cfg.augment, &mut rng, x, y);
            let loss = keras_kl(model.forward(x), y);
            let value = loss.clone().into_scalar().elem::<f64>();
            if !value.is_finite() {
                return Err(TrainError::Diverged { epoch, loss: value });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim(lr, model, grads);
            sum += value * n as f64;
            seen += n;
            hooks.batch(epoch, done + 1, total);
        }
        let inner = model.valid();
        let valid_kl = match &valid {
            Some(v) if !v.is_empty() => {
                Some(evaluate(&inner, v, cfg.batch_size, cfg.loader_threads, device)?.0)
            }
            _ => None,
        };
        let score = valid_kl.unwrap_or(f64::NEG_INFINITY);
        let improved = best
            .as_ref()
            .is_none_or(|(b, _, _)| score < *b || valid_kl.is_none());
        if improved {
            best = Some((score, epoch, inner));
        }
        let seconds = start.elapsed().as_secs_f64();
        let report = EpochReport {
            epoch,
            lr,
            train_kl: sum / seen.max(1) as f64,
            valid_kl,
            seconds,
            samples_per_second: seen as f64 / seconds.max(1e-9),
            best: improved,
        };
        hooks.epoch(&report);
        history.push(report);
    }
    let (_, best_epoch, model) = best.expect("at least one epoch ran");
    Ok(Trained {
        model,
        best_epoch,
        history,
    })
}

/// Keras KL and softmax predictions of `model` on every sample of `set`, in order.
pub fn evaluate<B: FusedOps>(
    model: &Model<B>,
    set: &Arc<WindowSet>,
    batch_size: usize,
    threads: usize,
    device: &B::Device,
) -> Result<(f64, Vec<[f32; N_CLASSES]>), TrainError> {
    let order: Vec<usize> = (0..set.len()).collect();
    let (mut sum, mut preds) = (0.0f64, Vec::with_capacity(set.len()));
    for batch in prefetch(set.clone(), batches(&order, batch_size), threads, 2) {
        let batch = batch?;
        let n = batch.indices.len();
        let (x, y) = to_device::<B>(&batch, device);
        let logits = model.forward(x);
        sum += keras_kl(logits.clone(), y).into_scalar().elem::<f64>() * n as f64;
        let p: Vec<f32> = softmax(logits, 1)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 data");
        preds.extend(p.chunks(N_CLASSES).map(|c| std::array::from_fn(|i| c[i])));
    }
    Ok((sum / set.len().max(1) as f64, preds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Arch;
    use hbac_common::hms::Class;
    use hbac_common::hms::spectrogram::Spectrogram;
    use hbac_common::preprocess::Sample;
    use rand::Rng;

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    /// `n` random spectrograms with random soft targets.
    fn random_set(n: usize, seed: u64) -> WindowSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut set = WindowSet::default();
        for i in 0..n {
            let id = i as i64 + 1;
            let data: Vec<f32> = (0..FEATURES * WINDOW)
                .map(|_| rng.random_range(0.01f32..100.0))
                .collect();
            set.spectrograms
                .insert(id, Arc::new(Spectrogram { rows: WINDOW, data }));
            let raw: [f32; 6] = std::array::from_fn(|_| rng.random_range(0.0f32..1.0).powi(3));
            let total: f32 = raw.iter().sum();
            set.samples.push(Sample {
                row: i,
                label_id: id,
                eeg_id: id,
                patient_id: id,
                spectrogram_id: id,
                offset_rows: 0,
                class: Class::Other,
                target: raw.map(|v| v / total),
            });
        }
        set
    }

    fn tiny(arch: Arch) -> TrainConfig {
        TrainConfig::new(ModelConfig::new(arch).with_width(0.25).with_downsample(4))
            .with_batch_size(8)
            .with_augment(AugmentConfig::none())
            .with_lr(Some(LrSchedule {
                start: 3e-3,
                max: 3e-3,
                min: 3e-3,
                warmup: 0,
                decay_epochs: 1,
            }))
    }

    #[test]
    fn overfits_a_tiny_batch() {
        let set = Arc::new(random_set(8, 1));
        let device = Default::default();
        let cfg = tiny(Arch::MobileNetV3Large).with_epochs(60);
        let mut first = None;
        let trained = train::<B>(&cfg, set.clone(), None, None, &device, |r: &EpochReport| {
            first.get_or_insert(r.train_kl);
        })
        .unwrap();
        let last = trained.history.last().unwrap().train_kl;
        let (eval_kl, preds) = evaluate(&trained.model, &set, 8, 1, &device).unwrap();
        println!(
            "train KL {} -> {last}; eval-mode KL {eval_kl}",
            first.unwrap()
        );
        assert!(last < 0.05 * first.unwrap(), "{:?} -> {last}", first);
        assert_eq!(preds.len(), 8);
    }

    #[test]
    fn same_seed_same_run() {
        let set = Arc::new(random_set(6, 2));
        let device = Default::default();
        let cfg = tiny(Arch::EfficientNetV2B2)
            .with_epochs(2)
            .with_batch_size(3)
            .with_augment(AugmentConfig::default());
        let a = train::<B>(&cfg, set.clone(), Some(set.clone()), None, &device, NoHooks).unwrap();
        let b = train::<B>(&cfg, set.clone(), Some(set.clone()), None, &device, NoHooks).unwrap();
        let kl = |t: &Trained<burn::backend::Flex>| {
            t.history
                .iter()
                .map(|r| (r.train_kl, r.valid_kl))
                .collect::<Vec<_>>()
        };
        assert_eq!(kl(&a), kl(&b));
        assert!(
            a.history
                .iter()
                .all(|r| r.valid_kl.is_some_and(f64::is_finite))
        );
    }
}
