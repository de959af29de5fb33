//! hbac's own compute ops: convolution (pointwise 1×1 as GEMM, depthwise k×k, dense k×k by
//! im2col + GEMM, all with TensorFlow "same" padding) fused with BatchNorm and the activation,
//! forward and backward, behind burn's backend-extension mechanism.
//!
//! burn 0.21's stock convolutions have no fast backward on the CPU (the input gradient is a
//! transposed convolution, grouped convolutions loop over groups) and take naive kernels for
//! depthwise convolutions on CubeCL, and BatchNorm is eight tensor ops. Both architectures are
//! mostly depthwise + pointwise convolutions followed by BatchNorm and an activation, so the
//! models call one fused op per [`ConvBn`](crate::model::layers::ConvBn) layer:
//!
//! * [`Kernels`] — the primitive kernels (conv forward, input and weight gradients; BatchNorm +
//!   activation forward and backward), one implementation per device family: [`cpu`] for
//!   burn's flex backend, `cube` for CubeCL (CUDA, wgpu);
//! * [`FusedOps`] — what the models call: conv → BatchNorm → activation as one op. Plain
//!   backends run the kernels in sequence; `Autodiff<B>` records one graph node whose backward
//!   runs the gradient kernels ([`autodiff`]), keeping only the layer's input and its conv
//!   output for the backward pass;
//! * [`conv_bn_act`] — the layer-level entry point over burn's own `Conv2d` / `BatchNorm`
//!   modules, so parameters, records, checkpoints and weight import are unchanged.
//!
//! Every kernel is tested against burn's stock ops (values and every gradient) on each shape the
//! two architectures use (`tests` below).

mod autodiff;
pub mod cpu;
#[cfg(feature = "cube")]
pub mod cube;
mod geom;
pub mod profile;
#[cfg(test)]
pub(crate) mod tests;

use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::{hard_sigmoid, hard_swish, relu, sigmoid, silu};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

pub use geom::{ConvGeom, ConvPlan};

/// Activations used by the two architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Act {
    Identity,
    Relu,
    HardSwish,
    /// Keras' swish = SiLU.
    Swish,
    /// Keras MobileNetV3's `relu6(x + 3) / 6`.
    HardSigmoid,
    Sigmoid,
}

impl Act {
    /// Applies the activation elementwise with burn's stock ops.
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Act::Identity => x,
            Act::Relu => relu(x),
            Act::HardSwish => hard_swish(x),
            Act::Swish => silu(x),
            Act::HardSigmoid => hard_sigmoid(x, 1.0 / 6.0, 0.5),
            Act::Sigmoid => sigmoid(x),
        }
    }

    /// The activation of one value (the kernels' scalar definition).
    #[inline(always)]
    pub fn eval(self, z: f32) -> f32 {
        match self {
            Act::Identity => z,
            Act::Relu => z.max(0.0),
            Act::HardSwish => z * (z * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
            Act::Swish => z * sigmoid_f32(z),
            Act::HardSigmoid => (z * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
            Act::Sigmoid => sigmoid_f32(z),
        }
    }

    /// The derivative of the activation at `z`.
    #[inline(always)]
    pub fn grad(self, z: f32) -> f32 {
        match self {
            Act::Identity => 1.0,
            Act::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Act::HardSwish => {
                if z <= -3.0 {
                    0.0
                } else if z >= 3.0 {
                    1.0
                } else {
                    z * (1.0 / 3.0) + 0.5
                }
            }
            Act::Swish => {
                let s = sigmoid_f32(z);
                s * (1.0 + z * (1.0 - s))
            }
            Act::HardSigmoid => {
                if z > -3.0 && z < 3.0 {
                    1.0 / 6.0
                } else {
                    0.0
                }
            }
            Act::Sigmoid => {
                let s = sigmoid_f32(z);
                s * (1.0 - s)
            }
        }
    }
}

#[inline(always)]
fn sigmoid_f32(z: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-z))
}

