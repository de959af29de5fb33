//! The training loop (hand-written, so every epoch can be reported to someone else): shuffled
//! batches from the loader, batch augmentations, Keras KL loss, Adam/AdamW with the per-epoch
//! schedule, validation on the held-out fold, and the best epoch by validation loss kept.
//! Blocking work: run it on its own thread, never on an async runtime.

use std::sync::Arc;
use std::time::Instant;

use burn::config::Config;
use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor, TensorData};
use hbac_common::hms::N_CLASSES;
use hbac_common::preprocess::Input;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::augment::{AugmentConfig, augment};
use super::loss::keras_kl;
use super::schedule::LrSchedule;
use crate::TrainError;
use crate::model::layers::Path;
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
    /// Stochastic depth ("drop connect") of EfficientNetV2's residual blocks, as Keras builds
    /// it (0.2 in keras.applications): block `b` drops its branch for a sample with probability
    /// `rate × b / 21` in training ([`crate::model::efficientnetv2::TABLE_BLOCKS`]). `None` or
    /// 0: none (MobileNetV3 has none).
    #[config(default = "None")]
    pub drop_connect: Option<f64>,
    /// Training rows with fewer annotator votes than this are left out (the validation fold
    /// keeps every row). `None`: every row.
    #[config(default = "None")]
    pub min_votes: Option<f64>,
    /// A second stage after `epochs`: from the best weights so far, on the training rows with
    /// at least [`Stage2::min_votes`] votes only. `None`: one stage (the reference).
    #[config(default = "None")]
    pub stage2: Option<Stage2>,
    /// The image the model sees: Kaggle's spectrogram (the reference), the EEG's mel image,
    /// or both tiled ([`Input`]).
    #[config(default = "Input::Kaggle")]
    pub input: Input,
}

/// The second training stage, as the top HMS solutions trained: the model goes on from stage
/// 1's best weights with a fresh optimizer, on the high-agreement rows only, for `epochs` more
/// epochs, its learning rate a cosine from `lr` (no warm-up) down to stage 1's floor. The job
/// keeps the best epoch of either stage by validation KL, so a second stage that does not
/// help the validation fold leaves the job's model as stage 1 made it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2 {
    /// Training rows with at least this many votes.
    pub min_votes: f64,
    pub epochs: usize,
    /// Peak learning rate; `None`: a tenth of stage 1's peak.
    #[serde(default)]
    pub lr: Option<f64>,
}

