//! Seeded initial weights, drawn on the host from hbac's own generator.
//!
//! burn's initialisers draw from one process-wide generator per backend (`Backend::seed`): any
//! other random tensor made in the same process while a model is built — a second training in
//! `hbac local`, a test running beside it — shifts every weight after it, and each backend
//! draws different numbers for the same seed. [`seeded`] redraws every convolution and dense
//! weight and bias from a ChaCha8 stream of the run's seed, in module order. The same seed
//! therefore gives the same initial model on every backend and whatever else the process does.
//! BatchNorm parameters and statistics are constants and are left as they are.
//!
//! Two schemes ([`InitScheme`]):
//! - `torch`: burn's and PyTorch's default, `U(±1/√fan_in)` for every weight and bias
//!   (Kaiming-uniform with gain 1/√3);
//! - `keras`: the initialisers the reference's Keras models are built with, per layer kind and
//!   architecture, biases zero. KerasCV's MobileNetV3 leaves every `Conv2D`, `DepthwiseConv2D` and
//!   the classifier's `Dense` on Keras' default, glorot-uniform `U(±√(6 / (fan_in + fan_out)))`.
//!   EfficientNetV2 (KerasCV and `keras.applications` alike) draws its convolutions, depthwise
//!   and squeeze-excite convolutions from `VarianceScaling(2.0, "fan_out", "truncated_normal")` —
//!   a normal truncated at two standard deviations, scaled so that the variance is
//!   `2 / fan_out` — and its classifier from glorot-uniform.
//!
//! Keras' fans of a kernel `(kh, kw, in, out)` are `in·kh·kw` and `out·kh·kw`; for a depthwise
//! kernel `(kh, kw, channels, 1)` that makes `fan_in = channels·kh·kw` and `fan_out = kh·kw`
//! (a wide depthwise layer gets a small glorot bound). burn's layouts are `[out, in/groups, kh,
//! kw]` for convolutions (a depthwise one is `[channels, 1, kh, kw]`) and `[in, out]` for dense
//! layers.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::Arch;

/// How initial weights are drawn (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitScheme {
    /// `U(±1/√fan_in)` for every weight and bias (PyTorch's and burn's default).
    #[default]
    Torch,
    /// The reference Keras models' own initialisers, per architecture and layer kind.
    Keras,
}

impl InitScheme {
    /// Every scheme.
    pub const ALL: [InitScheme; 2] = [InitScheme::Torch, InitScheme::Keras];

    /// The command-line / config name.
    pub fn name(self) -> &'static str {
        match self {
            InitScheme::Torch => "torch",
            InitScheme::Keras => "keras",
        }
    }
}

impl std::fmt::Display for InitScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for InitScheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        InitScheme::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown initialisation {s:?}; expected torch or keras"))
    }
}

/// The kind of a parameter, read from its owner and its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A convolution weight (stem, expansion, projection, squeeze-excite, head conv).
    Conv,
    /// A depthwise convolution weight (`[channels, 1, kh, kw]`, `kh·kw > 1`).
    Depthwise,
    /// A dense weight.
    Dense,
    /// The bias of the weight drawn before it.
    Bias,
}

impl LayerKind {
    /// The kind of the parameter `field` of the module type `owner` (as burn's mapper names
    /// them), of shape `dims`; `None` for parameters that keep their values (BatchNorm).
    pub fn of(owner: &str, field: &str, dims: &[usize]) -> Option<LayerKind> {
        match (owner, field) {
            ("Struct:Conv2d", "weight") if dims[1] == 1 && dims[2] * dims[3] > 1 => {
                Some(LayerKind::Depthwise)
            }
            ("Struct:Conv2d", "weight") => Some(LayerKind::Conv),
            ("Struct:Linear", "weight") => Some(LayerKind::Dense),
            ("Struct:Conv2d" | "Struct:Linear", "bias") => Some(LayerKind::Bias),
            _ => None,
        }
    }

