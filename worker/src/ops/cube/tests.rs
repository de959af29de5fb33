//! The CubeCL kernels on wgpu against the CPU kernels (themselves tested against burn's stock
//! ops): every primitive on edge shapes and on reduced versions of the models' layer kinds,
//! every activation; then one whole training step of both reduced architectures on
//! `Autodiff<wgpu>` against the same step on the CPU. Needs a Vulkan / Metal / DX12 adapter;
//! in CI, Mesa's lavapipe (software Vulkan).

use burn::backend::wgpu::{WgpuDevice, WgpuRuntime};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Distribution, Tensor, TensorData, TensorPrimitive};
use burn_cubecl::CubeBackend;

use crate::ops::tests::{random, rel_err};
use crate::ops::{Act, ConvGeom, Kernels};

type Gpu = CubeBackend<WgpuRuntime, f32, i32, u32>;

fn cpu<const D: usize>(shape: [usize; D], dist: Distribution) -> Tensor<Flex, D> {
    random(shape, dist, &Default::default())
}

fn gpu_of<const D: usize>(t: &Tensor<Flex, D>) -> FloatTensor<Gpu> {
    Tensor::<Gpu, D>::from_data(t.to_data(), &WgpuDevice::default())
        .into_primitive()
        .tensor()
}

fn data<B: Backend>(t: FloatTensor<B>) -> TensorData {
    Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t)).into_data()
}

fn check(name: &str, got: FloatTensor<Gpu>, want: FloatTensor<Flex>, tol: f32) {
    let (g, w) = (data::<Gpu>(got), data::<Flex>(want));
    assert_eq!(g.shape, w.shape, "{name}: shape");
    let e = rel_err(&g, &w);
    assert!(e <= tol, "{name}: differs from the CPU by {e:e} (relative)");
}

fn prim<const D: usize>(t: &Tensor<Flex, D>) -> FloatTensor<Flex> {
    t.clone().into_primitive().tensor()
}

/// Every primitive of one conv + BatchNorm + activation layer, GPU against CPU.
fn layer(geom: ConvGeom, cin: usize, cout: usize, act: Act, [h, w]: [usize; 2], n: usize) {
    let cout = if geom.depthwise { cin } else { cout };
    let per_group = if geom.depthwise { 1 } else { cin };
    let k = geom.kernel;
    let name = format!("{geom:?} {cin}->{cout} {act:?} {h}x{w} batch {n}");
    let x = cpu([n, cin, h, w], Distribution::Normal(0.3, 1.0));
    let wt = cpu([cout, per_group, k, k], Distribution::Normal(0.0, 0.5));
    let plan = geom.plan([n, cin, h, w], cout);
    let dy = cpu(plan.out_shape(), Distribution::Normal(0.0, 1.0));
    let gamma = cpu([cout], Distribution::Uniform(0.5, 1.5));
    let beta = cpu([cout], Distribution::Normal(0.0, 0.5));

    let c_cpu = Flex::conv_forward(prim(&x), prim(&wt), geom);
    let c_gpu = Gpu::conv_forward(gpu_of(&x), gpu_of(&wt), geom);
    check(
        &format!("{name}: conv forward"),
        c_gpu.clone(),
        c_cpu.clone(),
        1e-4,
    );
    check(
        &format!("{name}: conv input gradient"),
        Gpu::conv_backward_input(gpu_of(&dy), gpu_of(&wt), geom, [h, w]),
        Flex::conv_backward_input(prim(&dy), prim(&wt), geom, [h, w]),
        1e-4,
    );
    check(
        &format!("{name}: conv weight gradient"),
        Gpu::conv_backward_weight(gpu_of(&x), gpu_of(&dy), geom),
        Flex::conv_backward_weight(prim(&x), prim(&dy), geom),
        1e-4,
    );

    // BatchNorm + activation on the CPU's conv output, so both sides see the same input.
    let c = Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(c_cpu));
    let (y_c, m_c, v_c) = Flex::bn_act_forward(prim(&c), prim(&gamma), prim(&beta), 1e-3, act);
    let (y_g, m_g, v_g) = Gpu::bn_act_forward(gpu_of(&c), gpu_of(&gamma), gpu_of(&beta), 1e-3, act);
    check(&format!("{name}: BatchNorm output"), y_g, y_c, 1e-4);
    check(&format!("{name}: BatchNorm mean"), m_g, m_c.clone(), 1e-4);
    check(
        &format!("{name}: BatchNorm variance"),
        v_g,
        v_c.clone(),
        1e-4,
    );
    let (mean, var) = (
        Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(m_c)),
        Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(v_c)),
    );
    let want = Flex::bn_act_backward(
        prim(&dy),
        prim(&c),
        prim(&gamma),
        prim(&beta),
        prim(&mean),
        prim(&var),
        1e-3,
        act,
    );
    let got = Gpu::bn_act_backward(
        gpu_of(&dy),
        gpu_of(&c),
        gpu_of(&gamma),
        gpu_of(&beta),
        gpu_of(&mean),
        gpu_of(&var),
        1e-3,
        act,
    );
    check(&format!("{name}: BatchNorm dx"), got.0, want.0, 1e-4);
    check(&format!("{name}: BatchNorm dgamma"), got.1, want.1, 1e-4);
    check(&format!("{name}: BatchNorm dbeta"), got.2, want.2, 1e-4);

    check(
        &format!("{name}: folded affine output"),
        Gpu::affine_act_forward(gpu_of(&c), gpu_of(&gamma), gpu_of(&beta), act),
        Flex::affine_act_forward(prim(&c), prim(&gamma), prim(&beta), act),
        1e-4,
    );
    let want = Flex::affine_act_backward(prim(&dy), prim(&c), prim(&gamma), prim(&beta), act);
    let got = Gpu::affine_act_backward(gpu_of(&dy), gpu_of(&c), gpu_of(&gamma), gpu_of(&beta), act);
    check(&format!("{name}: folded affine dx"), got.0, want.0, 1e-4);
    check(
        &format!("{name}: folded affine dscale"),
        got.1,
        want.1,
        1e-4,
    );
    check(
        &format!("{name}: folded affine dshift"),
        got.2,
        want.2,
        1e-4,
    );
}

