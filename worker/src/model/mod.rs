//! The two architectures, as KerasCV builds them, backend-generic:
//! [`mobilenetv3`] (MobileNetV3-Large) and [`efficientnetv2`] (EfficientNetV2-B2), each a
//! backbone followed by global average pooling and a dense head with six outputs.
//!
//! Parameter counts (BatchNorm running statistics included) equal KerasCV's: MobileNetV3-Large
//! 3,002,118 (2,977,718 trainable), EfficientNetV2-B2 8,777,828 (8,695,540 trainable); see
//! [`summary`]. `width < 1` gives reduced models for fast tests.

pub mod efficientnetv2;
pub mod export;
pub mod init;
pub mod layers;
pub mod mobilenetv3;
pub mod pretrained;
pub mod summary;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::{adaptive_avg_pool2d, avg_pool2d};
use serde::{Deserialize, Serialize};

use self::efficientnetv2::EfficientNetV2;
pub use self::init::InitScheme;
use self::layers::{BnSpec, LayerShape, Path};
use self::mobilenetv3::MobileNetV3;
use crate::ops::FusedOps;

/// Which backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// KerasCV `mobilenet_v3_large` (the original project's model).
    #[serde(rename = "mobilenetv3-large")]
    MobileNetV3Large,
    /// KerasCV `efficientnetv2_b2` (the KerasCV starter's model).
    #[serde(rename = "efficientnetv2-b2")]
    EfficientNetV2B2,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 2] = [Arch::MobileNetV3Large, Arch::EfficientNetV2B2];

    /// The command-line / file name of the architecture.
    pub fn name(self) -> &'static str {
        match self {
            Arch::MobileNetV3Large => "mobilenetv3-large",
            Arch::EfficientNetV2B2 => "efficientnetv2-b2",
        }
    }

    /// timm's name for the same network with the TF-ported ImageNet weights.
    pub fn timm_name(self) -> &'static str {
        match self {
            Arch::MobileNetV3Large => "tf_mobilenetv3_large_100",
            Arch::EfficientNetV2B2 => "tf_efficientnetv2_b2",
        }
    }

    /// Keras' BatchNorm momentum for this architecture (`running = m * running + (1-m) * batch`).
    pub fn keras_bn_momentum(self) -> f64 {
        match self {
            Arch::MobileNetV3Large => 0.999,
            Arch::EfficientNetV2B2 => 0.9,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown architecture {s:?}; expected mobilenetv3-large or efficientnetv2-b2"
                )
            })
    }
}

/// A model: architecture, head size, width multiplier and BatchNorm settings.
#[derive(Config, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Outputs of the dense head.
    #[config(default = 6)]
    pub num_classes: usize,
    /// Channel multiplier (1.0 = the published model; < 1 for fast tests).
    #[config(default = 1.0)]
    pub width: f64,
    /// Multiply the input by 1/255 first, as the KerasCV backbones do.
    #[config(default = true)]
    pub rescale: bool,
    /// Keras-convention BatchNorm momentum; `None` = the architecture's Keras default.
    #[config(default = "None")]
    pub bn_momentum: Option<f64>,
    /// BatchNorm epsilon (Keras: 1e-3).
    #[config(default = 1e-3)]
    pub bn_epsilon: f64,
    /// Average-pool the input by this factor first (1 = full resolution; > 1 for fast tests).
    #[config(default = 1)]
    pub downsample: usize,
    /// How [`ModelConfig::init_seeded`] draws the initial weights; `None` is
    /// [`InitScheme::Torch`] (and what configs written before the choice existed hold).
    #[config(default = "None")]
    pub init: Option<InitScheme>,
}

/// The backbone of either architecture.
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    MobileNetV3(MobileNetV3<B>),
    EfficientNetV2(EfficientNetV2<B>),
}

impl<B: FusedOps> Backbone<B> {
    /// # Shapes
    /// - `x`: `[N, 3, H, W]` → `[N, C, H / 32, W / 32]` (rounded up)
    pub fn forward_on(&self, x: Tensor<B, 4>, path: Path) -> Tensor<B, 4> {
        self.forward_keeping(x, path, &[])
    }

    /// [`Backbone::forward_on`] with stochastic-depth masks per block (EfficientNetV2 only;
    /// see [`Backbone::drop_rates`]).
    pub fn forward_keeping(
        &self,
        x: Tensor<B, 4>,
        path: Path,
        keep: &[Option<Tensor<B, 4>>],
    ) -> Tensor<B, 4> {
        match self {
            Backbone::MobileNetV3(m) => m.forward_on(x, path),
            Backbone::EfficientNetV2(m) => m.forward_keeping(x, path, keep),
        }
    }
}

impl<B: Backend> Backbone<B> {
    /// Each block's stochastic-depth rate for a `drop_connect` rate, as Keras' EfficientNetV2
    /// spreads it; empty for MobileNetV3, which KerasCV builds without stochastic depth.
    pub fn drop_rates(&self, drop_connect: f64) -> Vec<f64> {
        match self {
            Backbone::MobileNetV3(_) => Vec::new(),
            Backbone::EfficientNetV2(m) => m.drop_rates(drop_connect),
        }
    }
}

