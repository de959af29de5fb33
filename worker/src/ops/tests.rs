//! The fused ops against burn's stock `Conv2d` → `BatchNorm` → activation on the CPU: output,
//! BatchNorm running statistics and every gradient (input, weight, gamma, beta), on every conv
//! layer shape of both full-size architectures at the 400 × 300 input, and on edge shapes
//! (1 × 1 planes, odd sizes, planes smaller than the kernel, stride 2 with odd and even sizes,
//! batches of 1 and 3). The folded inference form is checked the same way.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param, RunningState};
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::PaddedConvOptions;
use burn::tensor::{Distribution, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Act, ConvGeom, FusedOps, TrainBackend};
use crate::model::layers::{BnSpec, ConvBn, ConvSpec, LayerShape, Path};
use crate::model::{Arch, ModelConfig};

type Ad = Autodiff<Flex>;

/// A tensor of `dist` from the calling thread's own seeded generator, so test inputs are the
/// same on every run whatever other tests draw (burn's generator is process-wide; an unlucky
/// draw can put a pre-activation on a ReLU's kink, where the two paths may round to different
/// sides).
pub(crate) fn random<B: Backend, const D: usize>(
    shape: [usize; D],
    dist: Distribution,
    device: &B::Device,
) -> Tensor<B, D> {
    thread_local! {
        static RNG: std::cell::RefCell<ChaCha8Rng> =
            std::cell::RefCell::new(ChaCha8Rng::seed_from_u64(17));
    }
    use rand::Rng;
    use rand_distr::Distribution as _;
    let values: Vec<f32> = RNG.with(|r| {
        let rng = &mut *r.borrow_mut();
        (0..shape.iter().product::<usize>())
            .map(|_| match dist {
                Distribution::Default => rng.random::<f64>() as f32,
                Distribution::Uniform(a, b) => rng.random_range(a..b) as f32,
                Distribution::Normal(m, s) => rand_distr::Normal::new(m, s)
                    .expect("a valid normal")
                    .sample(rng) as f32,
                other => unimplemented!("{other:?} is not used by these tests"),
            })
            .collect()
    });
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Largest absolute difference relative to the reference's largest magnitude.
pub(crate) fn rel_err(got: &TensorData, want: &TensorData) -> f32 {
    let (g, w) = (
        got.to_vec::<f32>().expect("f32"),
        want.to_vec::<f32>().expect("f32"),
    );
    assert_eq!(g.len(), w.len(), "sizes differ");
    let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = g
        .iter()
        .zip(&w)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff.is_finite(), "non-finite values");
    diff / scale
}

fn spec(s: &LayerShape) -> ConvSpec {
    if s.geom.depthwise {
        ConvSpec::depthwise(s.cin, s.geom.kernel, s.geom.stride, s.act)
    } else {
        ConvSpec::dense(s.cin, s.cout, s.geom.kernel, s.geom.stride, s.act)
    }
}

/// Everything a training step reads off one layer.
struct Outcome {
    y: TensorData,
    running: [TensorData; 2],
    grads: [TensorData; 4],
}

fn run<B: TrainBackend>(
    layer: &ConvBn<B>,
    x: &Tensor<B, 4>,
    r: &Tensor<B, 4>,
    path: Path,
) -> Outcome {
    let x = x.clone().require_grad();
    let y = layer.forward_on(x.clone(), path);
    let grads = (y.clone() * r.clone()).sum().backward();
    let g = |t: Tensor<B, 4>| t.grad(&grads).expect("gradient").into_data();
    let g1 = |t: Tensor<B, 1>| t.grad(&grads).expect("gradient").into_data();
    Outcome {
        y: y.into_data(),
        running: [
            layer.bn.running_mean.value().into_data(),
            layer.bn.running_var.value().into_data(),
        ],
        grads: [
            g(x),
            g(layer.conv.weight.val()),
            g1(layer.bn.gamma.val()),
            g1(layer.bn.beta.val()),
        ],
    }
}

/// A layer with non-trivial BatchNorm parameters and running statistics.
fn layer(s: &LayerShape, device: &burn::tensor::Device<Ad>) -> ConvBn<Ad> {
    let bn = BnSpec {
        epsilon: 1e-3,
        momentum: 0.1,
    };
    let mut l = ConvBn::<Ad>::new(spec(s), &bn, device);
    // Explicit values: burn initialises parameters lazily, so clones of a fresh layer would
    // each draw their own weights.
    let fan_in = l.conv.weight.dims()[1..].iter().product::<usize>() as f64;
    l.conv.weight = Param::from_tensor(random(
        l.conv.weight.dims(),
        Distribution::Normal(0.0, 1.0 / fan_in.sqrt()),
        device,
    ));
    let c = s.cout;
    l.bn.gamma = Param::from_tensor(random([c], Distribution::Uniform(0.5, 1.5), device));
    l.bn.beta = Param::from_tensor(random([c], Distribution::Normal(0.0, 0.5), device));
    l
}

