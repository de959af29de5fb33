//! [`FusedOps`] on `Autodiff<B>`: each fused layer is one graph node. Its state is the layer's
//! input (kept only when the weight needs a gradient), the weight (only when the input needs
//! one) and the conv output; its backward runs the BatchNorm + activation gradient kernel and
//! then only the conv gradients some parent needs (the stem's input gradient is never computed).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::tensor::TensorMetadata;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use super::{Act, ConvGeom, FusedOps, Kernels};

/// What a fused layer keeps for its backward pass.
#[derive(Debug, Clone)]
struct ConvState<B: Kernels> {
    geom: ConvGeom,
    act: Act,
    input_hw: [usize; 2],
    /// The layer input, when the weight is tracked.
    x: Option<FloatTensor<B>>,
    /// The weight, when the input is tracked.
    w: Option<FloatTensor<B>>,
    /// The conv output.
    c: FloatTensor<B>,
}

impl<B: Kernels> ConvState<B> {
    fn new(
        geom: ConvGeom,
        act: Act,
        x: &FloatTensor<B>,
        w: &FloatTensor<B>,
        c: &FloatTensor<B>,
        [x_tracked, w_tracked]: [bool; 2],
    ) -> Self {
        let shape = x.shape();
        Self {
            geom,
            act,
            input_hw: [shape[2], shape[3]],
            x: w_tracked.then(|| x.clone()),
            w: x_tracked.then(|| w.clone()),
            c: c.clone(),
        }
    }

    /// Registers the conv's gradients from the gradient `dc` of its output.
    fn register(self, dc: FloatTensor<B>, [x, w]: [Option<NodeId>; 2], grads: &mut Gradients) {
        if let (Some(id), Some(input)) = (w, self.x) {
            grads.register::<B>(id, B::conv_backward_weight(input, dc.clone(), self.geom));
        }
        if let (Some(id), Some(weight)) = (x, self.w) {
            grads.register::<B>(
                id,
                B::conv_backward_input(dc, weight, self.geom, self.input_hw),
            );
        }
    }
}

#[derive(Debug)]
struct ConvBnActBackward;

#[derive(Debug, Clone)]
struct BnState<B: Kernels> {
    conv: ConvState<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    var: FloatTensor<B>,
    epsilon: f64,
}

impl<B: Kernels> Backward<B, 4> for ConvBnActBackward {
    type State = BnState<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, w, gamma, beta] = ops.parents.map(|p| p.map(|node| node.id));
        let dy = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let (dc, dgamma, dbeta) = B::bn_act_backward(
            dy,
            s.conv.c.clone(),
            s.gamma,
            s.beta,
            s.mean,
            s.var,
            s.epsilon,
            s.conv.act,
        );
        if let Some(id) = gamma {
            grads.register::<B>(id, dgamma);
        }
        if let Some(id) = beta {
            grads.register::<B>(id, dbeta);
        }
        s.conv.register(dc, [x, w], grads);
    }
}

#[derive(Debug)]
struct ConvAffineActBackward;

#[derive(Debug, Clone)]
struct AffineState<B: Kernels> {
    conv: ConvState<B>,
    scale: FloatTensor<B>,
    shift: FloatTensor<B>,
}

impl<B: Kernels> Backward<B, 4> for ConvAffineActBackward {
    type State = AffineState<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, w, scale, shift] = ops.parents.map(|p| p.map(|node| node.id));
        let dy = grads.consume::<B>(&ops.node);
        let s = ops.state;
        let (dc, dscale, dshift) =
            B::affine_act_backward(dy, s.conv.c.clone(), s.scale, s.shift, s.conv.act);
        if let Some(id) = scale {
            grads.register::<B>(id, dscale);
        }
        if let Some(id) = shift {
            grads.register::<B>(id, dshift);
        }
        s.conv.register(dc, [x, w], grads);
    }
}

impl<B: Kernels, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn conv_bn_act(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        geom: ConvGeom,
        epsilon: f64,
        act: Act,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let tracked = [!x.node.requirement.is_none(), !w.node.requirement.is_none()];
        let prep = ConvBnActBackward
            .prepare::<C>([
                x.node.clone(),
                w.node.clone(),
                gamma.node.clone(),
                beta.node.clone(),
            ])
            .compute_bound()
            .stateful();
        let c = B::conv_forward(x.primitive.clone(), w.primitive.clone(), geom);
        let (y, mean, var) = B::bn_act_forward(
            c.clone(),
            gamma.primitive.clone(),
            beta.primitive.clone(),
            epsilon,
            act,
        );
        let y = match prep {
            OpsKind::Tracked(prep) => {
                let state = BnState {
                    conv: ConvState::new(geom, act, &x.primitive, &w.primitive, &c, tracked),
                    gamma: gamma.primitive,
                    beta: beta.primitive,
                    mean: mean.clone(),
                    var: var.clone(),
                    epsilon,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, Self::from_inner(mean), Self::from_inner(var))
    }

    fn conv_affine_act(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        geom: ConvGeom,
        act: Act,
    ) -> FloatTensor<Self> {
        let tracked = [!x.node.requirement.is_none(), !w.node.requirement.is_none()];
        let prep = ConvAffineActBackward
            .prepare::<C>([
                x.node.clone(),
                w.node.clone(),
                scale.node.clone(),
                shift.node.clone(),
            ])
            .compute_bound()
            .stateful();
        let c = B::conv_forward(x.primitive.clone(), w.primitive.clone(), geom);
        let y = B::affine_act_forward(
            c.clone(),
            scale.primitive.clone(),
            shift.primitive.clone(),
            act,
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let state = AffineState {
                    conv: ConvState::new(geom, act, &x.primitive, &w.primitive, &c, tracked),
                    scale: scale.primitive,
                    shift: shift.primitive,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