impl TrainConfig {
    /// Checks every field a training order could carry wrong (it comes over the network):
    /// counts in range, probabilities in [0, 1], positive finite rates and scales. The error
    /// names the field (`train.augment.mixup_alpha: …`). Training only ever runs a config that
    /// passed: nothing downstream (augmentation draws, the schedule, the model's shapes) can
    /// then panic on it.
    pub fn validate(&self) -> Result<(), String> {
        fn check(
            ok: bool,
            field: &str,
            want: &str,
            got: impl std::fmt::Debug,
        ) -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(format!("train.{field}: must be {want}, got {got:?}"))
            }
        }
        let prob = |v: f64| (0.0..=1.0).contains(&v);
        let pos = |v: f64| v.is_finite() && v > 0.0;
        let nonneg = |v: f64| v.is_finite() && v >= 0.0;
        let m = &self.model;
        check(
            m.num_classes == N_CLASSES,
            "model.num_classes",
            "6",
            m.num_classes,
        )?;
        check(
            pos(m.width) && m.width <= 8.0,
            "model.width",
            "in (0, 8]",
            m.width,
        )?;
        check(
            (1..=32).contains(&m.downsample),
            "model.downsample",
            "in 1..=32",
            m.downsample,
        )?;
        if let Some(b) = m.bn_momentum {
            check(prob(b), "model.bn_momentum", "in [0, 1]", b)?;
        }
        check(
            pos(m.bn_epsilon),
            "model.bn_epsilon",
            "positive",
            m.bn_epsilon,
        )?;
        check(
            (1..=100_000).contains(&self.epochs),
            "epochs",
            "in 1..=100000",
            self.epochs,
        )?;
        check(
            (1..=65_536).contains(&self.batch_size),
            "batch_size",
            "in 1..=65536",
            self.batch_size,
        )?;
        check(
            (1..=256).contains(&self.loader_threads),
            "loader_threads",
            "in 1..=256",
            self.loader_threads,
        )?;
        if let OptimizerKind::AdamW { weight_decay } = self.optimizer {
            check(
                nonneg(weight_decay),
                "optimizer.weight_decay",
                "finite and not negative",
                weight_decay,
            )?;
        }
        if let Some(lr) = &self.lr {
            for (name, v) in [("start", lr.start), ("max", lr.max), ("min", lr.min)] {
                check(
                    nonneg(v),
                    &format!("lr.{name}"),
                    "finite and not negative",
                    v,
                )?;
            }
            check(
                lr.decay_epochs >= 1,
                "lr.decay_epochs",
                "at least 1",
                lr.decay_epochs,
            )?;
        }
        let a = &self.augment;
        for (name, v) in [
            ("mixup_prob", a.mixup_prob),
            ("time_cutout_prob", a.time_cutout_prob),
            ("freq_cutout_prob", a.freq_cutout_prob),
        ] {
            check(prob(v), &format!("augment.{name}"), "in [0, 1]", v)?;
        }
        check(
            pos(a.mixup_alpha),
            "augment.mixup_alpha",
            "positive and finite",
            a.mixup_alpha,
        )?;
        if let Some(d) = self.drop_connect {
            use crate::model::efficientnetv2::MAX_DROP_CONNECT;
            check(
                d.is_finite() && (0.0..MAX_DROP_CONNECT).contains(&d),
                "drop_connect",
                "in [0, 0.7778) (Keras spreads it up to rate × 27 / 21 on the last block)",
                d,
            )?;
        }
        if let Some(v) = self.min_votes {
            check(nonneg(v), "min_votes", "finite and >= 0", v)?;
        }
        if let Some(s) = &self.stage2 {
            check(
                nonneg(s.min_votes),
                "stage2.min_votes",
                "finite and >= 0",
                s.min_votes,
            )?;
            check(
                (1..=100_000).contains(&s.epochs),
                "stage2.epochs",
                "in 1..=100000",
                s.epochs,
            )?;
            if let Some(lr) = s.lr {
                check(pos(lr), "stage2.lr", "positive and finite", lr)?;
            }
        }
        let (lo, hi) = a.cutout_fraction;
        check(
            prob(lo) && prob(hi) && lo <= hi,
            "augment.cutout_fraction",
            "a range (low, high) with 0 <= low <= high <= 1",
            a.cutout_fraction,
        )?;
        Ok(())
    }

    /// The learning-rate schedule in force (stage 1's).
    pub fn schedule(&self) -> LrSchedule {
        self.lr
            .unwrap_or_else(|| LrSchedule::reference(self.batch_size, self.epochs))
    }

    /// Epochs in all: stage 1's and stage 2's.
    pub fn total_epochs(&self) -> usize {
        self.epochs + self.stage2.map_or(0, |s| s.epochs)
    }

    /// The learning rate of `epoch` (0-based, counted through both stages).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let first = self.schedule();
        match self.stage2 {
            Some(s) if epoch >= self.epochs => {
                let max = s.lr.unwrap_or(first.max / 10.0);
                LrSchedule {
                    start: max,
                    max,
                    min: first.min.min(max),
                    warmup: 0,
                    decay_epochs: s.epochs,
                }
                .lr(epoch - self.epochs)
            }
            _ => first.lr(epoch),
        }
    }
}

pub use hbac_common::records::{EpochReport, TrainState};

/// Observers of a training run: per-batch progress and per-epoch reports.
pub trait TrainHooks {
    /// `done` of `total` batches of `epoch` have been trained.
    fn batch(&mut self, _epoch: usize, _done: usize, _total: usize) {}
    /// An epoch finished.
    fn epoch(&mut self, _report: &EpochReport) {}
    /// Whether [`TrainHooks::checkpoint`] should be called (encoding a snapshot costs a copy
    /// of the weights and optimizer state each epoch).
    fn wants_checkpoints(&self) -> bool {
        false
    }
    /// The full training state after an epoch, before that epoch's [`TrainHooks::epoch`]:
    /// a run resumed from it continues exactly as this one does. An error stops training.
    fn checkpoint(&mut self, _snapshot: &EncodedState) -> Result<(), TrainError> {
        Ok(())
    }
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
    let [c, h, w] = b.shape;
    let x = Tensor::from_data(TensorData::new(b.inputs.clone(), [n, c, h, w]), device);
    let y = Tensor::from_data(TensorData::new(b.targets.clone(), [n, N_CLASSES]), device);
    (x, y)
}

fn batches(order: &[usize], size: usize) -> Vec<Vec<usize>> {
    order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
}

/// The full training state after some epochs, encoded on the host (burn named MessagePack,
/// full precision, so a resume is bit-exact): see [`TrainState`] for what each part is.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedState {
    pub state: TrainState,
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
    pub best: Vec<u8>,
}

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
}

/// Encodes a record (weights, optimizer state) to bytes.
pub fn encode<B: Backend, R: Record<B>>(record: R) -> Result<Vec<u8>, TrainError> {
    recorder()
        .record(record, ())
        .map_err(|e| TrainError::Config(format!("cannot encode a training record: {e}")))
}

/// Decodes a record; `what` names it in the error.
pub fn decode<B: Backend, R: Record<B>>(
    bytes: Vec<u8>,
    what: &str,
    device: &B::Device,
) -> Result<R, TrainError> {
    recorder()
        .load(bytes, device)
        .map_err(|e| TrainError::Config(format!("{what}: not a state of this model: {e}")))
}