impl<B: Backend> Backbone<B> {
    /// Every conv layer in order with its shape, for a backbone input of `input_hw`.
    pub fn layer_shapes(&self, input_hw: [usize; 2]) -> Vec<LayerShape> {
        match self {
            Backbone::MobileNetV3(m) => m.layer_shapes(input_hw),
            Backbone::EfficientNetV2(m) => m.layer_shapes(input_hw),
        }
    }

    /// Channels of the last feature map.
    pub fn out_channels(&self) -> usize {
        match self {
            Backbone::MobileNetV3(m) => m.out_channels(),
            Backbone::EfficientNetV2(m) => m.out_channels(),
        }
    }
}

/// Backbone, global average pool, dense head.
#[derive(Module, Debug)]
pub struct Model<B: Backend> {
    pub backbone: Backbone<B>,
    pub head: Linear<B>,
    #[module(skip)]
    pub rescale: bool,
    #[module(skip)]
    pub downsample: usize,
}

impl ModelConfig {
    /// Builds the model with weights drawn from `seed` alone under the config's scheme
    /// ([`init::seeded`]): the same on every backend, whatever else the process draws.
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> Model<B> {
        init::seeded(
            self.init(device),
            seed,
            self.init.unwrap_or_default(),
            self.arch,
        )
    }

    /// Builds the model with fresh weights from the backend's own generator on `device` (for
    /// models whose weights are loaded next; training starts from [`ModelConfig::init_seeded`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Model<B> {
        let keras_momentum = self.bn_momentum.unwrap_or(self.arch.keras_bn_momentum());
        let bn = BnSpec {
            epsilon: self.bn_epsilon,
            momentum: 1.0 - keras_momentum,
        };
        let backbone = match self.arch {
            Arch::MobileNetV3Large => {
                Backbone::MobileNetV3(MobileNetV3::new(self.width, &bn, device))
            }
            Arch::EfficientNetV2B2 => {
                Backbone::EfficientNetV2(EfficientNetV2::b2(self.width, &bn, device))
            }
        };
        let head = LinearConfig::new(backbone.out_channels(), self.num_classes).init(device);
        Model {
            backbone,
            head,
            rescale: self.rescale,
            downsample: self.downsample.max(1),
        }
    }
}

impl<B: Backend> Model<B> {
    /// Every conv layer of the backbone in order with its shape, for a model input of
    /// `input_hw` (after the model's own downsampling).
    pub fn layer_shapes(&self, input_hw: [usize; 2]) -> Vec<LayerShape> {
        let d = self.downsample;
        self.backbone.layer_shapes(input_hw.map(|v| v / d))
    }
}

impl<B: FusedOps> Model<B> {
    /// Pooled backbone features.
    ///
    /// # Shapes
    /// - `x`: `[N, 3, H, W]` → `[N, C]`
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.features_on(x, Path::Fused)
    }

    /// [`Model::features`] with the conv layers on the given [`Path`].
    pub fn features_on(&self, x: Tensor<B, 4>, path: Path) -> Tensor<B, 2> {
        self.features_keeping(x, path, &[])
    }

    fn features_keeping(
        &self,
        x: Tensor<B, 4>,
        path: Path,
        keep: &[Option<Tensor<B, 4>>],
    ) -> Tensor<B, 2> {
        let x = if self.rescale {
            x.mul_scalar(1.0 / 255.0)
        } else {
            x
        };
        let x = match self.downsample {
            1 => x,
            d => avg_pool2d(x, [d, d], [d, d], [0, 0], true, false),
        };
        let f = self.backbone.forward_keeping(x, path, keep);
        match path {
            Path::Fused => crate::ops::plane_mean(f),
            Path::Stock => adaptive_avg_pool2d(f, [1, 1]).flatten(1, 3),
        }
    }

    /// Class logits (softmax gives the predicted distribution).
    ///
    /// # Shapes
    /// - `x`: `[N, 3, H, W]` → `[N, num_classes]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.forward_on(x, Path::Fused)
    }

    /// [`Model::forward`] with the conv layers on the given [`Path`].
    pub fn forward_on(&self, x: Tensor<B, 4>, path: Path) -> Tensor<B, 2> {
        self.forward_keeping(x, path, &[])
    }

    /// [`Model::forward_on`] in training with stochastic depth: `keep[b]` is backbone block
    /// `b`'s per-sample mask (`[N, 1, 1, 1]`; see [`Backbone::drop_rates`]).
    pub fn forward_keeping(
        &self,
        x: Tensor<B, 4>,
        path: Path,
        keep: &[Option<Tensor<B, 4>>],
    ) -> Tensor<B, 2> {
        let f = self.features_keeping(x, path, keep);
        if path == Path::Stock {
            return self.head.forward(f);
        }
        // burn's Linear holds its weight as [in, out]; hbac's dense takes [out, in].
        let w = self.head.weight.val().transpose();
        let b = match &self.head.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([w.dims()[0]], &f.device()),
        };
        crate::ops::dense(f, w, b)
    }
}
