//! EfficientNetV2-B2 as Keras/KerasCV builds it (width 1.1, depth 1.2, swish): a 3×3
//! stride-2 stem, three Fused-MBConv stages, three MBConv stages with squeeze-excite, and a
//! 1×1 conv to 1408 channels.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::ops::FusedOps;

use super::layers::{
    Act, BnSpec, ConvBn, ConvSpec, InvertedResidual, LayerShape, Path, SqueezeExcite,
    make_divisible,
};

/// One stage before scaling: fused?, expansion, output channels, repeats, stride, SE ratio.
struct Stage(bool, usize, usize, usize, usize, f64);

/// Keras' `efficientnetv2-b*` stage table (kernel 3 everywhere).
const B_STAGES: [Stage; 6] = [
    Stage(true, 1, 16, 1, 1, 0.0),
    Stage(true, 4, 32, 2, 2, 0.0),
    Stage(true, 4, 48, 2, 2, 0.0),
    Stage(false, 4, 96, 3, 2, 0.25),
    Stage(false, 6, 112, 5, 1, 0.25),
    Stage(false, 6, 192, 8, 2, 0.25),
];

/// Blocks of the stage table before depth scaling (1 + 2 + 2 + 3 + 5 + 8): keras.applications
/// divides the stochastic-depth rate by this, not by the blocks it builds.
pub const TABLE_BLOCKS: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < B_STAGES.len() {
        n += B_STAGES[i].3;
        i += 1;
    }
    n
};

/// The largest `drop_connect` rate whose every block rate stays below 1 at depth 1.2 (B2's 28
/// blocks: the last one's rate is `drop_connect × 27 / 21`).
pub const MAX_DROP_CONNECT: f64 = TABLE_BLOCKS as f64 / 27.0;

/// Fused-MBConv (k×k expansion conv, then 1×1 projection) and MBConv (1×1 expansion, depthwise
/// k×k, squeeze-excite, 1×1 projection) as [`InvertedResidual`] blocks.
impl<B: Backend> InvertedResidual<B> {
    fn fused(
        cin: usize,
        cout: usize,
        expand: usize,
        stride: usize,
        bn: &BnSpec,
        device: &B::Device,
    ) -> Self {
        let (expand, project) = if expand == 1 {
            (
                None,
                ConvBn::new(
                    ConvSpec::dense(cin, cout, 3, stride, Act::Swish),
                    bn,
                    device,
                ),
            )
        } else {
            let mid = cin * expand;
            (
                Some(ConvBn::new(
                    ConvSpec::dense(cin, mid, 3, stride, Act::Swish),
                    bn,
                    device,
                )),
                ConvBn::new(ConvSpec::dense(mid, cout, 1, 1, Act::Identity), bn, device),
            )
        };
        Self {
            expand,
            depthwise: None,
            se: None,
            project,
            residual: stride == 1 && cin == cout,
        }
    }

    fn mbconv(
        cin: usize,
        cout: usize,
        expand: usize,
        stride: usize,
        se: f64,
        bn: &BnSpec,
        device: &B::Device,
    ) -> Self {
        let mid = cin * expand;
        Self {
            expand: (expand != 1)
                .then(|| ConvBn::new(ConvSpec::dense(cin, mid, 1, 1, Act::Swish), bn, device)),
            depthwise: Some(ConvBn::new(
                ConvSpec::depthwise(mid, 3, stride, Act::Swish),
                bn,
                device,
            )),
            se: (se > 0.0).then(|| {
                let squeeze = ((cin as f64 * se) as usize).max(1);
                SqueezeExcite::new(mid, squeeze, Act::Swish, Act::Sigmoid, device)
            }),
            project: ConvBn::new(ConvSpec::dense(mid, cout, 1, 1, Act::Identity), bn, device),
            residual: stride == 1 && cin == cout,
        }
    }
}

/// The EfficientNetV2 backbone.
#[derive(Module, Debug)]
pub struct EfficientNetV2<B: Backend> {
    pub stem: ConvBn<B>,
    pub blocks: Vec<InvertedResidual<B>>,
    pub top: ConvBn<B>,
    /// Blocks per stage (the table's repeats scaled by the depth coefficient).
    #[module(skip)]
    pub stages: Vec<usize>,
}