/// Per block, the batch's stochastic-depth mask (`[n, 1, 1, 1]`: 0 for a dropped sample,
/// 1 / (1 − rate) for a kept one), drawn after the batch's augmentations from the epoch's
/// generator; `None` for blocks with rate 0, which draw nothing (so a run without stochastic
/// depth draws exactly what it drew before it existed).
fn stochastic_depth<B: Backend>(
    rates: &[f64],
    n: usize,
    rng: &mut ChaCha8Rng,
    device: &B::Device,
) -> Vec<Option<Tensor<B, 4>>> {
    rates
        .iter()
        .map(|&rate| {
            (rate > 0.0).then(|| {
                let scale = (1.0 / (1.0 - rate)) as f32;
                let mask: Vec<f32> = (0..n)
                    .map(|_| {
                        if rng.random::<f64>() < rate {
                            0.0
                        } else {
                            scale
                        }
                    })
                    .collect();
                Tensor::from_data(TensorData::new(mask, [n, 1, 1, 1]), device)
            })
        })
        .collect()
}

/// The generator of epoch `epoch`'s shuffle and augmentations: a stream of its own per epoch,
/// so a run resumed at any epoch draws exactly what an uninterrupted run draws.
fn epoch_rng(seed: u64, epoch: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64);
    rng
}

/// Trains `cfg.model` on `train`, validating on `valid` after every epoch; `hooks` see progress,
/// each epoch's full state (when they ask for it) and its report, in that order. The model
/// starts from `resume` when given (a [`EncodedState`] of this configuration: the run continues
/// bit-identically), else from seeded weights with the backbone from `init` (the weights
/// `cfg.pretrained` names). Deterministic for a given seed and backend.
pub fn train<B: TrainBackend>(
    cfg: &TrainConfig,
    train: Arc<WindowSet>,
    valid: Option<Arc<WindowSet>>,
    init: Option<&Pretrained>,
    resume: Option<EncodedState>,
    device: &B::Device,
    hooks: impl TrainHooks,
) -> Result<Trained<B::InnerBackend>, TrainError> {
    if train.is_empty() {
        return Err(TrainError::Config("no training samples".into()));
    }
    cfg.validate().map_err(TrainError::Config)?;
    let mut model: Model<B> = cfg.model.init_seeded(cfg.seed, device);
    if resume.is_none()
        && let Some(weights) = init
    {
        model = weights.apply(model, &cfg.model)?;
    }
    let run = Run {
        cfg,
        train,
        valid,
        device,
    };
    match cfg.optimizer {
        OptimizerKind::Adam => run.epochs(
            model,
            || AdamConfig::new().with_epsilon(1e-7).init::<B, Model<B>>(),
            resume,
            hooks,
        ),
        OptimizerKind::AdamW { weight_decay } => run.epochs(
            model,
            || {
                AdamWConfig::new()
                    .with_epsilon(1e-7)
                    .with_weight_decay(weight_decay as f32)
                    .init::<B, Model<B>>()
            },
            resume,
            hooks,
        ),
    }
}

/// One training run's fixed inputs.
struct Run<'a, B: TrainBackend> {
    cfg: &'a TrainConfig,
    train: Arc<WindowSet>,
    valid: Option<Arc<WindowSet>>,
    device: &'a B::Device,
}

/// The best epoch so far: its score (validation KL, or -inf without validation), index and
/// weights.
type Best<B> = Option<(f64, usize, Model<B>)>;

