//! A training recipe as a user states it — a preset and the knobs they set — turned into the
//! validated [`TrainConfig`] each architecture trains with. The `reference` preset is the
//! KerasCV starter's recipe; `quick` is a CPU-sized model and schedule. A knob set explicitly
//! always wins over the preset.

use hbac_common::folds::KFold;
use hbac_common::preprocess::{Input, LabelMode, SampleSelection};

use crate::model::{Arch, InitScheme, ModelConfig};
use crate::train::augment::AugmentConfig;
use crate::train::schedule::LrSchedule;
use crate::train::trainer::{OptimizerKind, Stage2, TrainConfig};

/// The defaults a recipe starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// The reference: full-size models at full resolution, batch 64, 13 epochs, the KerasCV
    /// starter's learning rates, one sample per spectrogram.
    #[default]
    Reference,
    /// A CPU-sized run: width 0.25, input pooled by 8, batch 16, 12 epochs, peak LR 3e-3,
    /// BatchNorm momentum 0.9, every labelled row.
    Quick,
}

/// What a user asked for; every `None` comes from the preset.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub preset: Preset,
    /// The scikit-learn split the folds come from.
    pub kfold: KFold,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub optimizer: OptimizerKind,
    pub lr_max: Option<f64>,
    pub seed: u64,
    pub mixup_prob: f64,
    pub cutout_prob: f64,
    pub samples: Option<SampleSelection>,
    pub labels: LabelMode,
    pub width: Option<f64>,
    pub downsample: Option<usize>,
    pub bn_momentum: Option<f64>,
    pub init: Option<InitScheme>,
    /// EfficientNetV2's stochastic depth rate; 0 is none.
    pub drop_connect: f64,
    pub input: Input,
    pub min_votes: Option<f64>,
    pub stage2: Option<Stage2>,
    pub loader_threads: usize,
    /// ImageNet weights: `ARCH=URL` entries for one architecture each, and at most one plain
    /// URL for every architecture without its own.
    pub pretrained: Vec<String>,
}

/// A recipe that cannot be trained; the message names the flag or field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecipeError(pub String);

impl Recipe {
    /// The training samples: the asked-for selection, else the preset's.
    pub fn selection(&self) -> SampleSelection {
        match (self.samples, self.preset) {
            (Some(s), _) => s,
            (None, Preset::Quick) => SampleSelection::AllRows,
            (None, Preset::Reference) => SampleSelection::FirstPerSpectrogram,
        }
    }

    /// The full, validated training configuration for `arch`.
    pub fn train_config(&self, arch: Arch) -> Result<TrainConfig, RecipeError> {
        let q = self.preset == Preset::Quick;
        let epochs = self.epochs.unwrap_or(if q { 12 } else { 13 });
        let batch_size = self.batch_size.unwrap_or(if q { 16 } else { 64 });
        let width = self.width.unwrap_or(if q { 0.25 } else { 1.0 });
        let downsample = self.downsample.unwrap_or(if q { 8 } else { 1 });
        let bn_momentum = self.bn_momentum.or(q.then_some(0.9));
        let model = ModelConfig::new(arch)
            .with_width(width)
            .with_downsample(downsample)
            .with_bn_momentum(bn_momentum)
            .with_init(Some(self.init.unwrap_or(default_init(arch))));
        let mut lr = LrSchedule::reference(batch_size, epochs);
        if let Some(max) = self.lr_max.or(q.then_some(3e-3)) {
            lr.max = max;
        }
        let augment = AugmentConfig {
            mixup_prob: self.mixup_prob,
            time_cutout_prob: self.cutout_prob,
            freq_cutout_prob: self.cutout_prob,
            ..AugmentConfig::default()
        };
        let config = TrainConfig::new(model)
            .with_epochs(epochs)
            .with_batch_size(batch_size)
            .with_optimizer(self.optimizer)
            .with_lr(Some(lr))
            .with_augment(augment)
            .with_seed(self.seed)
            .with_loader_threads(self.loader_threads)
            .with_pretrained(self.pretrained_for(arch)?)
            .with_drop_connect((self.drop_connect > 0.0).then_some(self.drop_connect))
            .with_min_votes(self.min_votes)
            .with_input(self.input)
            .with_stage2(self.stage2);
        // The checks every worker applies to an order, named by the config's fields.
        config
            .validate()
            .map_err(|e| RecipeError(format!("invalid training recipe for {arch}: {e}")))?;
        Ok(config)
    }

