//! Convolution geometry: kernel, stride, dense or depthwise, and TensorFlow "same" padding
//! resolved against an input size (the output is `ceil(size / stride)`; the padding is split
//! with the extra row/column at the bottom/right, as TensorFlow and burn's `Same` do).

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;

/// A square convolution with "same" padding, no bias and no dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    pub kernel: usize,
    pub stride: usize,
    /// One filter per channel (`groups = channels`); otherwise dense (`groups = 1`).
    pub depthwise: bool,
}

impl ConvGeom {
    /// The geometry of a burn `Conv2d` built by the models.
    ///
    /// # Panics
    /// If the layer is not one [`FusedOps`](super::FusedOps) runs: non-square kernel or stride,
    /// dilation, a bias, padding other than `Same`, or groups other than 1 or the channels.
    /// The models only build such layers; this guards against a future one that is not.
    pub fn of<B: Backend>(conv: &Conv2d<B>) -> Self {
        let [cout, cin_per_group, _, _] = conv.weight.dims();
        let [kh, kw] = conv.kernel_size;
        let [sh, sw] = conv.stride;
        assert!(
            kh == kw
                && sh == sw
                && conv.dilation == [1, 1]
                && conv.bias.is_none()
                && matches!(conv.padding, PaddingConfig2d::Same)
                && (conv.groups == 1 || (cin_per_group == 1 && conv.groups == cout)),
            "fused conv: unsupported layer (kernel {:?}, stride {:?}, dilation {:?}, groups {}, bias {}, padding {:?})",
            conv.kernel_size,
            conv.stride,
            conv.dilation,
            conv.groups,
            conv.bias.is_some(),
            conv.padding
        );
        Self {
            kernel: kh,
            stride: sh,
            depthwise: conv.groups > 1,
        }
    }

    /// A dense convolution.
    pub fn dense(kernel: usize, stride: usize) -> Self {
        Self {
            kernel,
            stride,
            depthwise: false,
        }
    }

    /// A depthwise convolution.
    pub fn depthwise(kernel: usize, stride: usize) -> Self {
        Self {
            kernel,
            stride,
            depthwise: true,
        }
    }

    /// A short name: "pointwise", "depthwise 3x3 s2", "dense 3x3 s1".
    pub fn name(&self) -> String {
        if self.is_pointwise() {
            return "pointwise".into();
        }
        let kind = if self.depthwise { "depthwise" } else { "dense" };
        format!("{kind} {k}x{k} s{}", self.stride, k = self.kernel)
    }

    /// Whether this is a 1×1 stride-1 dense convolution (a GEMM over channels).
    pub fn is_pointwise(&self) -> bool {
        !self.depthwise && self.kernel == 1 && self.stride == 1
    }

    /// Resolves the geometry for an input `[n, cin, h, w]` and `cout` output channels.
    pub fn plan(&self, [n, cin, h, w]: [usize; 4], cout: usize) -> ConvPlan {
        let (ho, pad_top) = same(h, self.kernel, self.stride);
        let (wo, pad_left) = same(w, self.kernel, self.stride);
        ConvPlan {
            geom: *self,
            n,
            cin,
            cout,
            h,
            w,
            ho,
            wo,
            pad_top,
            pad_left,
        }
    }
}

/// Output size and leading padding of TensorFlow "same" padding.
fn same(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = if out > 0 {
        ((out - 1) * stride + kernel).saturating_sub(size)
    } else {
        0
    };
    (out, total / 2)
}

/// A [`ConvGeom`] resolved against an input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvPlan {
    pub geom: ConvGeom,
    pub n: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    pub pad_top: usize,
    pub pad_left: usize,
}

impl ConvPlan {
    /// Elements of one input plane.
    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }

    /// Elements of one output plane.
    pub fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    /// The weight's shape.
    pub fn weight_shape(&self) -> [usize; 4] {
        let k = self.geom.kernel;
        let per_group = if self.geom.depthwise { 1 } else { self.cin };
        [self.cout, per_group, k, k]
    }

    /// The output's shape.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.cout, self.ho, self.wo]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // TensorFlow: out = ceil(in / s), total = max((out - 1) s + k - in, 0), top = total / 2.
        assert_eq!(same(400, 3, 2), (200, 0)); // total 1: the extra row goes to the bottom
        assert_eq!(same(300, 3, 1), (300, 1));
        assert_eq!(same(25, 5, 2), (13, 2));
        assert_eq!(same(13, 5, 2), (7, 2));
        assert_eq!(same(7, 3, 2), (4, 1));
        assert_eq!(same(1, 3, 1), (1, 1));
        assert_eq!(same(1, 5, 2), (1, 2));
    }
}