impl<B: TrainBackend> Run<'_, B> {
    fn epochs<O: Optimizer<Model<B>, B>>(
        &self,
        mut model: Model<B>,
        new_optim: impl Fn() -> O,
        resume: Option<EncodedState>,
        mut hooks: impl TrainHooks,
    ) -> Result<Trained<B::InnerBackend>, TrainError> {
        let (cfg, device) = (self.cfg, self.device);
        let total = cfg.total_epochs();
        let mut optim = new_optim();
        let mut history = Vec::with_capacity(total);
        let mut best: Best<B::InnerBackend> = None;
        // Each epoch draws one sample of every unit (a row, or a recording's rows); stage 2
        // trains on the high-agreement units only.
        let units = self.train.units();
        let stage2_units: Vec<Vec<usize>> = match &cfg.stage2 {
            Some(s) => {
                let rows = self.train.units_with_votes(s.min_votes);
                if rows.is_empty() {
                    return Err(TrainError::Config(format!(
                        "stage 2: none of the {} training rows has at least {} votes",
                        self.train.len(),
                        s.min_votes
                    )));
                }
                rows
            }
            None => Vec::new(),
        };
        if let Some(snap) = resume {
            let st = &snap.state;
            if st.seed != cfg.seed || st.epochs > total || st.history.len() != st.epochs {
                return Err(TrainError::Config(format!(
                    "the saved state (seed {}, {} epochs) does not belong to this run (seed {}, \
                     {total} epochs)",
                    st.seed, st.epochs, cfg.seed
                )));
            }
            model = model.load_record(decode::<B, _>(snap.model, "model.mpk", device)?);
            optim = optim.load_record(decode::<B, _>(snap.optimizer, "optimizer.mpk", device)?);
            if st.epochs > 0 {
                let weights = decode::<B::InnerBackend, _>(snap.best, "best.mpk", device)?;
                let kept = model.valid().load_record(weights);
                let score = st.best_valid_kl.unwrap_or(f64::NEG_INFINITY);
                best = Some((score, st.best_epoch, kept));
            }
            history = snap.state.history;
        }
        let drop_rates = model.backbone.drop_rates(cfg.drop_connect.unwrap_or(0.0));
        for epoch in history.len()..total {
            let stage2 = cfg.stage2.is_some() && epoch >= cfg.epochs;
            if stage2 && epoch == cfg.epochs {
                // Stage 2 starts from stage 1's best weights, with a fresh optimizer; the
                // best epoch of either stage is kept.
                let (_, _, kept) = best.as_ref().expect("stage 1 ran");
                let bytes = encode::<B::InnerBackend, _>(kept.clone().into_record())?;
                model = model.load_record(decode::<B, _>(bytes, "stage 1's best weights", device)?);
                optim = new_optim();
            }
            let start = Instant::now();
            let lr = cfg.lr_at(epoch);
            let mut rng = epoch_rng(cfg.seed, epoch);
            let pool = if stage2 { &stage2_units } else { &units };
            // A unit of one draws nothing: runs without groups draw as they always did.
            let mut order: Vec<usize> = pool
                .iter()
                .map(|u| match u.len() {
                    1 => u[0],
                    n => u[rng.random_range(0..n)],
                })
                .collect();
            order.shuffle(&mut rng);
            let (mut sum, mut seen) = (0.0f64, 0usize);
            let plan = batches(&order, cfg.batch_size);
            let total = plan.len();
            for (done, batch) in
                prefetch(self.train.clone(), plan, cfg.loader_threads, 2).enumerate()
            {
                if hooks.cancelled() {
                    return Err(TrainError::Cancelled);
                }
                let batch = batch?;
                let n = batch.indices.len();
                let (x, y) = to_device::<B>(&batch, device);
                let (x, y) = augment(&cfg.augment, &mut rng, x, y);
                let keep = stochastic_depth::<B>(&drop_rates, n, &mut rng, device);
                let loss = keras_kl(model.forward_keeping(x, Path::Fused, &keep), y);
                let value = loss.clone().into_scalar().elem::<f64>();
                if !value.is_finite() {
                    return Err(TrainError::Diverged { epoch, loss: value });
                }
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = optim.step(lr, model, grads);
                sum += value * n as f64;
                seen += n;
                hooks.batch(epoch, done + 1, total);
            }
            let inner = model.valid();
            let valid_kl = match &self.valid {
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
            history.push(EpochReport {
                epoch,
                lr,
                train_kl: sum / seen.max(1) as f64,
                valid_kl,
                seconds,
                samples_per_second: seen as f64 / seconds.max(1e-9),
                best: improved,
            });
            if hooks.wants_checkpoints() {
                let (score, best_epoch, kept) = best.as_ref().expect("an epoch ran");
                let snapshot = EncodedState {
                    state: TrainState {
                        epochs: epoch + 1,
                        history: history.clone(),
                        best_epoch: *best_epoch,
                        best_valid_kl: score.is_finite().then_some(*score),
                        seed: cfg.seed,
                    },
                    model: encode::<B, _>(model.clone().into_record())?,
                    optimizer: encode::<B, _>(optim.to_record())?,
                    best: encode::<B::InnerBackend, _>(kept.clone().into_record())?,
                };
                hooks.checkpoint(&snapshot)?;
            }
            hooks.epoch(history.last().expect("just pushed"));
        }
        let (_, best_epoch, model) = best.expect("at least one epoch ran");
        Ok(Trained {
            model,
            best_epoch,
            history,
        })
    }
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
    use hbac_common::hms::spectrogram::{FEATURES, Spectrogram, WINDOW};
    use hbac_common::preprocess::Sample;
    use rand::Rng;

    use burn::backend::Flex;

    type B = burn::backend::Autodiff<Flex>;

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
                eeg_sub_id: Some(0),
                patient_id: id,
                spectrogram_id: id,
                offset_rows: 0,
                class: Class::Other,
                target: raw.map(|v| v / total),
                votes: (i % 20) as f32,
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
        let trained = train::<B>(
            &cfg,
            set.clone(),
            None,
            None,
            None,
            &device,
            |r: &EpochReport| {
                first.get_or_insert(r.train_kl);
            },
        )
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
        let run = || {
            train::<B>(
                &cfg,
                set.clone(),
                Some(set.clone()),
                None,
                None,
                &device,
                NoHooks,
            )
        };
        let (a, b) = (run().unwrap(), run().unwrap());
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

    /// Keeps every snapshot; asks to stop once it holds `stop_after`.
    struct Keep {
        snaps: Vec<EncodedState>,
        stop_after: usize,
    }

    impl TrainHooks for &mut Keep {
        fn wants_checkpoints(&self) -> bool {
            true
        }
        fn checkpoint(&mut self, s: &EncodedState) -> Result<(), TrainError> {
            self.snaps.push(s.clone());
            Ok(())
        }
        fn cancelled(&self) -> bool {
            self.snaps.len() >= self.stop_after
        }
    }

    /// Every tensor of a model record (parameters and BatchNorm statistics), in order.
    fn values(record: &[u8], cfg: &TrainConfig) -> Vec<Vec<f32>> {
        use burn::module::{ModuleVisitor, Param};
        struct All(Vec<Vec<f32>>);
        impl ModuleVisitor<Flex> for All {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
                self.0.push(p.val().into_data().to_vec().unwrap());
            }
        }
        let device = Default::default();
        let weights = decode::<Flex, _>(record.to_vec(), "test", &device).unwrap();
        let model: Model<Flex> = cfg.model.init(&device).load_record(weights);
        let mut all = All(Vec::new());
        model.visit(&mut all);
        all.0
    }

    /// What must be equal between two snapshots: the state without its wall-clock figures,
    /// and every value of the weights and of the best weights. (Byte-level records differ in
    /// burn's random BatchNorm-statistics ids; the optimizer moments show in the weights of
    /// every later epoch.)
    fn timeless(s: EncodedState, cfg: &TrainConfig) -> (TrainState, Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let mut state = s.state;
        for r in &mut state.history {
            (r.seconds, r.samples_per_second) = (0.0, 0.0);
        }
        (state, values(&s.model, cfg), values(&s.best, cfg))
    }

    #[test]
    fn a_run_resumed_from_any_epoch_equals_the_uninterrupted_run() {
        let cfg = tiny(Arch::MobileNetV3Large)
            .with_epochs(3)
            .with_batch_size(3)
            .with_augment(AugmentConfig::default());
        resumes_bit_identically(&cfg);
    }

    #[test]
    fn a_two_stage_run_resumed_from_any_epoch_equals_the_uninterrupted_run() {
        // Killed at the stage boundary and inside stage 2 too.
        let cfg = tiny(Arch::MobileNetV3Large)
            .with_epochs(2)
            .with_batch_size(3)
            .with_augment(AugmentConfig::default())
            .with_stage2(Some(Stage2 {
                min_votes: 3.0,
                epochs: 2,
                lr: Some(1e-3),
            }));
        resumes_bit_identically(&cfg);
    }

    fn resumes_bit_identically(cfg: &TrainConfig) {
        let set = Arc::new(random_set(6, 3));
        let device = Default::default();
        let total = cfg.total_epochs();
        let cfg = cfg.clone();
        let run = |resume: Option<EncodedState>, keep: &mut Keep| {
            train::<B>(
                &cfg,
                set.clone(),
                Some(set.clone()),
                None,
                resume,
                &device,
                keep,
            )
        };
        let mut full = Keep {
            snaps: vec![],
            stop_after: usize::MAX,
        };
        let uninterrupted = run(None, &mut full).unwrap();
        assert_eq!(full.snaps.len(), total);
        for k in 1..total {
            // Killed after epoch k (the snapshot is what the worker saved), resumed elsewhere.
            let mut first = Keep {
                snaps: vec![],
                stop_after: k,
            };
            assert!(matches!(run(None, &mut first), Err(TrainError::Cancelled)));
            let saved = first.snaps.pop().unwrap();
            assert_eq!(
                timeless(saved.clone(), &cfg),
                timeless(full.snaps[k - 1].clone(), &cfg)
            );
            let mut rest = Keep {
                snaps: vec![],
                stop_after: usize::MAX,
            };
            let resumed = run(Some(saved), &mut rest).unwrap();
            assert_eq!(rest.snaps.len(), total - k, "only the missing epochs run");
            assert_eq!(
                timeless(rest.snaps.pop().unwrap(), &cfg),
                timeless(full.snaps[total - 1].clone(), &cfg),
                "weights, best weights and history after a resume at epoch {k}"
            );
            assert_eq!(resumed.best_epoch, uninterrupted.best_epoch);
            let kept = |m: Model<Flex>| values(&encode::<Flex, _>(m.into_record()).unwrap(), &cfg);
            assert_eq!(kept(resumed.model), kept(uninterrupted.model.clone()));
        }
        // A state of another run is refused, not trained on.
        let other = cfg.clone().with_seed(7);
        let e = train::<B>(
            &other,
            set.clone(),
            None,
            None,
            Some(full.snaps[0].clone()),
            &device,
            NoHooks,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }

    /// Every trainable tensor of a model record (BatchNorm's running statistics left out).
    fn trainable(record: &[u8], cfg: &TrainConfig) -> Vec<Vec<f32>> {
        use burn::module::{ModuleVisitor, Param};
        struct Trainable(Vec<String>, Vec<Vec<f32>>);
        impl ModuleVisitor<Flex> for Trainable {
            fn enter_module(&mut self, name: &str, _container: &str) {
                self.0.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container: &str) {
                self.0.pop();
            }
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
                if !self.0.last().is_some_and(|n| n.starts_with("running_")) {
                    self.1.push(p.val().into_data().to_vec().unwrap());
                }
            }
        }
        let device = Default::default();
        let weights = decode::<Flex, _>(record.to_vec(), "test", &device).unwrap();
        let model: Model<Flex> = cfg.model.init(&device).load_record(weights);
        let mut t = Trainable(Vec::new(), Vec::new());
        model.visit(&mut t);
        t.1
    }

    #[test]
    fn stage_two_goes_on_from_stage_ones_best_weights_on_the_high_agreement_rows() {
        // Votes 0..19 twice: 10 of the 40 rows have at least 15.
        let set = Arc::new(random_set(40, 4));
        // Validation: the training windows with every target rotated by one class, and
        // BatchNorm statistics that follow training within a few steps. Fitting the training
        // targets moves away from these, so stage 1's best epoch is an early one by
        // construction, not by one CPU's rounding (a random validation set under momentum
        // 0.999 left it to chance: its KL moved by 0.003 in 6 epochs and the last won on some).
        let mut valid = (*set).clone();
        for s in &mut valid.samples {
            s.target.rotate_right(1);
        }
        let valid = Arc::new(valid);
        let device = Default::default();
        let mut one = tiny(Arch::MobileNetV3Large).with_epochs(6);
        one.model = one.model.clone().with_bn_momentum(Some(0.5));
        let two = one.clone().with_stage2(Some(Stage2 {
            min_votes: 15.0,
            epochs: 2,
            lr: Some(1e-9),
        }));
        struct Batches(Keep, std::collections::BTreeMap<usize, usize>);
        impl TrainHooks for &mut Batches {
            fn batch(&mut self, epoch: usize, _done: usize, total: usize) {
                self.1.insert(epoch, total);
            }
            fn wants_checkpoints(&self) -> bool {
                true
            }
            fn checkpoint(&mut self, s: &EncodedState) -> Result<(), TrainError> {
                self.0.snaps.push(s.clone());
                Ok(())
            }
        }
        let run = |cfg: &TrainConfig, hooks: &mut Batches| {
            train::<B>(
                cfg,
                set.clone(),
                Some(valid.clone()),
                None,
                None,
                &device,
                hooks,
            )
            .unwrap()
        };
        let new = || {
            Batches(
                Keep {
                    snaps: vec![],
                    stop_after: usize::MAX,
                },
                Default::default(),
            )
        };
        let (mut h1, mut h2) = (new(), new());
        let single = run(&one, &mut h1);
        let staged = run(&two, &mut h2);
        // Stage 1 is the one-stage run, draw for draw.
        let kl = |h: &[EpochReport]| {
            h.iter()
                .map(|r| (r.train_kl, r.valid_kl))
                .collect::<Vec<_>>()
        };
        assert_eq!(kl(&staged.history[..6]), kl(&single.history));
        // Stage 2: 2 batches of 8 over the 10 rows with >= 15 votes, against 5 over all 40.
        let totals: Vec<usize> = h2.1.values().copied().collect();
        assert_eq!(totals, [5, 5, 5, 5, 5, 5, 2, 2]);
        // Its learning rate: the cosine from --stage2-lr, no warm-up.
        for (e, r) in staged.history.iter().enumerate() {
            assert_eq!(r.lr, two.lr_at(e));
        }
        assert_eq!(staged.history[6].lr, 1e-9);
        // It starts from stage 1's best weights (not its last ones): at a learning rate of
        // 1e-9 its trainable weights stay where stage 1's best left them.
        let best1 = &h2.0.snaps[5].best;
        assert_ne!(
            single.best_epoch,
            5,
            "this case needs stage 1's best epoch to be an earlier one: {:?}",
            kl(&single.history)
        );
        let after = trainable(&h2.0.snaps[6].model, &two);
        let want = trainable(best1, &two);
        let last1 = trainable(&h2.0.snaps[5].model, &two);
        let dist = |a: &[Vec<f32>], b: &[Vec<f32>]| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(dist(&after, &want) < 1e-6, "{}", dist(&after, &want));
        assert!(
            dist(&last1, &want) > 1e-3,
            "stage 1's last and best weights differ"
        );
        // The job keeps the best epoch of either stage.
        let scores: Vec<f64> = staged.history.iter().map(|r| r.valid_kl.unwrap()).collect();
        let argmin = (0..scores.len())
            .min_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        assert_eq!(staged.best_epoch, argmin, "{scores:?}");
    }

    #[test]
    fn grouped_samples_give_one_sample_per_group_and_epoch() {
        let mut set = random_set(16, 2);
        set.groups = (0..8).map(|g| vec![2 * g, 2 * g + 1]).collect();
        struct Totals(Vec<(usize, usize)>);
        impl TrainHooks for &mut Totals {
            fn batch(&mut self, epoch: usize, done: usize, total: usize) {
                if done == total {
                    self.0.push((epoch, total));
                }
            }
        }
        let cfg = tiny(Arch::MobileNetV3Large)
            .with_epochs(3)
            .with_batch_size(4);
        let mut totals = Totals(Vec::new());
        let trained = train::<B>(
            &cfg,
            Arc::new(set),
            None,
            None,
            None,
            &Default::default(),
            &mut totals,
        )
        .unwrap();
        // 8 recordings a epoch in batches of 4, not 16 rows.
        assert_eq!(totals.0, [(0, 2), (1, 2), (2, 2)]);
        assert!(trained.history.iter().all(|r| r.train_kl.is_finite()));
    }

    #[test]
    fn bad_vote_thresholds_and_stage_two_settings_are_refused_by_name() {
        let base = tiny(Arch::MobileNetV3Large);
        let stage2 = |min_votes, epochs, lr| {
            base.clone().with_stage2(Some(Stage2 {
                min_votes,
                epochs,
                lr,
            }))
        };
        for (cfg, field) in [
            (
                base.clone().with_min_votes(Some(f64::NAN)),
                "train.min_votes",
            ),
            (base.clone().with_min_votes(Some(-1.0)), "train.min_votes"),
            (stage2(-2.0, 3, None), "train.stage2.min_votes"),
            (stage2(10.0, 0, None), "train.stage2.epochs"),
            (stage2(10.0, 3, Some(0.0)), "train.stage2.lr"),
            (stage2(10.0, 3, Some(f64::INFINITY)), "train.stage2.lr"),
        ] {
            let e = cfg.validate().unwrap_err();
            assert!(e.starts_with(field), "{field}: {e}");
        }
        assert!(stage2(10.0, 3, Some(1e-4)).validate().is_ok());
        // An order with a stage 2 but no row for it fails before training, saying why.
        let set = Arc::new(random_set(4, 1));
        let e = train::<B>(
            &stage2(50.0, 1, None),
            set,
            None,
            None,
            None,
            &Default::default(),
            NoHooks,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("at least 50 votes"), "{e}");
    }

    /// Orders come over the network: any config that passes `validate` trains without a
    /// panic in the parts its numbers reach (augmentation draws, the schedule), and any that
    /// fails names a field. Random configs, many of them wrong in one or more fields.
    #[test]
    fn validation_stops_every_config_that_could_panic_and_names_the_field() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let wild = |rng: &mut rand_chacha::ChaCha8Rng, good: f64| -> f64 {
            match rng.random_range(0..30) {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => -rng.random_range(0.0..2.0),
                3 => rng.random_range(1.0..3.0),
                4 => 0.0,
                _ => good,
            }
        };
        let (mut passed, mut refused) = (0, 0);
        for _ in 0..2000 {
            let model = ModelConfig::new(Arch::MobileNetV3Large)
                .with_width(wild(&mut rng, 0.25))
                .with_downsample(rng.random_range(0..40))
                .with_bn_momentum(Some(wild(&mut rng, 0.9)))
                .with_bn_epsilon(wild(&mut rng, 1e-3));
            let augment = crate::train::augment::AugmentConfig {
                mixup_prob: wild(&mut rng, 0.5),
                mixup_alpha: wild(&mut rng, 2.0),
                time_cutout_prob: wild(&mut rng, 0.5),
                freq_cutout_prob: wild(&mut rng, 0.5),
                cutout_fraction: (wild(&mut rng, 0.06), wild(&mut rng, 0.1)),
            };
            let cfg = TrainConfig::new(model)
                .with_epochs(rng.random_range(0..4))
                .with_batch_size(rng.random_range(0..4))
                .with_loader_threads(rng.random_range(0..3))
                .with_augment(augment);
            match cfg.validate() {
                Err(e) => {
                    assert!(e.starts_with("train."), "{e}");
                    refused += 1;
                }
                Ok(()) => {
                    passed += 1;
                    let device = Default::default();
                    let x = Tensor::<Flex, 4>::ones([3, 1, 8, 10], &device);
                    let y = Tensor::<Flex, 2>::ones([3, 6], &device);
                    for _ in 0..4 {
                        let _ = crate::train::augment::augment(
                            &cfg.augment,
                            &mut rng,
                            x.clone(),
                            y.clone(),
                        );
                    }
                    let s = cfg.schedule();
                    assert!((0..cfg.epochs).all(|e| s.lr(e).is_finite()));
                }
            }
        }
        assert!(
            passed > 100 && refused > 500,
            "{passed} passed, {refused} refused"
        );
        // The field is named.
        let mut cfg = TrainConfig::new(ModelConfig::new(Arch::EfficientNetV2B2));
        cfg.augment.mixup_alpha = -1.0;
        let e = cfg.validate().unwrap_err();
        assert!(e.contains("train.augment.mixup_alpha"), "{e}");
        cfg.augment.mixup_alpha = 2.0;
        cfg.augment.cutout_fraction = (0.2, 0.1);
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("augment.cutout_fraction")
        );
        cfg.augment.cutout_fraction = (0.06, 0.1);
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn stochastic_depth_follows_keras_rates_masks_and_draws_nothing_at_zero() {
        let device = Default::default();
        let model: Model<Flex> = ModelConfig::new(Arch::EfficientNetV2B2)
            .with_width(0.25)
            .init_seeded(3, &device);
        let rates = model.backbone.drop_rates(0.2);
        let blocks = match &model.backbone {
            crate::model::Backbone::EfficientNetV2(m) => &m.blocks,
            _ => unreachable!(),
        };
        assert_eq!(rates.len(), blocks.len());
        // keras.applications: `blocks = sum(num_repeat)` of the unscaled table, 21, while the
        // 28 blocks built are counted by `b`.
        assert_eq!(blocks.len(), 28);
        let n = 21.0;
        for (b, (rate, block)) in rates.iter().zip(blocks).enumerate() {
            let want = if block.residual {
                0.2 * b as f64 / n
            } else {
                0.0
            };
            assert_eq!(*rate, want, "block {b}");
        }
        assert!(
            rates.iter().filter(|r| **r > 0.0).count() >= 10,
            "{rates:?}"
        );
        let mobilenet: Model<Flex> = ModelConfig::new(Arch::MobileNetV3Large)
            .with_width(0.25)
            .init(&device);
        assert!(mobilenet.backbone.drop_rates(0.2).is_empty());

        // Masks: 0 or 1 / (1 − rate), dropped at the rate; rate 0 draws nothing.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let masks = stochastic_depth::<Flex>(&[0.0, 0.25], 4000, &mut rng, &device);
        assert!(masks[0].is_none());
        let v: Vec<f32> = masks[1].clone().unwrap().into_data().to_vec().unwrap();
        assert!(v.iter().all(|&x| x == 0.0 || x == 1.0 / 0.75));
        let dropped = v.iter().filter(|&&x| x == 0.0).count() as f64 / 4000.0;
        assert!((dropped - 0.25).abs() < 0.03, "{dropped}");
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
        assert!(
            stochastic_depth::<Flex>(&[0.0; 5], 8, &mut a, &device)
                .iter()
                .all(Option::is_none)
        );
        assert_eq!(a.random::<u64>(), b.random::<u64>(), "rate 0 must not draw");

        // In the backbone: all-kept masks of scale 1 change nothing; dropped branches do.
        let x = Tensor::<Flex, 4>::random(
            [2, 3, 64, 48],
            burn::tensor::Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let masks = |v: f32| -> Vec<Option<Tensor<Flex, 4>>> {
            rates
                .iter()
                .map(|_| Some(Tensor::<Flex, 4>::full([2, 1, 1, 1], v, &device)))
                .collect()
        };
        let plain = model.backbone.forward_on(x.clone(), Path::Fused);
        let same = model
            .backbone
            .forward_keeping(x.clone(), Path::Fused, &masks(1.0));
        let scale = plain.clone().abs().max().into_scalar();
        let diff = (plain.clone() - same).abs().max().into_scalar();
        assert!(diff <= 1e-6 * scale, "{diff} of {scale}");
        let dropped = model.backbone.forward_keeping(x, Path::Fused, &masks(0.0));
        let diff = (plain - dropped).abs().max().into_scalar();
        // (An untrained network in inference mode shrinks activations layer by layer: compare
        // relative to the features' size.)
        assert!(
            diff > 0.1 * scale,
            "dropping every residual branch must change the features: {diff} of {scale}"
        );
        // And the logits go through the same path: forward_on = forward_keeping with no masks.
        let x = Tensor::<Flex, 4>::ones([1, 3, 64, 48], &device);
        let a = model.forward_on(x.clone(), Path::Fused).into_data();
        let b = model.forward_keeping(x, Path::Fused, &[]).into_data();
        assert_eq!(a, b);
    }

    #[test]
    fn drop_connect_outside_0_1_is_refused_by_name() {
        // 0.8 would give the last block a rate of 0.8 × 27 / 21 > 1.
        for bad in [1.0, 0.8] {
            let cfg = TrainConfig::new(ModelConfig::new(Arch::EfficientNetV2B2))
                .with_drop_connect(Some(bad));
            let e = cfg.validate().unwrap_err();
            assert!(e.contains("drop_connect"), "{e}");
        }
        assert!(
            TrainConfig::new(ModelConfig::new(Arch::EfficientNetV2B2))
                .with_drop_connect(Some(0.2))
                .validate()
                .is_ok()
        );
    }
}