#[test]
fn cube_kernels_on_wgpu_match_the_cpu_kernels() {
    use Act::*;
    let (d, dense) = (ConvGeom::depthwise, ConvGeom::dense);
    let cases = [
        // Edge shapes.
        (d(3, 1), 3, 3, Relu, [1, 1], 2),
        (d(3, 2), 4, 4, Swish, [7, 5], 2),
        (d(3, 2), 3, 3, Identity, [8, 6], 1),
        (d(5, 2), 3, 3, HardSigmoid, [13, 10], 2),
        (d(5, 2), 2, 2, Sigmoid, [1, 2], 3),
        (dense(3, 2), 3, 8, HardSwish, [9, 7], 2),
        (dense(1, 1), 6, 5, Identity, [1, 1], 3),
        (dense(1, 2), 3, 4, Relu, [5, 4], 2),
        // The models' layer kinds, reduced.
        (dense(3, 2), 3, 16, HardSwish, [50, 38], 2),
        (d(3, 1), 16, 16, Relu, [25, 19], 2),
        (d(5, 1), 24, 24, Relu, [13, 10], 2),
        (d(3, 2), 32, 32, Swish, [25, 19], 2),
        (dense(1, 1), 24, 72, Swish, [13, 10], 2),
        (dense(3, 1), 16, 32, Swish, [25, 19], 2),
        // burn-cubecl 0.21's conv2d / matmul get these wrong on wgpu (hbac does not use them).
        (dense(1, 1), 8, 32, Relu, [32, 24], 2),
        (dense(3, 1), 8, 8, Swish, [32, 24], 2),
        // Planes large enough that the reductions split (4096 values per cube, the last
        // split shorter).
        (d(3, 1), 4, 4, Swish, [96, 64], 2),
        (dense(1, 1), 3, 5, HardSwish, [97, 61], 2),
    ];
    for (geom, cin, cout, act, hw, n) in cases {
        layer(geom, cin, cout, act, hw, n);
    }
}

