//! Building blocks shared by both architectures: convolution + BatchNorm + activation with
//! TensorFlow "same" padding (one fused op, [`crate::ops::conv_bn_act`]), and
//! squeeze-and-excitation.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::module::adaptive_avg_pool2d;

use crate::ops::{self, ConvGeom, FusedOps, conv_bn_act};

/// BatchNorm settings in burn's convention (`running = (1 - momentum) * running + momentum * batch`).
#[derive(Debug, Clone, Copy)]
pub struct BnSpec {
    pub epsilon: f64,
    pub momentum: f64,
}

pub use crate::ops::Act;

/// `Conv2d` (no bias, "same" padding) → `BatchNorm` → activation.
#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
    #[module(skip)]
    pub act: Act,
}

/// Shape of a [`ConvBn`].
#[derive(Debug, Clone, Copy)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    /// `cin` for a depthwise convolution, 1 otherwise.
    pub groups: usize,
    pub act: Act,
}

impl ConvSpec {
    /// A dense convolution.
    pub fn dense(cin: usize, cout: usize, kernel: usize, stride: usize, act: Act) -> Self {
        Self {
            cin,
            cout,
            kernel,
            stride,
            groups: 1,
            act,
        }
    }

    /// A depthwise convolution (one filter per channel).
    pub fn depthwise(channels: usize, kernel: usize, stride: usize, act: Act) -> Self {
        Self {
            cin: channels,
            cout: channels,
            kernel,
            stride,
            groups: channels,
            act,
        }
    }
}

impl<B: Backend> ConvBn<B> {
    /// Builds the layer.
    pub fn new(s: ConvSpec, bn: &BnSpec, device: &B::Device) -> Self {
        let conv = Conv2dConfig::new([s.cin, s.cout], [s.kernel, s.kernel])
            .with_stride([s.stride, s.stride])
            .with_groups(s.groups)
            .with_padding(PaddingConfig2d::Same)
            .with_bias(false)
            .init(device);
        let bn = BatchNormConfig::new(s.cout)
            .with_epsilon(bn.epsilon)
            .with_momentum(bn.momentum)
            .init(device);
        Self {
            conv,
            bn,
            act: s.act,
        }
    }
}

/// How [`ConvBn`] layers run: hbac's fused op, or burn's stock `Conv2d` → `BatchNorm` →
/// activation (the reference the fused op is tested and benchmarked against). Both compute the
/// same function and update the BatchNorm running statistics the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Path {
    #[default]
    Fused,
    Stock,
}

impl std::str::FromStr for Path {
    type Err = String;

    /// `fused` or `stock` (the benchmarks' `--path`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fused" => Ok(Path::Fused),
            "stock" => Ok(Path::Stock),
            other => Err(format!("--path must be fused or stock, not {other:?}")),
        }
    }
}

/// A [`ConvBn`] layer's shape at the input size it runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerShape {
    pub geom: ConvGeom,
    pub cin: usize,
    pub cout: usize,
    pub act: Act,
    /// `[H, W]` of the layer's input.
    pub input_hw: [usize; 2],
}

impl LayerShape {
    /// `[H, W]` of the layer's output.
    pub fn output_hw(&self) -> [usize; 2] {
        self.input_hw.map(|v| v.div_ceil(self.geom.stride))
    }
}

impl<B: Backend> ConvBn<B> {
    /// The layer's shape for an input of `input_hw`.
    pub fn shape(&self, input_hw: [usize; 2]) -> LayerShape {
        let [cout, per_group, _, _] = self.conv.weight.dims();
        let geom = ConvGeom::of(&self.conv);
        LayerShape {
            geom,
            cin: if geom.depthwise { cout } else { per_group },
            cout,
            act: self.act,
            input_hw,
        }
    }
}

impl<B: FusedOps> ConvBn<B> {
    /// # Shapes
    /// - `x`: `[N, cin, H, W]` → `[N, cout, ceil(H / stride), ceil(W / stride)]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.forward_on(x, Path::Fused)
    }

    /// [`ConvBn::forward`] on the given [`Path`].
    pub fn forward_on(&self, x: Tensor<B, 4>, path: Path) -> Tensor<B, 4> {
        match path {
            Path::Fused => conv_bn_act(x, &self.conv, &self.bn, self.act),
            Path::Stock => self.act.apply(self.bn.forward(self.conv.forward(x))),
        }
    }
}

/// Squeeze-and-excitation: global pool → 1×1 conv (bias) → `inner` → 1×1 conv (bias) → `gate`,
/// multiplied back onto the input.
#[derive(Module, Debug)]
pub struct SqueezeExcite<B: Backend> {
    pub reduce: Conv2d<B>,
    pub expand: Conv2d<B>,
    #[module(skip)]
    pub inner: Act,
    #[module(skip)]
    pub gate: Act,
}

impl<B: Backend> SqueezeExcite<B> {
    /// `channels` → `squeeze` → `channels`.
    pub fn new(channels: usize, squeeze: usize, inner: Act, gate: Act, device: &B::Device) -> Self {
        Self {
            reduce: Conv2dConfig::new([channels, squeeze], [1, 1]).init(device),
            expand: Conv2dConfig::new([squeeze, channels], [1, 1]).init(device),
            inner,
            gate,
        }
    }

