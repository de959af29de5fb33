//! The training recipe flags → the worker's `TrainConfig`, the folds and the sample choice;
//! `--quick` swaps in a CPU-sized model and schedule where no flag says otherwise.

use anyhow::{Result, ensure};
use hbac_common::folds::KFold;
use hbac_common::preprocess::{LabelMode, SampleSelection};
use hbac_worker::model::{Arch, InitScheme, ModelConfig};
use hbac_worker::train::augment::AugmentConfig;
use hbac_worker::train::schedule::LrSchedule;
use hbac_worker::train::trainer::{OptimizerKind, Stage2, TrainConfig};

use crate::cli::{OptimizerArg, RecipeArgs};

impl RecipeArgs {
    /// The scikit-learn split the folds come from.
    pub fn kfold(&self) -> KFold {
        KFold {
            k: self.k,
            shuffle: true,
            seed: Some(self.folds_seed),
        }
    }

    pub fn selection(&self) -> SampleSelection {
        if let Some(s) = self.samples {
            s
        } else if self.all_rows || self.quick {
            SampleSelection::AllRows
        } else {
            SampleSelection::FirstPerSpectrogram
        }
    }

    pub fn labels(&self) -> LabelMode {
        if self.one_hot {
            LabelMode::OneHot
        } else {
            LabelMode::Votes
        }
    }

    /// The full training configuration for `arch`.
    pub fn train_config(&self, arch: Arch) -> Result<TrainConfig> {
        let q = self.quick;
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
            .with_optimizer(match self.optimizer {
                OptimizerArg::Adam => OptimizerKind::Adam,
                OptimizerArg::Adamw => OptimizerKind::AdamW {
                    weight_decay: self.weight_decay,
                },
            })
            .with_lr(Some(lr))
            .with_augment(augment)
            .with_seed(self.seed)
            .with_loader_threads(self.loader_threads)
            .with_pretrained(self.pretrained_for(arch)?)
            .with_drop_connect((self.drop_connect > 0.0).then_some(self.drop_connect))
            .with_min_votes(self.min_votes)
            .with_input(self.input)
            .with_stage2(self.stage2_min_votes.zip(self.stage2_epochs).map(
                |(min_votes, epochs)| Stage2 {
                    min_votes,
                    epochs,
                    lr: self.stage2_lr,
                },
            ));
        // The checks every worker applies to an order, named by the config's fields.
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid training recipe for {arch}: {e}"))?;
        Ok(config)
    }

    /// The `--pretrained` file for `arch`: its own `ARCH=URL` entry, else the one plain URL.
    fn pretrained_for(&self, arch: Arch) -> Result<Option<String>> {
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
        ensure!(
            plain.len() <= 1,
            "--pretrained has {} files without an architecture; name each one as ARCH=URL",
            plain.len()
        );
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
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        recipe: RecipeArgs,
    }

    fn pretrained(args: &[&str], arch: Arch) -> Result<Option<String>> {
        let flags = Flags::try_parse_from(std::iter::once("x").chain(args.iter().copied()))?;
        flags.recipe.pretrained_for(arch)
    }

    #[test]
    fn pretrained_files_are_picked_per_architecture() {
        let both = [
            "--pretrained",
            "mobilenetv3-large=s3://w/m.safetensors,efficientnetv2-b2=/w/e.pth?v=1",
        ];
        let m = pretrained(&both, Arch::MobileNetV3Large).unwrap();
        assert_eq!(m.as_deref(), Some("s3://w/m.safetensors"));
        let e = pretrained(&both, Arch::EfficientNetV2B2).unwrap();
        assert_eq!(e.as_deref(), Some("/w/e.pth?v=1"));
        // A plain URL (even one holding '=') serves every architecture without its own.
        let plain = [
            "--pretrained",
            "s3://w/x.pth?v=2",
            "--pretrained",
            "efficientnetv2-b2=e",
        ];
        let m = pretrained(&plain, Arch::MobileNetV3Large).unwrap();
        assert_eq!(m.as_deref(), Some("s3://w/x.pth?v=2"));
        let e = pretrained(&plain, Arch::EfficientNetV2B2).unwrap();
        assert_eq!(e.as_deref(), Some("e"));
        assert_eq!(pretrained(&[], Arch::EfficientNetV2B2).unwrap(), None);
        let err = pretrained(&["--pretrained", "a.pth,b.pth"], Arch::EfficientNetV2B2);
        assert!(err.unwrap_err().to_string().contains("name each one"));
    }
}
