//! [`Kernels`] for burn's CPU backend (flex): multi-threaded over samples, planes or channels
//! on the rayon pool flex itself uses, GEMMs by the `gemm` crate (flex's own), and inner loops
//! compiled for the best instruction set the CPU has (AVX-512, AVX2 + FMA, or the baseline) by
//! `multiversion`.

/// Compiles each function for AVX-512, AVX2 + FMA, NEON and the baseline, picking the best
/// at run time (`multiversion`); helpers they call are `#[inline(always)]` so they are compiled
/// for the same instruction set.
macro_rules! simd {
    ($($item:item)*) => {
        $(
            #[multiversion::multiversion(targets(
                "x86_64+avx512f+avx512vl+avx512bw+avx512dq+avx2+fma",
                "x86_64+avx2+fma",
                "aarch64+neon"
            ))]
            $item
        )*
    };
}

mod conv;
mod gemm;
mod norm;

use burn::backend::Flex;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData, TensorMetadata};
use burn_flex::FlexTensor;

use super::{Act, ConvGeom, Kernels, float, prim, profile};

/// A flex tensor's values as a contiguous `f32` slice holder.
struct F32 {
    tensor: FlexTensor,
}

impl F32 {
    fn new(t: FlexTensor) -> Self {
        assert_eq!(
            t.dtype(),
            DType::F32,
            "hbac's CPU kernels run in f32, got a {:?} tensor",
            t.dtype()
        );
        let tensor = if t.layout().contiguous_offsets().is_some() {
            t
        } else {
            t.to_contiguous()
        };
        Self { tensor }
    }

    fn dims<const D: usize>(&self) -> [usize; D] {
        let shape = self.tensor.layout().shape();
        assert_eq!(
            shape.num_dims(),
            D,
            "expected a rank-{D} tensor, got {shape:?}"
        );
        std::array::from_fn(|i| shape[i])
    }

    fn values(&self) -> &[f32] {
        self.tensor
            .as_slice::<f32>()
            .expect("contiguous f32 tensor")
    }
}

/// A flex tensor's values, owned: its own buffer when nothing else holds it, else a copy.
fn owned(t: FlexTensor) -> Vec<f32> {
    assert_eq!(t.dtype(), DType::F32, "hbac's CPU kernels run in f32");
    t.into_data()
        .into_vec::<f32>()
        .expect("an f32 tensor's values")
}

