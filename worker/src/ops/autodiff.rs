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

#[derive(Debug)]
struct DenseBackward;

impl<B: Kernels> Backward<B, 3> for DenseBackward {
    /// The input and the weight.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, w, b] = ops.parents.map(|p| p.map(|node| node.id));
        let dy = grads.consume::<B>(&ops.node);
        let (input, weight) = ops.state;
        let (dx, dw, db) = B::dense_backward(dy, input, weight);
        for (id, g) in [(x, dx), (w, dw), (b, db)] {
            if let Some(id) = id {
                grads.register::<B>(id, g);
            }
        }
    }
}

#[derive(Debug)]
struct PlaneMeanBackward;

impl<B: Kernels> Backward<B, 1> for PlaneMeanBackward {
    /// The input's plane size.
    type State = [usize; 2];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x] = ops.parents.map(|p| p.map(|node| node.id));
        let dy = grads.consume::<B>(&ops.node);
        if let Some(id) = x {
            grads.register::<B>(id, B::plane_mean_backward(dy, ops.state));
        }
    }
}

#[derive(Debug)]
struct ScalePlanesBackward;

impl<B: Kernels> Backward<B, 2> for ScalePlanesBackward {
    /// The input and the factors.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x, s] = ops.parents.map(|p| p.map(|node| node.id));
        let dy = grads.consume::<B>(&ops.node);
        let (input, factors) = ops.state;
        let (dx, ds) = B::scale_planes_backward(dy, input, factors);
        if let Some(id) = x {
            grads.register::<B>(id, dx);
        }
        if let Some(id) = s {
            grads.register::<B>(id, ds);
        }
    }
}

impl<B: Kernels, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    fn dense(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let prep = DenseBackward
            .prepare::<C>([x.node.clone(), w.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful();
        let y = B::dense_forward(
            x.primitive.clone(),
            w.primitive.clone(),
            b.primitive.clone(),
        );
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn plane_mean(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.primitive.shape();
        let prep = PlaneMeanBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful();
        let y = B::plane_mean(x.primitive);
        match prep {
            OpsKind::Tracked(prep) => prep.finish([shape[2], shape[3]], y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn scale_planes(x: FloatTensor<Self>, s: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = ScalePlanesBackward
            .prepare::<C>([x.node.clone(), s.node.clone()])
            .compute_bound()
            .stateful();
        let y = B::scale_planes(x.primitive.clone(), s.primitive.clone());
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, s.primitive), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

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