/// Runs `s` at batch `n` on both paths and checks every outcome to `tol`.
fn check(s: &LayerShape, n: usize, tol: f32) {
    let device = Default::default();
    let base = layer(s, &device);
    let [h, w] = s.input_hw;
    let x = random::<Ad, 4>([n, s.cin, h, w], Distribution::Normal(0.5, 1.5), &device);
    let [ho, wo] = s.output_hw();
    let r = random::<Ad, 4>([n, s.cout, ho, wo], Distribution::Normal(0.0, 1.0), &device);
    // A copy with running statistics of its own (a clone would share them).
    let fresh = || {
        let mut l = base.clone();
        l.bn.running_mean = RunningState::new(base.bn.running_mean.value());
        l.bn.running_var = RunningState::new(base.bn.running_var.value());
        l
    };
    let want = run(&fresh(), &x, &r, Path::Stock);
    let got = run(&fresh(), &x, &r, Path::Fused);
    let names = [
        "output",
        "running mean",
        "running var",
        "dx",
        "dw",
        "dgamma",
        "dbeta",
    ];
    let pairs = [&got.y, &got.running[0], &got.running[1]]
        .into_iter()
        .chain(&got.grads)
        .zip(
            [&want.y, &want.running[0], &want.running[1]]
                .into_iter()
                .chain(&want.grads),
        );
    for (name, (g, w)) in names.iter().zip(pairs) {
        let e = rel_err(g, w);
        assert!(
            e <= tol,
            "{s:?} batch {n}: {name} differs by {e:e} (relative)"
        );
    }

    // Inference: the folded BatchNorm with the running statistics, on the inner backend.
    let inner = fresh().valid();
    let xi = x.clone().inner();
    let e = rel_err(
        &inner.forward_on(xi.clone(), Path::Fused).into_data(),
        &inner.forward_on(xi, Path::Stock).into_data(),
    );
    assert!(
        e <= tol,
        "{s:?} batch {n}: inference output differs by {e:e}"
    );
}

fn shape(geom: ConvGeom, cin: usize, cout: usize, act: Act, hw: [usize; 2]) -> LayerShape {
    LayerShape {
        geom,
        cin,
        cout: if geom.depthwise { cin } else { cout },
        act,
        input_hw: hw,
    }
}

#[test]
fn every_layer_of_both_architectures_matches_burn() {
    let device = Default::default();
    let mut seen = std::collections::HashSet::new();
    for arch in Arch::ALL {
        let model = ModelConfig::new(arch).init::<Flex>(&device);
        for s in model.layer_shapes([400, 300]) {
            if seen.insert(s) {
                check(&s, 2, 1e-4);
            }
        }
    }
    assert!(seen.len() > 40, "only {} distinct layers", seen.len());
}

#[test]
fn edge_shapes_match_burn() {
    use Act::*;
    let (d, dense) = (ConvGeom::depthwise, ConvGeom::dense);
    let cases = [
        (shape(d(3, 1), 3, 3, Relu, [1, 1]), 1),
        (shape(d(3, 1), 2, 2, HardSwish, [2, 3]), 3),
        (shape(d(3, 2), 4, 4, Swish, [7, 5]), 2),
        (shape(d(3, 2), 3, 3, Identity, [8, 6]), 1),
        (shape(d(3, 2), 2, 2, Sigmoid, [1, 1]), 3),
        (shape(d(5, 2), 3, 3, HardSigmoid, [13, 10]), 2),
        (shape(d(5, 2), 2, 2, Relu, [3, 4]), 1),
        (shape(d(5, 2), 1, 1, HardSwish, [1, 2]), 3),
        (shape(d(5, 1), 2, 2, Swish, [4, 3]), 2),
        (shape(dense(3, 2), 3, 8, HardSwish, [9, 7]), 2),
        (shape(dense(3, 1), 4, 5, Swish, [5, 6]), 3),
        (shape(dense(3, 2), 2, 3, Relu, [1, 1]), 1),
        (shape(dense(1, 1), 6, 5, Identity, [1, 1]), 3),
        (shape(dense(1, 1), 5, 7, Sigmoid, [3, 2]), 1),
        (shape(dense(1, 2), 3, 4, Relu, [5, 4]), 2),
        (shape(dense(5, 2), 2, 3, Swish, [6, 3]), 2),
    ];
    // Batch statistics over as few as 3 values (a 1 × 1 plane, batch 3) divide by a tiny
    // variance, which magnifies the two paths' different summation orders: 1.07e-4 seen on a
    // weight gradient with seeded inputs, so these shapes get 3e-4.
    for (s, n) in cases {
        check(&s, n, 3e-4);
    }
}