    /// The `pretrained` file for `arch`: its own `ARCH=URL` entry, else the one plain URL.
    fn pretrained_for(&self, arch: Arch) -> Result<Option<String>, RecipeError> {
        let mut plain = Vec::new();
        for entry in &self.pretrained {
            match entry.split_once('=') {
                Some((name, url)) if name.parse::<Arch>().is_ok() => {
                    if name.parse::<Arch>() == Ok(arch) {
                        return Ok(Some(url.to_string()));
                    }
                }
                _ => plain.push(entry),
            }
        }
        if plain.len() > 1 {
            return Err(RecipeError(format!(
                "--pretrained has {} files without an architecture; name each one as ARCH=URL",
                plain.len()
            )));
        }
        Ok(plain.pop().cloned())
    }
}

/// The initialisation an architecture trains from when `--init` is not given: the scheme the
/// quality benchmark (bench/quality.sh, figures in bench/RESULTS.md) found better for it.
pub fn default_init(arch: Arch) -> InitScheme {
    match arch {
        Arch::MobileNetV3Large | Arch::EfficientNetV2B2 => InitScheme::Torch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(pretrained: &[&str]) -> Recipe {
        Recipe {
            preset: Preset::Reference,
            kfold: KFold {
                k: 5,
                shuffle: true,
                seed: Some(42),
            },
            epochs: None,
            batch_size: None,
            optimizer: OptimizerKind::Adam,
            lr_max: None,
            seed: 42,
            mixup_prob: 0.5,
            cutout_prob: 0.5,
            samples: None,
            labels: LabelMode::Votes,
            width: None,
            downsample: None,
            bn_momentum: None,
            init: None,
            drop_connect: 0.0,
            input: Input::Kaggle,
            min_votes: None,
            stage2: None,
            loader_threads: 2,
            pretrained: pretrained.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn pretrained_files_are_picked_per_architecture() {
        let both = recipe(&[
            "mobilenetv3-large=s3://w/m.safetensors",
            "efficientnetv2-b2=/w/e.pth?v=1",
        ]);
        let m = both.pretrained_for(Arch::MobileNetV3Large).unwrap();
        assert_eq!(m.as_deref(), Some("s3://w/m.safetensors"));
        let e = both.pretrained_for(Arch::EfficientNetV2B2).unwrap();
        assert_eq!(e.as_deref(), Some("/w/e.pth?v=1"));
        // A plain URL (even one holding '=') serves every architecture without its own.
        let plain = recipe(&["s3://w/x.pth?v=2", "efficientnetv2-b2=e"]);
        let m = plain.pretrained_for(Arch::MobileNetV3Large).unwrap();
        assert_eq!(m.as_deref(), Some("s3://w/x.pth?v=2"));
        let e = plain.pretrained_for(Arch::EfficientNetV2B2).unwrap();
        assert_eq!(e.as_deref(), Some("e"));
        assert_eq!(
            recipe(&[]).pretrained_for(Arch::EfficientNetV2B2).unwrap(),
            None
        );
        let err = recipe(&["a.pth", "b.pth"]).pretrained_for(Arch::EfficientNetV2B2);
        assert!(err.unwrap_err().to_string().contains("name each one"));
    }

    #[test]
    fn the_quick_preset_fills_only_what_is_unset() {
        let mut r = recipe(&[]);
        r.preset = Preset::Quick;
        r.epochs = Some(3);
        let c = r.train_config(Arch::MobileNetV3Large).unwrap();
        assert_eq!((c.epochs, c.batch_size), (3, 16));
        assert_eq!((c.model.width, c.model.downsample), (0.25, 8));
        assert_eq!(c.lr.unwrap().max, 3e-3);
        assert_eq!(r.selection(), SampleSelection::AllRows);
        let reference = recipe(&[]).train_config(Arch::MobileNetV3Large).unwrap();
        assert_eq!((reference.epochs, reference.batch_size), (13, 64));
        assert_eq!(reference.model.width, 1.0);
        assert_eq!(
            recipe(&[]).selection(),
            SampleSelection::FirstPerSpectrogram
        );
    }

    #[test]
    fn an_invalid_recipe_names_the_architecture_and_field() {
        let mut r = recipe(&[]);
        r.mixup_prob = 1.5;
        let e = r
            .train_config(Arch::EfficientNetV2B2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("efficientnetv2-b2") && e.contains("mixup"),
            "{e}"
        );
    }
}