    /// # Shapes
    /// - `x`: `[N, C, H, W]` → `[N, C, H, W]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, _, _] = x.dims();
        let s = adaptive_avg_pool2d(x.clone(), [1, 1]).reshape([n, c]);
        let s = self.gate.apply(dense(
            &self.expand,
            self.inner.apply(dense(&self.reduce, s)),
        ));
        x * s.reshape([n, c, 1, 1])
    }
}

impl<B: FusedOps> SqueezeExcite<B> {
    /// [`SqueezeExcite::forward`] on the given [`Path`]: the fused path pools, runs both 1×1
    /// convolutions and gates through hbac's ops (burn's matmul and reductions autotune every
    /// new shape on CubeCL, seconds each).
    ///
    /// # Shapes
    /// - `x`: `[N, C, H, W]` → `[N, C, H, W]`
    pub fn forward_on(&self, x: Tensor<B, 4>, path: Path) -> Tensor<B, 4> {
        if path == Path::Stock {
            return self.forward(x);
        }
        let s = ops::plane_mean(x.clone());
        let s = self.inner.apply(fused_dense(&self.reduce, s));
        let s = self.gate.apply(fused_dense(&self.expand, s));
        ops::scale_planes(x, s)
    }
}

/// [`dense`] through [`ops::dense`].
fn fused_dense<B: FusedOps>(conv: &Conv2d<B>, s: Tensor<B, 2>) -> Tensor<B, 2> {
    let [cout, cin, _, _] = conv.weight.dims();
    let device = s.device();
    let b = match &conv.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([cout], &device),
    };
    ops::dense(s, conv.weight.val().reshape([cout, cin]), b)
}

/// A 1×1 convolution with bias over `[N, C, 1, 1]` values, as the matrix product it is
/// (`[N, cin] → [N, cout]`): one GEMM instead of a convolution over single pixels.
fn dense<B: Backend>(conv: &Conv2d<B>, s: Tensor<B, 2>) -> Tensor<B, 2> {
    let [cout, cin, _, _] = conv.weight.dims();
    let y = s.matmul(conv.weight.val().reshape([cout, cin]).transpose());
    match &conv.bias {
        Some(b) => y + b.val().unsqueeze_dim(0),
        None => y,
    }
}

/// The inverted-residual family both backbones are made of: optional expansion conv, optional
/// depthwise conv, optional squeeze-excite, projection conv, and a residual when shapes allow.
/// MBConv has all parts; Fused-MBConv has no depthwise conv (its expansion is a k×k conv).
#[derive(Module, Debug)]
pub struct InvertedResidual<B: Backend> {
    pub expand: Option<ConvBn<B>>,
    pub depthwise: Option<ConvBn<B>>,
    pub se: Option<SqueezeExcite<B>>,
    pub project: ConvBn<B>,
    #[module(skip)]
    pub residual: bool,
}

impl<B: Backend> InvertedResidual<B> {
    /// The conv layers in order, in `out`, for an input of `input_hw`; returns the output size.
    pub fn layer_shapes(&self, input_hw: [usize; 2], out: &mut Vec<LayerShape>) -> [usize; 2] {
        let mut hw = input_hw;
        let layers = self.expand.iter().chain(&self.depthwise);
        for layer in layers.chain(std::iter::once(&self.project)) {
            let shape = layer.shape(hw);
            hw = shape.output_hw();
            out.push(shape);
        }
        hw
    }
}

impl<B: FusedOps> InvertedResidual<B> {
    /// # Shapes
    /// - `x`: `[N, cin, H, W]` → `[N, cout, H / stride, W / stride]`
    pub fn forward_on(&self, x: Tensor<B, 4>, path: Path) -> Tensor<B, 4> {
        self.forward_keeping(x, path, None)
    }

    /// [`InvertedResidual::forward_on`] with stochastic depth: on a residual block, the branch
    /// is multiplied by `keep` (`[N, 1, 1, 1]`: 0 for a dropped sample, 1 / (1 − rate) for a
    /// kept one) before the shortcut is added, as Keras' `Dropout(rate, noise_shape=(None, 1,
    /// 1, 1))` does in EfficientNetV2's blocks.
    pub fn forward_keeping(
        &self,
        x: Tensor<B, 4>,
        path: Path,
        keep: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let mut y = match &self.expand {
            Some(e) => e.forward_on(x.clone(), path),
            None => x.clone(),
        };
        if let Some(d) = &self.depthwise {
            y = d.forward_on(y, path);
        }
        if let Some(se) = &self.se {
            y = se.forward_on(y, path);
        }
        y = self.project.forward_on(y, path);
        match (self.residual, keep) {
            (true, Some(keep)) => y * keep + x,
            (true, None) => y + x,
            (false, _) => y,
        }
    }
}

/// Keras' `_depth` / `round_filters`: `v` rounded to a multiple of `divisor`, never below
/// `divisor` nor more than 10 % under `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new = ((v + d / 2.0) as usize / divisor * divisor).max(divisor);
    if (new as f64) < 0.9 * v {
        new += divisor;
    }
    new
}