#[test]
fn folded_batchnorm_gradients_match_stock_ops() {
    // conv_affine_act on autodiff (frozen BatchNorm) against conv2d · scale + shift → act.
    let device = Default::default();
    for (geom, cin, cout, act) in [
        (ConvGeom::depthwise(3, 2), 4, 4, Act::HardSwish),
        (ConvGeom::dense(3, 1), 3, 5, Act::Swish),
        (ConvGeom::dense(1, 1), 6, 4, Act::Relu),
    ] {
        let x = random::<Ad, 4>([2, cin, 7, 6], Distribution::Normal(0.0, 1.0), &device);
        let per_group = if geom.depthwise { 1 } else { cin };
        let (k, s) = (geom.kernel, geom.stride);
        let w = random::<Ad, 4>(
            [cout, per_group, k, k],
            Distribution::Normal(0.0, 0.5),
            &device,
        );
        let scale = random::<Ad, 1>([cout], Distribution::Uniform(0.5, 1.5), &device);
        let shift = random::<Ad, 1>([cout], Distribution::Normal(0.0, 0.5), &device);
        let mut results = Vec::new();
        for fused in [true, false] {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let (scale, shift) = (scale.clone().require_grad(), shift.clone().require_grad());
            let y = if fused {
                Tensor::<Ad, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(
                    Ad::conv_affine_act(
                        x.clone().into_primitive().tensor(),
                        w.clone().into_primitive().tensor(),
                        scale.clone().into_primitive().tensor(),
                        shift.clone().into_primitive().tensor(),
                        geom,
                        act,
                    ),
                ))
            } else {
                let pad = |size: usize| {
                    let out = size.div_ceil(s);
                    let total = ((out - 1) * s + k).saturating_sub(size);
                    (total / 2, total - total / 2)
                };
                let ((t, b), (l, r)) = (pad(7), pad(6));
                let groups = if geom.depthwise { cin } else { 1 };
                let opts = PaddedConvOptions::asymmetric([s, s], [t, l], [b, r], [1, 1], groups);
                let c = conv2d(x.clone(), w.clone(), None, opts);
                act.apply(
                    c * scale.clone().reshape([1, cout, 1, 1])
                        + shift.clone().reshape([1, cout, 1, 1]),
                )
            };
            let r = Tensor::<Ad, 4>::ones(y.dims(), &device).mul_scalar(0.3)
                + y.clone().mul_scalar(0.1);
            let grads = (y.clone() * r.detach()).sum().backward();
            results.push([
                y.into_data(),
                x.grad(&grads).unwrap().into_data(),
                w.grad(&grads).unwrap().into_data(),
                scale.grad(&grads).unwrap().into_data(),
                shift.grad(&grads).unwrap().into_data(),
            ]);
        }
        for (i, (g, w)) in results[0].iter().zip(&results[1]).enumerate() {
            let e = rel_err(g, w);
            assert!(
                e <= 1e-4,
                "{geom:?} {act:?}: output/gradient {i} differs by {e:e}"
            );
        }
    }
}

#[test]
fn activations_and_their_derivatives_match_burn() {
    let device = Default::default();
    let z: Vec<f32> = (-800..=800).map(|i| i as f32 * 0.0113 + 0.0007).collect();
    for act in [
        Act::Identity,
        Act::Relu,
        Act::HardSwish,
        Act::Swish,
        Act::HardSigmoid,
        Act::Sigmoid,
    ] {
        let t = Tensor::<Ad, 1>::from_floats(z.as_slice(), &device).require_grad();
        let y = act.apply(t.clone());
        let grads = y.clone().sum().backward();
        let want_y = y.into_data().to_vec::<f32>().unwrap();
        let want_g = t.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        for (i, &v) in z.iter().enumerate() {
            assert!(
                (act.eval(v) - want_y[i]).abs() <= 1e-6 * want_y[i].abs().max(1.0),
                "{act:?}({v})"
            );
            assert!(
                (act.grad(v) - want_g[i]).abs() <= 1e-5,
                "{act:?}'({v}): {} vs {}",
                act.grad(v),
                want_g[i]
            );
        }
    }
}