impl<B: Backend> EfficientNetV2<B> {
    /// EfficientNetV2-B2 (width 1.1, depth 1.2), channels further scaled by `width`.
    pub fn b2(width: f64, bn: &BnSpec, device: &B::Device) -> Self {
        Self::new(1.1 * width, 1.2, bn, device)
    }

    /// The B-series table scaled by `width` and `depth` coefficients.
    pub fn new(width: f64, depth: f64, bn: &BnSpec, device: &B::Device) -> Self {
        let filters = |f: usize| make_divisible(f as f64 * width, 8);
        let stem_out = filters(32);
        let stem = ConvBn::new(ConvSpec::dense(3, stem_out, 3, 2, Act::Swish), bn, device);
        let mut cin = stem_out;
        let mut blocks = Vec::new();
        let mut stages = Vec::with_capacity(B_STAGES.len());
        for &Stage(fused, expand, out, repeats, stride, se) in &B_STAGES {
            let cout = filters(out);
            let repeats = (depth * repeats as f64).ceil() as usize;
            stages.push(repeats);
            for r in 0..repeats {
                let s = if r == 0 { stride } else { 1 };
                blocks.push(if fused {
                    InvertedResidual::fused(cin, cout, expand, s, bn, device)
                } else {
                    InvertedResidual::mbconv(cin, cout, expand, s, se, bn, device)
                });
                cin = cout;
            }
        }
        let top = ConvBn::new(
            ConvSpec::dense(cin, filters(1280), 1, 1, Act::Swish),
            bn,
            device,
        );
        Self {
            stem,
            blocks,
            top,
            stages,
        }
    }

    /// Keras' stochastic-depth rate of each block for a model `drop_connect_rate`: block `b`
    /// drops its residual branch with probability `rate × b / n` (0 where the block has no
    /// residual, which Keras then skips), where `n` is, as in keras.applications, the sum of the
    /// stage table's repeats BEFORE the depth coefficient ([`TABLE_BLOCKS`], 21) while `b` runs
    /// over the blocks built (28 for B2): the last block's rate is `rate × 27 / 21`.
    pub fn drop_rates(&self, rate: f64) -> Vec<f64> {
        let n = TABLE_BLOCKS as f64;
        self.blocks
            .iter()
            .enumerate()
            .map(|(b, block)| {
                if block.residual {
                    rate * b as f64 / n
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Channels of the output feature map (1408 for B2).
    pub fn out_channels(&self) -> usize {
        self.top.bn.gamma.dims()[0]
    }
}

impl<B: Backend> EfficientNetV2<B> {
    /// Every conv layer in order with its shape, for an input of `input_hw`.
    pub fn layer_shapes(&self, input_hw: [usize; 2]) -> Vec<LayerShape> {
        let mut out = vec![self.stem.shape(input_hw)];
        let mut hw = out[0].output_hw();
        for b in &self.blocks {
            hw = b.layer_shapes(hw, &mut out);
        }
        out.push(self.top.shape(hw));
        out
    }
}

impl<B: FusedOps> EfficientNetV2<B> {
    /// # Shapes
    /// - `x`: `[N, 3, H, W]` → `[N, 1408, H / 32, W / 32]`
    pub fn forward_on(&self, x: Tensor<B, 4>, path: Path) -> Tensor<B, 4> {
        self.forward_keeping(x, path, &[])
    }

    /// [`EfficientNetV2::forward_on`] with stochastic depth: `keep[b]` is block `b`'s mask
    /// (see [`InvertedResidual::forward_keeping`]); blocks past the slice's end, or `None`,
    /// keep their branch.
    pub fn forward_keeping(
        &self,
        x: Tensor<B, 4>,
        path: Path,
        keep: &[Option<Tensor<B, 4>>],
    ) -> Tensor<B, 4> {
        let mut x = self.stem.forward_on(x, path);
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward_keeping(x, path, keep.get(i).cloned().flatten());
        }
        self.top.forward_on(x, path)
    }
}