/// Makes the binaries' allocator (mimalloc) keep freed memory for reuse instead of returning
/// it to the kernel: a training step frees and re-allocates gigabytes of activations, and
/// memory given back is page-faulted in and zeroed again on the next step (a quarter of a
/// CPU step's time). The process keeps its peak footprint, as PyTorch's caching allocator
/// does. Harmless when mimalloc is not the global allocator.
pub fn retain_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (the version libmimalloc-sys
    /// 0.1.49 builds): -1 = never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one integer option; mimalloc reads options on its own allocation paths.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

impl Kernels for Flex {
    fn conv_forward(x: FloatTensor<Self>, w: FloatTensor<Self>, geom: ConvGeom) -> FlexTensor {
        profile::time(
            || format!("conv forward, {}", geom.name()),
            || {
                let (x, w) = (F32::new(x), F32::new(w));
                let plan = geom.plan(x.dims(), w.dims::<4>()[0]);
                assert_eq!(w.dims(), plan.weight_shape(), "conv weight shape");
                tensor(
                    conv::forward(&plan, x.values(), w.values()),
                    &plan.out_shape(),
                )
            },
        )
    }

    fn conv_backward_input(
        dy: FloatTensor<Self>,
        w: FloatTensor<Self>,
        geom: ConvGeom,
        [h, width]: [usize; 2],
    ) -> FlexTensor {
        profile::time(
            || format!("conv input gradient, {}", geom.name()),
            || {
                let (dy, w) = (F32::new(dy), F32::new(w));
                let [n, cout, _, _] = dy.dims();
                let [_, per_group, _, _] = w.dims();
                let cin = if geom.depthwise { cout } else { per_group };
                let plan = geom.plan([n, cin, h, width], cout);
                assert_eq!(dy.dims(), plan.out_shape(), "conv output gradient shape");
                tensor(
                    conv::backward_input(&plan, dy.values(), w.values()),
                    &[n, cin, h, width],
                )
            },
        )
    }

    fn conv_backward_weight(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        geom: ConvGeom,
    ) -> FlexTensor {
        profile::time(
            || format!("conv weight gradient, {}", geom.name()),
            || {
                let (x, dy) = (F32::new(x), F32::new(dy));
                let plan = geom.plan(x.dims(), dy.dims::<4>()[1]);
                assert_eq!(dy.dims(), plan.out_shape(), "conv output gradient shape");
                tensor(
                    conv::backward_weight(&plan, x.values(), dy.values()),
                    &plan.weight_shape(),
                )
            },
        )
    }

    fn bn_act_forward(
        c: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (c, gamma, beta) = (F32::new(c), F32::new(gamma), F32::new(beta));
        let shape = c.dims::<4>();
        let (y, mean, var) = profile::time(
            || "BatchNorm + activation forward".into(),
            || {
                norm::bn_forward(
                    shape,
                    c.values(),
                    gamma.values(),
                    beta.values(),
                    epsilon,
                    act,
                )
            },
        );
        (
            tensor(y, &shape),
            tensor(mean, &[shape[1]]),
            tensor(var, &[shape[1]]),
        )
    }

    fn bn_act_backward(
        dy: FloatTensor<Self>,
        c: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let c = F32::new(c);
        let (gamma, beta) = (F32::new(gamma), F32::new(beta));
        let (mean, var) = (F32::new(mean), F32::new(var));
        let shape = c.dims::<4>();
        assert_eq!(
            dy.shape().as_slice(),
            shape,
            "BatchNorm output gradient shape"
        );
        let (dc, dgamma, dbeta) = profile::time(
            || "BatchNorm + activation backward".into(),
            || {
                norm::bn_backward(
                    shape,
                    owned(dy),
                    c.values(),
                    gamma.values(),
                    beta.values(),
                    mean.values(),
                    var.values(),
                    epsilon,
                    act,
                )
            },
        );
        (
            tensor(dc, &shape),
            tensor(dgamma, &[shape[1]]),
            tensor(dbeta, &[shape[1]]),
        )
    }

    fn affine_act_forward(
        c: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        act: Act,
    ) -> FlexTensor {
        let (c, scale, shift) = (F32::new(c), F32::new(scale), F32::new(shift));
        let shape = c.dims::<4>();
        tensor(
            profile::time(
                || "folded BatchNorm + activation forward".into(),
                || norm::affine_forward(shape, c.values(), scale.values(), shift.values(), act),
            ),
            &shape,
        )
    }

    fn affine_act_backward(
        dy: FloatTensor<Self>,
        c: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        act: Act,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let c = F32::new(c);
        let (scale, shift) = (F32::new(scale), F32::new(shift));
        let shape = c.dims::<4>();
        assert_eq!(dy.shape().as_slice(), shape, "affine output gradient shape");
        let (dc, dscale, dshift) = profile::time(
            || "folded BatchNorm + activation backward".into(),
            || {
                norm::affine_backward(
                    shape,
                    owned(dy),
                    c.values(),
                    scale.values(),
                    shift.values(),
                    act,
                )
            },
        );
        (
            tensor(dc, &shape),
            tensor(dscale, &[shape[1]]),
            tensor(dshift, &[shape[1]]),
        )
    }

    // The small ops of squeeze-excite and the head run on flex's own tensor ops (no autotune
    // on the CPU; a few microseconds per step).
    fn dense_forward(x: FlexTensor, w: FlexTensor, b: FlexTensor) -> FlexTensor {
        let (x, w, b) = (
            float::<Self, 2>(x),
            float::<Self, 2>(w),
            float::<Self, 1>(b),
        );
        prim(x.matmul(w.transpose()) + b.unsqueeze_dim(0))
    }

    fn dense_backward(
        dy: FlexTensor,
        x: FlexTensor,
        w: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dy = float::<Self, 2>(dy);
        let cout = dy.dims()[1];
        (
            prim(dy.clone().matmul(float::<Self, 2>(w))),
            prim(dy.clone().transpose().matmul(float::<Self, 2>(x))),
            prim(dy.sum_dim(0).reshape([cout])),
        )
    }

    fn plane_mean(x: FlexTensor) -> FlexTensor {
        let x = float::<Self, 4>(x);
        let [n, c, h, w] = x.dims();
        prim(x.reshape([n, c, h * w]).mean_dim(2).reshape([n, c]))
    }

    fn plane_mean_backward(dy: FlexTensor, [h, w]: [usize; 2]) -> FlexTensor {
        let dy = float::<Self, 2>(dy);
        let [n, c] = dy.dims();
        prim(
            dy.div_scalar((h * w) as f32)
                .reshape([n, c, 1])
                .repeat_dim(2, h * w)
                .reshape([n, c, h, w]),
        )
    }

    fn scale_planes(x: FlexTensor, s: FlexTensor) -> FlexTensor {
        let (x, s) = (float::<Self, 4>(x), float::<Self, 2>(s));
        let [n, c, _, _] = x.dims();
        prim(x * s.reshape([n, c, 1, 1]))
    }

    fn scale_planes_backward(
        dy: FlexTensor,
        x: FlexTensor,
        s: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let (dy, x, s) = (
            float::<Self, 4>(dy),
            float::<Self, 4>(x),
            float::<Self, 2>(s),
        );
        let [n, c, h, w] = x.dims();
        (
            prim(dy.clone() * s.reshape([n, c, 1, 1])),
            prim((dy * x).reshape([n, c, h * w]).sum_dim(2).reshape([n, c])),
        )
    }
}