    /// Keras' `(fan_in, fan_out)` of a weight of this kind and burn shape `dims`.
    pub fn keras_fans(self, dims: &[usize]) -> (usize, usize) {
        match self {
            LayerKind::Conv => {
                let k = dims[2] * dims[3];
                (dims[1] * k, dims[0] * k)
            }
            LayerKind::Depthwise => {
                let k = dims[2] * dims[3];
                (dims[0] * k, k)
            }
            LayerKind::Dense => (dims[0], dims[1]),
            LayerKind::Bias => (dims[0], dims[0]),
        }
    }

    /// PyTorch's (and burn's) fan-in of a weight of this kind and burn shape `dims`: the
    /// inputs one output sees (`in/groups·kh·kw` for a convolution).
    pub fn torch_fan_in(self, dims: &[usize]) -> usize {
        match self {
            LayerKind::Conv | LayerKind::Depthwise => dims[1..].iter().product(),
            LayerKind::Dense => dims[0],
            LayerKind::Bias => dims[0],
        }
    }
}

/// A distribution weights are drawn from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Draw {
    /// Uniform on `(-bound, bound)`.
    Uniform { bound: f64 },
    /// Normal with standard deviation `std`, redrawn outside `±2·std` (Keras' truncated normal).
    TruncatedNormal { std: f64 },
    /// Every value zero.
    Zero,
}

impl Draw {
    /// The distribution of a parameter of `kind` and burn shape `dims` under `scheme` for
    /// `arch`; `weight_fan_in` is the PyTorch fan-in of the last weight drawn (a bias follows
    /// its weight).
    pub fn of(
        scheme: InitScheme,
        arch: Arch,
        kind: LayerKind,
        dims: &[usize],
        weight_fan_in: usize,
    ) -> Draw {
        let (fan_in, fan_out) = kind.keras_fans(dims);
        let glorot = || Draw::Uniform {
            bound: (6.0 / (fan_in + fan_out).max(1) as f64).sqrt(),
        };
        match (scheme, kind) {
            (InitScheme::Torch, LayerKind::Bias) => Draw::Uniform {
                bound: 1.0 / (weight_fan_in.max(1) as f64).sqrt(),
            },
            (InitScheme::Torch, _) => Draw::Uniform {
                bound: 1.0 / (kind.torch_fan_in(dims).max(1) as f64).sqrt(),
            },
            (InitScheme::Keras, LayerKind::Bias) => Draw::Zero,
            (InitScheme::Keras, LayerKind::Dense) => glorot(),
            (InitScheme::Keras, LayerKind::Conv | LayerKind::Depthwise) => match arch {
                Arch::MobileNetV3Large => glorot(),
                // VarianceScaling(2.0, fan_out, truncated_normal): Keras divides the standard
                // deviation by that of a unit normal truncated at ±2, so the variance is 2/fan_out.
                Arch::EfficientNetV2B2 => Draw::TruncatedNormal {
                    std: (2.0 / fan_out.max(1) as f64).sqrt() / 0.879_625_661_034_239_8,
                },
            },
        }
    }

    /// `n` values from `rng`.
    fn sample(self, rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        match self {
            Draw::Uniform { bound } => (0..n)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect(),
            Draw::TruncatedNormal { std } => (0..n)
                .map(|_| {
                    loop {
                        let z: f64 = rng.sample(StandardNormal);
                        if z.abs() <= 2.0 {
                            break (z * std) as f32;
                        }
                    }
                })
                .collect(),
            Draw::Zero => vec![0.0; n],
        }
    }
}

/// `module` (a layer or a model of `arch`) with every `Conv2d` and `Linear` weight and bias
/// redrawn from `seed` under `scheme`.
pub fn seeded<B: Backend, M: Module<B>>(module: M, seed: u64, scheme: InitScheme, arch: Arch) -> M {
    module.map(&mut Redraw {
        rng: ChaCha8Rng::seed_from_u64(seed),
        owners: Vec::new(),
        fan_in: 1,
        scheme,
        arch,
    })
}