/// `e^x` without branches or library calls, so loops over it vectorise: `x = n·ln 2 + r`
/// with `|r| ≤ ln 2 / 2`, a degree-6 Taylor polynomial for `e^r` (relative error < 2e-7) and
/// `2^n` built from its exponent bits. Inputs are clamped to `[-87.3, 88.3]`, where `e^x` is
/// a normal `f32`.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The primitive kernels of [`FusedOps`], implemented per device family. Tensors are NCHW,
/// weights `[cout, cin / groups, k, k]` as burn's `Conv2d` holds them, per-channel vectors
/// `[C]`; every kernel runs in `f32`.
pub trait Kernels: Backend {
    /// Convolution with "same" padding.
    ///
    /// # Shapes
    /// - `x`: `[N, cin, H, W]`, `w`: `[cout, cin / groups, k, k]` → `[N, cout, ceil(H / s), ceil(W / s)]`
    fn conv_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        geom: ConvGeom,
    ) -> FloatTensor<Self>;

    /// Gradient of the convolution with respect to its input of spatial size `input_hw`.
    ///
    /// # Shapes
    /// - `dy`: `[N, cout, Ho, Wo]`, `w`: `[cout, cin / groups, k, k]` → `[N, cin, H, W]`
    fn conv_backward_input(
        dy: FloatTensor<Self>,
        w: FloatTensor<Self>,
        geom: ConvGeom,
        input_hw: [usize; 2],
    ) -> FloatTensor<Self>;

    /// Gradient of the convolution with respect to its weight.
    ///
    /// # Shapes
    /// - `x`: `[N, cin, H, W]`, `dy`: `[N, cout, Ho, Wo]` → `[cout, cin / groups, k, k]`
    fn conv_backward_weight(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        geom: ConvGeom,
    ) -> FloatTensor<Self>;

    /// BatchNorm with the batch's statistics, then the activation: returns the output and the
    /// batch mean and (biased) variance per channel.
    ///
    /// # Shapes
    /// - `c`: `[N, C, H, W]`, `gamma`, `beta`: `[C]` → (`[N, C, H, W]`, `[C]`, `[C]`)
    fn bn_act_forward(
        c: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients of [`Kernels::bn_act_forward`]: (`dc`, `dgamma`, `dbeta`).
    #[allow(clippy::too_many_arguments)]
    fn bn_act_backward(
        dy: FloatTensor<Self>,
        c: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `act(scale · c + shift)` per channel (BatchNorm with running statistics, folded).
    fn affine_act_forward(
        c: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        act: Act,
    ) -> FloatTensor<Self>;

    /// Gradients of [`Kernels::affine_act_forward`]: (`dc`, `dscale`, `dshift`).
    fn affine_act_backward(
        dy: FloatTensor<Self>,
        c: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `x · wᵀ + b`: a 1×1 convolution with bias over single pixels (squeeze-excite) or a
    /// dense layer (the head), as one GEMM.
    ///
    /// # Shapes
    /// - `x`: `[N, cin]`, `w`: `[cout, cin]`, `b`: `[cout]` → `[N, cout]`
    fn dense_forward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Gradients of [`Kernels::dense_forward`]: (`dx`, `dw`, `db`).
    fn dense_backward(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The mean of each plane (global average pooling).
    ///
    /// # Shapes
    /// - `x`: `[N, C, H, W]` → `[N, C]`
    fn plane_mean(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradient of [`Kernels::plane_mean`]: each plane of `hw` filled with `dy / (H·W)`.
    ///
    /// # Shapes
    /// - `dy`: `[N, C]` → `[N, C, H, W]`
    fn plane_mean_backward(dy: FloatTensor<Self>, hw: [usize; 2]) -> FloatTensor<Self>;

    /// Each plane of `x` times its own factor (the squeeze-excite gate).
    ///
    /// # Shapes
    /// - `x`: `[N, C, H, W]`, `s`: `[N, C]` → `[N, C, H, W]`
    fn scale_planes(x: FloatTensor<Self>, s: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradients of [`Kernels::scale_planes`]: (`dx = dy · s`, `ds = Σ_plane dy · x`).
    fn scale_planes_backward(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        s: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// What the models call: conv → BatchNorm → activation as one op, on plain backends (the
/// kernels in sequence) and on `Autodiff<B>` (one graph node with a fused backward).
pub trait FusedOps: Backend {
    /// Training mode: BatchNorm with the batch's statistics. Returns the output (tracked) and
    /// the batch mean and variance (not tracked) for the running statistics.
    #[allow(clippy::type_complexity)]
    fn conv_bn_act(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        geom: ConvGeom,
        epsilon: f64,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Inference mode: BatchNorm folded into a per-channel `scale` and `shift`.
    fn conv_affine_act(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        geom: ConvGeom,
        act: Act,
    ) -> FloatTensor<Self>;

    /// [`Kernels::dense_forward`], differentiable.
    fn dense(x: FloatTensor<Self>, w: FloatTensor<Self>, b: FloatTensor<Self>)
    -> FloatTensor<Self>;

    /// [`Kernels::plane_mean`], differentiable.
    fn plane_mean(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// [`Kernels::scale_planes`], differentiable.
    fn scale_planes(x: FloatTensor<Self>, s: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl<B: Kernels> FusedOps for B {
    fn conv_bn_act(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        geom: ConvGeom,
        epsilon: f64,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        B::bn_act_forward(B::conv_forward(x, w, geom), gamma, beta, epsilon, act)
    }

    fn conv_affine_act(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        geom: ConvGeom,
        act: Act,
    ) -> FloatTensor<Self> {
        B::affine_act_forward(B::conv_forward(x, w, geom), scale, shift, act)
    }

    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        B::dense_forward(x, w, b)
    }

    fn plane_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <B as Kernels>::plane_mean(x)
    }

    fn scale_planes(x: FloatTensor<Self>, s: FloatTensor<Self>) -> FloatTensor<Self> {
        <B as Kernels>::scale_planes(x, s)
    }
}

/// A backend the models train on: autodiff over a backend with hbac's kernels.
pub trait TrainBackend: AutodiffBackend<InnerBackend: FusedOps> + FusedOps {}

impl<B: AutodiffBackend<InnerBackend: FusedOps> + FusedOps> TrainBackend for B {}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `x · wᵀ + b` through [`FusedOps::dense`]; `w` is `[cout, cin]` (or a 1×1 conv's
/// `[cout, cin, 1, 1]`).
///
/// # Shapes
/// - `x`: `[N, cin]` → `[N, cout]`
pub fn dense<B: FusedOps>(x: Tensor<B, 2>, w: Tensor<B, 2>, b: Tensor<B, 1>) -> Tensor<B, 2> {
    float(B::dense(prim(x), prim(w), prim(b)))
}

/// Global average pooling through [`FusedOps::plane_mean`].
///
/// # Shapes
/// - `x`: `[N, C, H, W]` → `[N, C]`
pub fn plane_mean<B: FusedOps>(x: Tensor<B, 4>) -> Tensor<B, 2> {
    float(<B as FusedOps>::plane_mean(prim(x)))
}

/// Each plane of `x` times its factor in `s`, through [`FusedOps::scale_planes`].
///
/// # Shapes
/// - `x`: `[N, C, H, W]`, `s`: `[N, C]` → `[N, C, H, W]`
pub fn scale_planes<B: FusedOps>(x: Tensor<B, 4>, s: Tensor<B, 2>) -> Tensor<B, 4> {
    float(<B as FusedOps>::scale_planes(prim(x), prim(s)))
}

/// A `Conv2d` (no bias, "same" padding, dense or depthwise) → `BatchNorm` → `act` layer through
/// [`FusedOps`]: with autodiff, BatchNorm uses the batch's statistics and updates its running
/// statistics exactly as burn's `BatchNorm::forward` does; without, the running statistics.
///
/// # Shapes
/// - `x`: `[N, cin, H, W]` → `[N, cout, ceil(H / stride), ceil(W / stride)]`
pub fn conv_bn_act<B: FusedOps>(
    x: Tensor<B, 4>,
    conv: &Conv2d<B>,
    bn: &BatchNorm<B>,
    act: Act,
) -> Tensor<B, 4> {
    let geom = ConvGeom::of(conv);
    let w = prim(conv.weight.val());
    if B::ad_enabled(&x.device()) {
        let (y, mean, var) = B::conv_bn_act(
            prim(x),
            w,
            prim(bn.gamma.val()),
            prim(bn.beta.val()),
            geom,
            bn.epsilon,
            act,
        );
        let (mean, var): (Tensor<B, 1>, Tensor<B, 1>) = (float(mean), float(var));
        let m = bn.momentum;
        let running_mean = bn.running_mean.value_sync();
        let running_var = bn.running_var.value_sync();
        let device = running_mean.device();
        bn.running_mean.update(
            running_mean
                .mul_scalar(1.0 - m)
                .add(mean.detach().to_device(&device).mul_scalar(m))
                .detach(),
        );
        bn.running_var.update(
            running_var
                .mul_scalar(1.0 - m)
                .add(var.detach().to_device(&device).mul_scalar(m))
                .detach(),
        );
        float(y)
    } else {
        let device = x.device();
        let scale = bn.gamma.val().div(
            bn.running_var
                .value()
                .to_device(&device)
                .add_scalar(bn.epsilon)
                .sqrt(),
        );
        let shift = bn.beta.val().sub(
            bn.running_mean
                .value()
                .to_device(&device)
                .mul(scale.clone()),
        );
        float(B::conv_affine_act(
            prim(x),
            w,
            prim(scale),
            prim(shift),
            geom,
            act,
        ))
    }
}