#[test]
fn exp_is_accurate_over_the_whole_range() {
    let mut worst = 0.0f64;
    let mut v = -87.0f32;
    while v < 88.0 {
        let want = (v as f64).exp();
        worst = worst.max(((super::exp_f32(v) as f64 - want) / want).abs());
        v += 0.0137;
    }
    assert!(worst < 5e-7, "relative error {worst:e}");
    assert_eq!(super::exp_f32(-1000.0), super::exp_f32(-87.3));
    assert!(super::exp_f32(1000.0).is_finite());
}

/// The gradient of every trainable tensor of a module and the value of every other one (the
/// BatchNorm running statistics), in visiting order.
struct Collect<'a> {
    grads: &'a <Ad as burn::tensor::backend::AutodiffBackend>::Gradients,
    gradients: Vec<TensorData>,
    running: Vec<TensorData>,
}

impl burn::module::ModuleVisitor<Ad> for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Ad, D>>) {
        match param.val().grad(self.grads) {
            Some(g) => self.gradients.push(g.into_data()),
            None => self.running.push(param.val().into_data()),
        }
    }
}

fn max_abs(t: &TensorData) -> f32 {
    t.to_vec::<f32>()
        .unwrap()
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
}

#[test]
fn a_whole_training_step_matches_stock_ops() {
    use burn::module::Module;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};

    let device = Default::default();
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    for arch in Arch::ALL {
        let config = ModelConfig::new(arch).with_width(0.5);
        // One set of weights, materialised (burn initialises parameters lazily), loaded twice.
        let bytes = recorder
            .record(config.init_seeded::<Ad>(7, &device).into_record(), ())
            .unwrap();
        let x = random::<Ad, 4>([3, 3, 96, 128], Distribution::Uniform(0.0, 255.0), &device);
        let y = burn::tensor::activation::softmax(
            random::<Ad, 2>([3, 6], Distribution::Default, &device),
            1,
        );
        let mut outcomes = Vec::new();
        for path in [Path::Stock, Path::Fused] {
            let model = config
                .init::<Ad>(&device)
                .load_record(recorder.load(bytes.clone(), &device).unwrap());
            let loss = crate::train::loss::keras_kl(model.forward_on(x.clone(), path), y.clone());
            let grads = loss.backward();
            let mut c = Collect {
                grads: &grads,
                gradients: Vec::new(),
                running: Vec::new(),
            };
            model.visit(&mut c);
            outcomes.push((loss.into_data(), c.gradients, c.running));
        }
        let (stock, fused) = (&outcomes[0], &outcomes[1]);
        let e = rel_err(&fused.0, &stock.0);
        assert!(e <= 1e-5, "{arch}: loss differs by {e:e}");
        assert_eq!(stock.1.len(), fused.1.len(), "{arch}: gradient count");
        assert!(
            stock.1.len() > 100,
            "{arch}: only {} gradients",
            stock.1.len()
        );
        // Each gradient to 1e-3 of its largest value; a gradient below 1 % of the model's
        // largest (the beta of a BatchNorm whose output only reaches other BatchNorms is zero in
        // exact arithmetic, so both sides hold rounding noise) to 1e-3 of that 1 %. Every layer
        // alone matches to 1e-4 (above); through the whole network at batch 3 the two paths'
        // summation orders compound: up to 6.5e-4 of a BatchNorm gradient's largest value and
        // 2e-4 on the stem's (seeded inputs, MobileNetV3). The wgpu comparison uses 1e-3 too.
        let global = stock.1.iter().map(max_abs).fold(0.0f32, f32::max);
        for (i, (f, s)) in fused.1.iter().zip(&stock.1).enumerate() {
            let scale = max_abs(s).max(0.01 * global);
            let (fv, sv) = (f.to_vec::<f32>().unwrap(), s.to_vec::<f32>().unwrap());
            let diff = fv
                .iter()
                .zip(&sv)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-3 * scale,
                "{arch}: gradient {i} {:?} differs by {diff:e} (scale {scale:e})",
                s.shape
            );
        }
        assert_eq!(
            stock.2.len(),
            fused.2.len(),
            "{arch}: running statistics count"
        );
        for (i, (f, s)) in fused.2.iter().zip(&stock.2).enumerate() {
            let e = rel_err(f, s);
            assert!(e <= 1e-4, "{arch}: running statistic {i} differs by {e:e}");
        }
    }
}