/// Squeeze-excite's and the head's small ops: dense layer, plane means, per-plane scaling,
/// forward and backward, GPU against CPU.
#[test]
fn small_ops_on_wgpu_match_the_cpu() {
    for (n, cin, cout, [h, w]) in [(1, 1, 1, [1, 1]), (2, 24, 6, [13, 10]), (5, 72, 18, [7, 3])] {
        let name = format!("batch {n}, {cin} -> {cout}, {h}x{w}");
        let x = cpu([n, cin], Distribution::Normal(0.2, 1.0));
        let wt = cpu([cout, cin], Distribution::Normal(0.0, 0.5));
        let b = cpu([cout], Distribution::Normal(0.0, 0.5));
        let dy = cpu([n, cout], Distribution::Normal(0.0, 1.0));
        check(
            &format!("{name}: dense"),
            Gpu::dense_forward(gpu_of(&x), gpu_of(&wt), gpu_of(&b)),
            Flex::dense_forward(prim(&x), prim(&wt), prim(&b)),
            1e-5,
        );
        let got = Gpu::dense_backward(gpu_of(&dy), gpu_of(&x), gpu_of(&wt));
        let want = Flex::dense_backward(prim(&dy), prim(&x), prim(&wt));
        check(&format!("{name}: dense dx"), got.0, want.0, 1e-5);
        check(&format!("{name}: dense dw"), got.1, want.1, 1e-5);
        check(&format!("{name}: dense db"), got.2, want.2, 1e-5);

        let planes = cpu([n, cin, h, w], Distribution::Normal(0.3, 1.0));
        let s = cpu([n, cin], Distribution::Uniform(0.0, 1.0));
        let dp = cpu([n, cin, h, w], Distribution::Normal(0.0, 1.0));
        check(
            &format!("{name}: plane mean"),
            Gpu::plane_mean(gpu_of(&planes)),
            Flex::plane_mean(prim(&planes)),
            1e-5,
        );
        check(
            &format!("{name}: plane mean gradient"),
            Gpu::plane_mean_backward(gpu_of(&x), [h, w]),
            Flex::plane_mean_backward(prim(&x), [h, w]),
            1e-5,
        );
        check(
            &format!("{name}: scale planes"),
            Gpu::scale_planes(gpu_of(&planes), gpu_of(&s)),
            Flex::scale_planes(prim(&planes), prim(&s)),
            1e-5,
        );
        let got = Gpu::scale_planes_backward(gpu_of(&dp), gpu_of(&planes), gpu_of(&s));
        let want = Flex::scale_planes_backward(prim(&dp), prim(&planes), prim(&s));
        check(&format!("{name}: scale planes dx"), got.0, want.0, 1e-5);
        check(&format!("{name}: scale planes ds"), got.1, want.1, 1e-5);
    }
}

#[test]
fn a_training_step_on_wgpu_matches_the_cpu() {
    use burn::module::Module;
    use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};

    use crate::model::{Arch, ModelConfig};

    let (cpu_dev, gpu_dev) = (Default::default(), WgpuDevice::default());
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    for arch in Arch::ALL {
        let config = ModelConfig::new(arch).with_width(0.25);
        let bytes = recorder
            .record(
                config
                    .init_seeded::<Autodiff<Flex>>(7, &cpu_dev)
                    .into_record(),
                (),
            )
            .unwrap();
        let x = cpu([2, 3, 64, 48], Distribution::Uniform(0.0, 255.0));
        let y = burn::tensor::activation::softmax(cpu([2, 6], Distribution::Default), 1);

        let model = config
            .init::<Autodiff<Flex>>(&cpu_dev)
            .load_record(recorder.load(bytes.clone(), &cpu_dev).unwrap());
        let x_c = Tensor::<Autodiff<Flex>, 4>::from_data(x.to_data(), &cpu_dev);
        let y_c = Tensor::<Autodiff<Flex>, 2>::from_data(y.to_data(), &cpu_dev);
        let loss_c = crate::train::loss::keras_kl(model.forward(x_c), y_c);
        let grads_c = loss_c.backward();
        let head_c = model.head.weight.val().grad(&grads_c).unwrap().into_data();
        let stem_c = stem(&model).grad(&grads_c).unwrap().into_data();

        let model = config
            .init::<Autodiff<Gpu>>(&gpu_dev)
            .load_record(recorder.load(bytes, &gpu_dev).unwrap());
        let x_g = Tensor::<Autodiff<Gpu>, 4>::from_data(x.to_data(), &gpu_dev);
        let y_g = Tensor::<Autodiff<Gpu>, 2>::from_data(y.to_data(), &gpu_dev);
        let loss_g = crate::train::loss::keras_kl(model.forward(x_g), y_g);
        let grads_g = loss_g.backward();
        let head_g = model.head.weight.val().grad(&grads_g).unwrap().into_data();
        let stem_g = stem(&model).grad(&grads_g).unwrap().into_data();

        let e = rel_err(&loss_g.into_data(), &loss_c.into_data());
        assert!(e <= 1e-4, "{arch}: loss differs by {e:e}");
        let e = rel_err(&head_g, &head_c);
        assert!(e <= 1e-3, "{arch}: head gradient differs by {e:e}");
        // The stem's weight gradient has flowed back through every layer.
        let e = rel_err(&stem_g, &stem_c);
        assert!(e <= 1e-3, "{arch}: stem gradient differs by {e:e}");
    }
}

fn stem<B: Backend>(model: &crate::model::Model<B>) -> Tensor<B, 4> {
    match &model.backbone {
        crate::model::Backbone::MobileNetV3(m) => m.stem.conv.weight.val(),
        crate::model::Backbone::EfficientNetV2(m) => m.stem.conv.weight.val(),
    }
}