/// The mapper: `owners` is the stack of (field, owning struct) that `enter_module` reports.
struct Redraw {
    rng: ChaCha8Rng,
    owners: Vec<(String, String)>,
    /// The fan-in of the last weight drawn: a layer's bias follows its weight.
    fan_in: usize,
    scheme: InitScheme,
    arch: Arch,
}

impl<B: Backend> ModuleMapper<B> for Redraw {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.owners
            .push((name.to_owned(), container_type.to_owned()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.owners.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let (field, owner) = self
            .owners
            .last()
            .map_or(("", ""), |(f, o)| (f.as_str(), o.as_str()));
        let shape = old.shape();
        let dims = shape.to_vec();
        let value = match LayerKind::of(owner, field, &dims) {
            None => old,
            Some(kind) => {
                let draw = Draw::of(self.scheme, self.arch, kind, &dims, self.fan_in);
                if kind != LayerKind::Bias {
                    self.fan_in = kind.torch_fan_in(&dims).max(1);
                }
                let values = draw.sample(&mut self.rng, shape.num_elements());
                let grad = old.is_require_grad();
                Tensor::from_data(TensorData::new(values, shape), &old.device())
                    .set_require_grad(grad)
            }
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, ModelConfig};
    use burn::backend::Flex;
    use burn::module::ModuleVisitor;

    /// Every float parameter's values, in module order.
    fn params<M: Module<Flex>>(m: &M) -> Vec<Vec<f32>> {
        struct All(Vec<Vec<f32>>);
        impl ModuleVisitor<Flex> for All {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
                self.0.push(p.val().into_data().to_vec().unwrap());
            }
        }
        let mut all = All(Vec::new());
        m.visit(&mut all);
        all.0
    }

    #[test]
    fn the_seed_alone_decides_the_weights() {
        let cfg = ModelConfig::new(Arch::EfficientNetV2B2).with_width(0.25);
        let device = Default::default();
        // The backend's own generator in different states: the weights must not care.
        <Flex as Backend>::seed(&device, 1);
        let a = params(&cfg.init_seeded::<Flex>(7, &device));
        let _ = Tensor::<Flex, 1>::random([5], burn::tensor::Distribution::Default, &device);
        let b = params(&cfg.init_seeded::<Flex>(7, &device));
        let c = params(&cfg.init_seeded::<Flex>(8, &device));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn weights_follow_burns_default_distribution() {
        let device = Default::default();
        let layer = burn::nn::conv::Conv2dConfig::new([8, 16], [3, 3]).init::<Flex>(&device);
        let layer = seeded(layer, 3, InitScheme::Torch, Arch::MobileNetV3Large);
        let w: Vec<f32> = layer.weight.val().into_data().to_vec().unwrap();
        let b: Vec<f32> = layer.bias.unwrap().val().into_data().to_vec().unwrap();
        let bound = 1.0 / 72f32.sqrt(); // fan-in 8 · 3 · 3
        assert!(w.iter().chain(&b).all(|v| v.abs() <= bound));
        // Uniform on (-bound, bound): variance bound² / 3.
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.1, "{var}");
        let dense = burn::nn::LinearConfig::new(100, 6).init::<Flex>(&device);
        let dense = seeded(dense, 3, InitScheme::Torch, Arch::MobileNetV3Large);
        let w: Vec<f32> = dense.weight.val().into_data().to_vec().unwrap();
        assert!(w.iter().all(|v| v.abs() <= 0.1) && w.iter().any(|v| v.abs() > 0.08));
        // BatchNorm constants are untouched.
        let bn = burn::nn::BatchNormConfig::new(4).init::<Flex>(&device);
        let bn = seeded(bn, 3, InitScheme::Keras, Arch::EfficientNetV2B2);
        let gamma: Vec<f32> = bn.gamma.val().into_data().to_vec().unwrap();
        assert_eq!(gamma, vec![1.0; 4]);
    }

    fn values<const D: usize>(p: &Param<Tensor<Flex, D>>) -> Vec<f32> {
        p.val().into_data().to_vec().unwrap()
    }

    /// Mean of squares (the variance of a zero-mean draw).
    fn var(v: &[f32]) -> f64 {
        v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64
    }

    /// `v` lies within `±bound`, reaches near it, and has variance `expect` within 10 %.
    fn check(v: &[f32], bound: f64, expect: f64, what: &str) {
        let max = v.iter().map(|x| x.abs() as f64).fold(0.0, f64::max);
        assert!(max <= bound * (1.0 + 1e-6), "{what}: {max} beyond {bound}");
        assert!(max > 0.9 * bound, "{what}: {max} never near {bound}");
        let var = var(v);
        assert!(
            (var / expect - 1.0).abs() < 0.1,
            "{what}: variance {var}, expected {expect}"
        );
    }

    #[test]
    fn keras_weights_follow_keras_initialisers_per_layer_kind() {
        use burn::nn::conv::Conv2dConfig;
        let device = Default::default();
        let conv = |c: [usize; 2], k: usize, groups: usize, bias: bool| {
            Conv2dConfig::new(c, [k, k])
                .with_groups(groups)
                .with_bias(bias)
                .init::<Flex>(&device)
        };
        // MobileNetV3 (KerasCV): glorot-uniform everywhere, U(±√(6 / (fan_in + fan_out))).
        let m = Arch::MobileNetV3Large;
        let c = seeded(conv([32, 96], 3, 1, false), 1, InitScheme::Keras, m);
        let bound = (6.0f64 / (32.0 * 9.0 + 96.0 * 9.0)).sqrt();
        check(&values(&c.weight), bound, bound * bound / 3.0, "conv");
        // Depthwise kernel (3, 3, 240, 1): fan_in 240·9, fan_out 9.
        let d = seeded(conv([240, 240], 3, 240, false), 1, InitScheme::Keras, m);
        let bound = (6.0f64 / (240.0 * 9.0 + 9.0)).sqrt();
        check(&values(&d.weight), bound, bound * bound / 3.0, "depthwise");
        // Squeeze-excite: a 1×1 convolution with a bias, which starts at zero.
        let se = seeded(conv([480, 120], 1, 1, true), 1, InitScheme::Keras, m);
        let bound = (6.0f64 / 600.0).sqrt();
        check(
            &values(&se.weight),
            bound,
            bound * bound / 3.0,
            "squeeze-excite",
        );
        assert!(values(se.bias.as_ref().unwrap()).iter().all(|v| *v == 0.0));
        let head = burn::nn::LinearConfig::new(1280, 6).init::<Flex>(&device);
        let head = seeded(head, 1, InitScheme::Keras, m);
        let bound = (6.0f64 / 1286.0).sqrt();
        check(&values(&head.weight), bound, bound * bound / 3.0, "head");
        assert!(
            values(head.bias.as_ref().unwrap())
                .iter()
                .all(|v| *v == 0.0)
        );

        // EfficientNetV2: truncated normal at ±2σ with variance 2 / fan_out; glorot head.
        let e = Arch::EfficientNetV2B2;
        let sigma = |fan_out: f64| (2.0 / fan_out).sqrt() / 0.879_625_661_034_239_8;
        let c = seeded(conv([32, 128], 3, 1, false), 1, InitScheme::Keras, e);
        check(
            &values(&c.weight),
            2.0 * sigma(1152.0),
            2.0 / 1152.0,
            "conv",
        );
        let d = seeded(conv([384, 384], 3, 384, false), 1, InitScheme::Keras, e);
        check(&values(&d.weight), 2.0 * sigma(9.0), 2.0 / 9.0, "depthwise");
        let se = seeded(conv([24, 384], 1, 1, true), 1, InitScheme::Keras, e);
        check(
            &values(&se.weight),
            2.0 * sigma(384.0),
            2.0 / 384.0,
            "squeeze-excite",
        );
        assert!(values(se.bias.as_ref().unwrap()).iter().all(|v| *v == 0.0));
        let head = burn::nn::LinearConfig::new(1408, 6).init::<Flex>(&device);
        let head = seeded(head, 1, InitScheme::Keras, e);
        let bound = (6.0f64 / 1414.0).sqrt();
        check(&values(&head.weight), bound, bound * bound / 3.0, "head");

        // The torch scheme on the same depthwise layer: PyTorch's fan-in is 1·3·3.
        let d = seeded(conv([240, 240], 3, 240, false), 1, InitScheme::Torch, m);
        check(&values(&d.weight), 1.0 / 3.0, 1.0 / 27.0, "torch depthwise");
    }

    /// Every parameter of a whole model, by kind, against its scheme's draw.
    #[test]
    fn every_layer_of_both_models_is_drawn_by_its_kind() {
        struct Walk {
            owners: Vec<(String, String)>,
            seen: Vec<(LayerKind, Vec<usize>, Vec<f32>)>,
        }
        impl ModuleVisitor<Flex> for Walk {
            fn enter_module(&mut self, name: &str, container_type: &str) {
                self.owners.push((name.into(), container_type.into()));
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.owners.pop();
            }
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
                let (field, owner) = self.owners.last().cloned().unwrap_or_default();
                let dims = p.val().shape().to_vec();
                if let Some(kind) = LayerKind::of(&owner, &field, &dims) {
                    self.seen.push((kind, dims, values(p)));
                }
            }
        }
        let device = Default::default();
        for arch in Arch::ALL {
            let cfg = ModelConfig::new(arch)
                .with_width(0.5)
                .with_init(Some(InitScheme::Keras));
            let mut walk = Walk {
                owners: Vec::new(),
                seen: Vec::new(),
            };
            cfg.init_seeded::<Flex>(5, &device).visit(&mut walk);
            let mut kinds = std::collections::BTreeMap::new();
            for (kind, dims, v) in &walk.seen {
                *kinds.entry(format!("{kind:?}")).or_insert(0) += 1;
                let max = v.iter().map(|x| x.abs() as f64).fold(0.0, f64::max);
                match Draw::of(InitScheme::Keras, arch, *kind, dims, 1) {
                    Draw::Zero => assert_eq!(max, 0.0, "{arch} {kind:?} {dims:?}"),
                    Draw::Uniform { bound } => assert!(max <= bound, "{arch} {dims:?}"),
                    Draw::TruncatedNormal { std } => assert!(max <= 2.0 * std, "{arch} {dims:?}"),
                }
            }
            // Stem, expansions, projections and squeeze-excite; depthwise; the head; biases.
            for kind in ["Conv", "Depthwise", "Dense", "Bias"] {
                assert!(
                    kinds.get(kind).copied().unwrap_or(0) > 0,
                    "{arch}: {kinds:?}"
                );
            }
        }
    }

    #[test]
    fn the_scheme_changes_the_weights_and_torch_is_the_default() {
        let device = Default::default();
        let cfg = ModelConfig::new(Arch::MobileNetV3Large).with_width(0.25);
        assert_eq!(cfg.init, None);
        let torch = params(&cfg.init_seeded::<Flex>(7, &device));
        let explicit = cfg.clone().with_init(Some(InitScheme::Torch));
        assert_eq!(torch, params(&explicit.init_seeded::<Flex>(7, &device)));
        let keras = params(
            &cfg.clone()
                .with_init(Some(InitScheme::Keras))
                .init_seeded::<Flex>(7, &device),
        );
        assert_eq!(torch.len(), keras.len());
        assert_ne!(torch, keras);
        // A config written before the field existed reads as torch.
        let mut json: serde_json::Value = serde_json::to_value(&cfg).unwrap();
        json.as_object_mut().unwrap().remove("init");
        let old: ModelConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.init, None);
        assert_eq!("keras".parse::<InitScheme>(), Ok(InitScheme::Keras));
        assert!(
            "glorot"
                .parse::<InitScheme>()
                .unwrap_err()
                .contains("torch or keras")
        );
    }
}
