//! The training recipe flags → the worker's [`Recipe`] (presets, defaults and validation live
//! there).

use hbac_common::folds::KFold;
use hbac_common::preprocess::{LabelMode, SampleSelection};
use hbac_worker::train::recipe::{Preset, Recipe};
use hbac_worker::train::trainer::{OptimizerKind, Stage2};

use crate::cli::{OptimizerArg, RecipeArgs};

impl From<&RecipeArgs> for Recipe {
    fn from(a: &RecipeArgs) -> Recipe {
        Recipe {
            preset: if a.quick {
                Preset::Quick
            } else {
                Preset::Reference
            },
            kfold: KFold {
                k: a.k,
                shuffle: true,
                seed: Some(a.folds_seed),
            },
            epochs: a.epochs,
            batch_size: a.batch_size,
            optimizer: match a.optimizer {
                OptimizerArg::Adam => OptimizerKind::Adam,
                OptimizerArg::Adamw => OptimizerKind::AdamW {
                    weight_decay: a.weight_decay,
                },
            },
            lr_max: a.lr_max,
            seed: a.seed,
            mixup_prob: a.mixup_prob,
            cutout_prob: a.cutout_prob,
            samples: a.samples.or(a.all_rows.then_some(SampleSelection::AllRows)),
            labels: if a.one_hot {
                LabelMode::OneHot
            } else {
                LabelMode::Votes
            },
            width: a.width,
            downsample: a.downsample,
            bn_momentum: a.bn_momentum,
            init: a.init,
            drop_connect: a.drop_connect,
            input: a.input,
            min_votes: a.min_votes,
            stage2: a
                .stage2_min_votes
                .zip(a.stage2_epochs)
                .map(|(min_votes, epochs)| Stage2 {
                    min_votes,
                    epochs,
                    lr: a.stage2_lr,
                }),
            loader_threads: a.loader_threads,
            pretrained: a.pretrained.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use hbac_worker::model::Arch;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        recipe: RecipeArgs,
    }

    fn recipe(args: &[&str]) -> Recipe {
        let flags = Flags::try_parse_from(std::iter::once("x").chain(args.iter().copied()));
        Recipe::from(&flags.unwrap().recipe)
    }

    #[test]
    fn flags_reach_the_recipe() {
        // Comma-separated --pretrained entries are one list.
        let r = recipe(&[
            "--pretrained",
            "mobilenetv3-large=s3://w/m.safetensors,efficientnetv2-b2=/w/e.pth?v=1",
            "--quick",
            "--all-rows",
            "--stage2-min-votes",
            "10",
            "--stage2-epochs",
            "4",
        ]);
        assert_eq!(r.pretrained.len(), 2);
        assert_eq!(r.preset, Preset::Quick);
        assert_eq!(r.samples, Some(SampleSelection::AllRows));
        let c = r.train_config(Arch::EfficientNetV2B2).unwrap();
        assert_eq!(c.pretrained.as_deref(), Some("/w/e.pth?v=1"));
        assert_eq!(c.stage2.map(|s| (s.min_votes, s.epochs)), Some((10.0, 4)));
        assert_eq!(
            recipe(&[]).selection(),
            SampleSelection::FirstPerSpectrogram
        );
    }
}
