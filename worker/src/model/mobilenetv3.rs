//! MobileNetV3-Large as Keras/KerasCV builds it: a 3×3 stride-2 stem (16, hard-swish), 15
//! inverted-residual blocks, and a 1×1 conv to 960 channels (BatchNorm, hard-swish).
//! Squeeze-excite widths are `expanded / 4` rounded to a multiple of 8, gated by hard-sigmoid.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::ops::FusedOps;

use super::layers::{
    Act, BnSpec, ConvBn, ConvSpec, InvertedResidual, LayerShape, Path, SqueezeExcite,
    make_divisible,
};

/// One block: kernel, expansion ratio, output channels, squeeze-excite, activation, stride.
struct Block(usize, f64, usize, bool, Act, usize);

/// Keras' `MobileNetV3Large` stack (expanded widths 16, 64, 72, 72, 120, 120, 240, 200,
/// 184, 184, 480, 672, 672, 960, 960 at width 1).
const LARGE: [Block; 15] = [
    Block(3, 1.0, 16, false, Act::Relu, 1),
    Block(3, 4.0, 24, false, Act::Relu, 2),
    Block(3, 3.0, 24, false, Act::Relu, 1),
    Block(5, 3.0, 40, true, Act::Relu, 2),
    Block(5, 3.0, 40, true, Act::Relu, 1),
    Block(5, 3.0, 40, true, Act::Relu, 1),
    Block(3, 6.0, 80, false, Act::HardSwish, 2),
    Block(3, 2.5, 80, false, Act::HardSwish, 1),
    Block(3, 2.3, 80, false, Act::HardSwish, 1),
    Block(3, 2.3, 80, false, Act::HardSwish, 1),
    Block(3, 6.0, 112, true, Act::HardSwish, 1),
    Block(3, 6.0, 112, true, Act::HardSwish, 1),
    Block(5, 6.0, 160, true, Act::HardSwish, 2),
    Block(5, 6.0, 160, true, Act::HardSwish, 1),
    Block(5, 6.0, 160, true, Act::HardSwish, 1),
];

/// Blocks per stage of [`LARGE`] (stages end where the output width or stride changes, as
/// timm groups them); the last 1×1 conv is a stage of its own after these.
pub const STAGES: [usize; 6] = [1, 2, 3, 4, 2, 3];

/// The MobileNetV3-Large backbone.
#[derive(Module, Debug)]
pub struct MobileNetV3<B: Backend> {
    pub stem: ConvBn<B>,
    pub blocks: Vec<InvertedResidual<B>>,
    pub last: ConvBn<B>,
}

impl<B: Backend> MobileNetV3<B> {
    /// Builds the backbone with channel multiplier `width` (Keras' `alpha`).
    pub fn new(width: f64, bn: &BnSpec, device: &B::Device) -> Self {
        let stem = ConvBn::new(ConvSpec::dense(3, 16, 3, 2, Act::HardSwish), bn, device);
        let mut cin = 16;
        let mut blocks = Vec::with_capacity(LARGE.len());
        for (i, &Block(k, ratio, out, se, act, stride)) in LARGE.iter().enumerate() {
            let cout = make_divisible(out as f64 * width, 8);
            let expanded = make_divisible(cin as f64 * ratio, 8);
            let expand =
                (i > 0).then(|| ConvBn::new(ConvSpec::dense(cin, expanded, 1, 1, act), bn, device));
            let mid = if i > 0 { expanded } else { cin };
            blocks.push(InvertedResidual {
                expand,
                depthwise: Some(ConvBn::new(
                    ConvSpec::depthwise(mid, k, stride, act),
                    bn,
                    device,
                )),
                se: se.then(|| {
                    SqueezeExcite::new(
                        mid,
                        make_divisible(mid as f64 * 0.25, 8),
                        Act::Relu,
                        Act::HardSigmoid,
                        device,
                    )
                }),
                project: ConvBn::new(ConvSpec::dense(mid, cout, 1, 1, Act::Identity), bn, device),
                residual: stride == 1 && cin == cout,
            });
            cin = cout;
        }
        let last = ConvBn::new(
            ConvSpec::dense(
                cin,
                make_divisible(cin as f64 * 6.0, 8),
                1,
                1,
                Act::HardSwish,
            ),
            bn,
            device,
        );
        Self { stem, blocks, last }
    }

    /// Channels of the output feature map (960 at width 1).
    pub fn out_channels(&self) -> usize {
        self.last.bn.gamma.dims()[0]
    }
}

impl<B: Backend> MobileNetV3<B> {
    /// Every conv layer in order with its shape, for an input of `input_hw`.
    pub fn layer_shapes(&self, input_hw: [usize; 2]) -> Vec<LayerShape> {
        let mut out = vec![self.stem.shape(input_hw)];
        let mut hw = out[0].output_hw();
        for b in &self.blocks {
            hw = b.layer_shapes(hw, &mut out);
        }
        out.push(self.last.shape(hw));
        out
    }
}

impl<B: FusedOps> MobileNetV3<B> {
    /// # Shapes
    /// - `x`: `[N, 3, H, W]` → `[N, 960, H / 32, W / 32]`
    pub fn forward_on(&self, x: Tensor<B, 4>, path: Path) -> Tensor<B, 4> {
        let mut x = self.stem.forward_on(x, path);
        for b in &self.blocks {
            x = b.forward_on(x, path);
        }
        self.last.forward_on(x, path)
    }
}
