//! [`Kernels`] for burn's CubeCL backends (CUDA, wgpu), on the plain `CubeBackend` (burn's
//! fusion wrapper does not take custom ops):
//!
//! * depthwise convolutions and BatchNorm + activation run hbac's own kernels ([`kernels`]),
//!   one launch per pass: burn 0.21 sends grouped convolutions to a naive direct kernel and
//!   computes the depthwise weight gradient with one launch per channel;
//! * dense convolutions run as GEMMs over hbac's im2col / col2im kernels, pointwise ones as
//!   GEMMs over the input itself, on hbac's tiled GEMM kernel. burn-cubecl 0.21's `conv2d`
//!   and `matmul` are not used here: on wgpu (lavapipe) both compute some shapes wrong: a 1×1
//!   convolution from 8 to 32 channels over 32 × 24, the input gradient of any strided 1×1
//!   convolution, a batch-2 `[8, 72] · [72, 768]` product (the first two are in the tests).

mod kernels;
#[cfg(all(test, feature = "wgpu"))]
mod tests;

use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::{Act, ConvGeom, ConvPlan, Kernels};

/// Units per cube of the per-channel reductions.
const REDUCE_CUBE: u32 = 256;

/// Values one cube of a split reduction takes (about), and the most splits of one reduction:
/// a 16-channel BatchNorm over 64 × 200 × 150 values runs 16 × 256 cubes instead of 16.
const SPLIT_CHUNK: usize = 4096;
const MAX_SPLITS: usize = 256;

/// `(chunk, splits)` for a reduction over `total` values: every split non-empty.
fn split(total: usize) -> (u32, u32) {
    let splits = total.div_ceil(SPLIT_CHUNK).clamp(1, MAX_SPLITS);
    (total.div_ceil(splits) as u32, splits as u32)
}

/// `Σ_r part[r]` of a `[rows, len…]` tensor, shaped `shape` (`len` elements).
fn sum_rows<R: CubeRuntime>(part: CubeTensor<R>, rows: usize, shape: &[usize]) -> CubeTensor<R> {
    if rows == 1 {
        return reshaped(part, shape);
    }
    let out = empty(&part, shape);
    let (count, dim) = elementwise(&out);
    kernels::sum_rows::launch::<R>(
        &part.client,
        count,
        dim,
        part.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        rows as u32,
        part.dtype.into(),
    );
    out
}

fn act_code(act: Act) -> u32 {
    match act {
        Act::Identity => kernels::IDENTITY,
        Act::Relu => kernels::RELU,
        Act::HardSwish => kernels::HARD_SWISH,
        Act::Swish => kernels::SWISH,
        Act::HardSigmoid => kernels::HARD_SIGMOID,
        Act::Sigmoid => kernels::SIGMOID,
    }
}

fn dims4<R: CubeRuntime>(t: &CubeTensor<R>) -> [usize; 4] {
    t.shape().dims::<4>()
}

fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: &[usize]) -> CubeTensor<R> {
    empty_device_dtype::<R>(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape.to_vec()),
        like.dtype,
    )
}

/// Cube dimension and count for one unit per element of `out`.
fn elementwise<R: CubeRuntime>(out: &CubeTensor<R>) -> (CubeCount, CubeDim) {
    let units = out.shape().num_elements();
    let dim = CubeDim::new(&out.client, units);
    (calculate_cube_count_elemwise(&out.client, units, dim), dim)
}

/// Side of the GEMM kernel's square tiles.
const GEMM_TILE: u32 = 16;

/// A GEMM operand: a contiguous tensor read as a batch of matrices through
/// `[batch, row, column]` strides.
struct Operand<R: CubeRuntime> {
    tensor: CubeTensor<R>,
    strides: [usize; 3],
}

/// `out[z] = a[z] · b[z]` for `batches` products of `m × k` by `k × n` (`[batches, m, n]`), or
/// with `sum_batches` their sum (`[m, n]`: the products in parallel, then [`sum_rows`]), on
/// [`kernels::gemm`].
fn gemm<R: CubeRuntime>(
    a: Operand<R>,
    b: Operand<R>,
    [batches, m, n, k]: [usize; 4],
    sum_batches: bool,
) -> CubeTensor<R> {
    if sum_batches && batches > 1 {
        let part = gemm(a, b, [batches, m, n, k], false);
        return sum_rows(part, batches, &[m, n]);
    }
    let shape: &[usize] = if sum_batches {
        &[m, n]
    } else {
        &[batches, m, n]
    };
    let out = empty(&a.tensor, shape);
    let tiles = |v: usize| v.div_ceil(GEMM_TILE as usize) as u32;
    let z = if sum_batches { 1 } else { batches as u32 };
    let [ab, ar, ac] = a.strides.map(|v| v as u32);
    let [bb, br, bc] = b.strides.map(|v| v as u32);
    kernels::gemm::launch::<R>(
        &a.tensor.client,
        CubeCount::Static(tiles(n), tiles(m), z),
        CubeDim::new_2d(GEMM_TILE, GEMM_TILE),
        a.tensor.clone().into_tensor_arg(),
        b.tensor.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        batches as u32,
        m as u32,
        n as u32,
        k as u32,
        ab,
        ar,
        ac,
        bb,
        br,
        bc,
        GEMM_TILE,
        sum_batches,
        a.tensor.dtype.into(),
    );
    out
}

/// The im2col matrix of a dense convolution's input, `[N, cin·k·k, Ho·Wo]` (for a pointwise
/// convolution, the input itself, which already is `[N, cin, H·W]`).
fn columns<R: CubeRuntime>(x: CubeTensor<R>, plan: &ConvPlan) -> CubeTensor<R> {
    let x = into_contiguous(x);
    if plan.geom.is_pointwise() {
        return x;
    }
    let k = plan.geom.kernel;
    let col = empty(&x, &[plan.n, plan.cin * k * k, plan.out_plane()]);
    let (count, dim) = elementwise(&col);
    kernels::im2col::launch::<R>(
        &x.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        col.clone().into_tensor_arg(),
        geometry(plan),
        k as u32,
        x.dtype.into(),
    );
    col
}

/// The plan's geometry for the convolution kernels ([`kernels::Geometry`]).
fn geometry<R: CubeRuntime>(plan: &ConvPlan) -> kernels::GeometryLaunch<R> {
    kernels::GeometryLaunch::new(
        plan.cin as u32,
        plan.h as u32,
        plan.w as u32,
        plan.ho as u32,
        plan.wo as u32,
        plan.geom.stride as u32,
        plan.pad_top as u32,
        plan.pad_left as u32,
    )
}

/// A contiguous tensor with a new shape (same values, no copy).
fn reshaped<R: CubeRuntime>(t: CubeTensor<R>, shape: &[usize]) -> CubeTensor<R> {
    let t = into_contiguous(t);
    CubeTensor::new_contiguous(
        t.client.clone(),
        t.device.clone(),
        Shape::from(shape.to_vec()),
        t.handle.clone(),
        t.dtype,
    )
}

impl<R, F, I, BT> Kernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn conv_forward(x: FloatTensor<Self>, w: FloatTensor<Self>, geom: ConvGeom) -> CubeTensor<R> {
        let plan = geom.plan(dims4(&x), dims4(&w)[0]);
        if !geom.depthwise {
            // [cout, cin·k·k] · [N, cin·k·k, P] = [N, cout, P]
            let (rows, p) = (plan.cin * geom.kernel * geom.kernel, plan.out_plane());
            let w = Operand {
                tensor: into_contiguous(w),
                strides: [0, rows, 1],
            };
            let col = Operand {
                tensor: columns(x, &plan),
                strides: [rows * p, p, 1],
            };
            let y = gemm(w, col, [plan.n, plan.cout, p, rows], false);
            return reshaped(y, &plan.out_shape());
        }
        let (x, w) = (into_contiguous(x), into_contiguous(w));
        let y = empty(&x, &plan.out_shape());
        let (count, dim) = elementwise(&y);
        kernels::dw_forward::launch::<R>(
            &x.client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            w.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            geometry(&plan),
            geom.kernel as u32,
            x.dtype.into(),
        );
        y
    }

    fn conv_backward_input(
        dy: FloatTensor<Self>,
        w: FloatTensor<Self>,
        geom: ConvGeom,
        [h, width]: [usize; 2],
    ) -> CubeTensor<R> {
        let [n, cout, _, _] = dims4(&dy);
        let cin = if geom.depthwise { cout } else { dims4(&w)[1] };
        let plan = geom.plan([n, cin, h, width], cout);
        if !geom.depthwise {
            // dcol = wᵀ [cin·k·k, cout] · dy [N, cout, P], then back onto the input.
            let (rows, p) = (cin * geom.kernel * geom.kernel, plan.out_plane());
            let wt = Operand {
                tensor: into_contiguous(w),
                strides: [0, 1, rows],
            };
            let dy = Operand {
                tensor: into_contiguous(dy),
                strides: [cout * p, p, 1],
            };
            let dcol = gemm(wt, dy, [n, rows, p, cout], false);
            if geom.is_pointwise() {
                return reshaped(dcol, &[n, cin, h, width]);
            }
            let dx = empty(&dcol, &[n, cin, h, width]);
            let (count, dim) = elementwise(&dx);
            kernels::col2im::launch::<R>(
                &dcol.client,
                count,
                dim,
                dcol.clone().into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                geometry(&plan),
                geom.kernel as u32,
                dcol.dtype.into(),
            );
            return dx;
        }
        let (dy, w) = (into_contiguous(dy), into_contiguous(w));
        let dx = empty(&dy, &[n, cin, h, width]);
        let (count, dim) = elementwise(&dx);
        kernels::dw_backward_input::launch::<R>(
            &dy.client,
            count,
            dim,
            dy.clone().into_tensor_arg(),
            w.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            geometry(&plan),
            geom.kernel as u32,
            dy.dtype.into(),
        );
        dx
    }

    fn conv_backward_weight(
        x: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        geom: ConvGeom,
    ) -> CubeTensor<R> {
        let plan = geom.plan(dims4(&x), dims4(&dy)[1]);
        if !geom.depthwise {
            // Σ_n dy [cout, P] · colᵀ [P, cin·k·k]
            let (rows, p) = (plan.cin * geom.kernel * geom.kernel, plan.out_plane());
            let dy = Operand {
                tensor: into_contiguous(dy),
                strides: [plan.cout * p, p, 1],
            };
            let colt = Operand {
                tensor: columns(x, &plan),
                strides: [rows * p, 1, p],
            };
            let dw = gemm(dy, colt, [plan.n, plan.cout, rows, p], true);
            return reshaped(dw, &plan.weight_shape());
        }
        let (x, dy) = (into_contiguous(x), into_contiguous(dy));
        let k = geom.kernel;
        let (chunk, splits) = split(plan.n * plan.out_plane());
        let part = empty(&x, &[splits as usize, plan.cin * k * k]);
        kernels::dw_backward_weight::launch::<R>(
            &x.client,
            CubeCount::Static(plan.cin as u32, (k * k) as u32, splits),
            CubeDim::new_1d(REDUCE_CUBE),
            x.clone().into_tensor_arg(),
            dy.into_tensor_arg(),
            part.clone().into_tensor_arg(),
            plan.n as u32,
            geometry(&plan),
            chunk,
            k as u32,
            REDUCE_CUBE,
            x.dtype.into(),
        );
        sum_rows(part, splits as usize, &plan.weight_shape())
    }

    fn bn_act_forward(
        c: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        act: Act,
    ) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
        let (c, gamma, beta) = (
            into_contiguous(c),
            into_contiguous(gamma),
            into_contiguous(beta),
        );
        let [n, ch, h, w] = dims4(&c);
        let (chunk, splits) = split(n * h * w);
        let part = empty(&c, &[2 * splits as usize * ch]);
        kernels::bn_partial::launch::<R>(
            &c.client,
            CubeCount::Static(ch as u32, splits, 1),
            CubeDim::new_1d(REDUCE_CUBE),
            c.clone().into_tensor_arg(),
            part.clone().into_tensor_arg(),
            n as u32,
            ch as u32,
            (h * w) as u32,
            chunk,
            splits,
            REDUCE_CUBE,
            c.dtype.into(),
        );
        let stats = empty(&c, &[4 * ch]);
        let dim = CubeDim::new(&c.client, ch);
        kernels::bn_combine::launch::<R>(
            &c.client,
            calculate_cube_count_elemwise(&c.client, ch, dim),
            dim,
            part.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            n as u32,
            ch as u32,
            (h * w) as u32,
            chunk,
            splits,
            epsilon as f32,
            c.dtype.into(),
        );
        let y = affine(&c, &stats, 2 * ch, &stats, 3 * ch, act);
        (
            y,
            run::<Self, R>(&stats, 0, ch),
            run::<Self, R>(&stats, 1, ch),
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
    ) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
        norm_backward::<R, F, I, BT>(dy, c, [gamma, beta], Some((mean, var, epsilon)), act)
    }

    fn affine_act_forward(
        c: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        act: Act,
    ) -> CubeTensor<R> {
        let c = into_contiguous(c);
        affine(
            &c,
            &into_contiguous(scale),
            0,
            &into_contiguous(shift),
            0,
            act,
        )
    }

    fn affine_act_backward(
        dy: FloatTensor<Self>,
        c: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        act: Act,
    ) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
        norm_backward::<R, F, I, BT>(dy, c, [scale, shift], None, act)
    }

    fn dense_forward(x: CubeTensor<R>, w: CubeTensor<R>, b: CubeTensor<R>) -> CubeTensor<R> {
        let [n, cin] = x.shape().dims::<2>();
        let cout = w.shape()[0];
        // [N, cin] · wᵀ [cin, cout]
        let y = gemm(
            Operand {
                tensor: into_contiguous(x),
                strides: [0, cin, 1],
            },
            Operand {
                tensor: into_contiguous(w),
                strides: [0, 1, cin],
            },
            [1, n, cout, cin],
            false,
        );
        let y = Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(reshaped(y, &[n, cout])));
        let b = Tensor::<Self, 1>::from_primitive(TensorPrimitive::Float(b));
        (y + b.unsqueeze_dim(0)).into_primitive().tensor()
    }

    fn dense_backward(
        dy: CubeTensor<R>,
        x: CubeTensor<R>,
        w: CubeTensor<R>,
    ) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
        let [n, cout] = dy.shape().dims::<2>();
        let cin = x.shape()[1];
        let dy = into_contiguous(dy);
        let dyo = |strides| Operand {
            tensor: dy.clone(),
            strides,
        };
        // dx = dy [N, cout] · w [cout, cin]; dw = dyᵀ [cout, N] · x [N, cin]; db = Σ_n dy
        let dx = gemm(
            dyo([0, cout, 1]),
            Operand {
                tensor: into_contiguous(w),
                strides: [0, cin, 1],
            },
            [1, n, cin, cout],
            false,
        );
        let dw = gemm(
            dyo([0, 1, cout]),
            Operand {
                tensor: into_contiguous(x),
                strides: [0, cin, 1],
            },
            [1, cout, cin, n],
            false,
        );
        (
            reshaped(dx, &[n, cin]),
            reshaped(dw, &[cout, cin]),
            sum_rows(dy.clone(), n, &[cout]),
        )
    }

    fn plane_mean(x: CubeTensor<R>) -> CubeTensor<R> {
        let x = into_contiguous(x);
        let [n, c, h, w] = dims4(&x);
        row_sum(&x, &x, &[n, c], h * w, 1.0 / (h * w) as f32, false)
    }

    fn plane_mean_backward(dy: CubeTensor<R>, [h, w]: [usize; 2]) -> CubeTensor<R> {
        let dy = into_contiguous(dy);
        let [n, c] = dy.shape().dims::<2>();
        plane_scale(&dy, &dy, &[n, c, h, w], 1.0 / (h * w) as f32, false)
    }

    fn scale_planes(x: CubeTensor<R>, s: CubeTensor<R>) -> CubeTensor<R> {
        let x = into_contiguous(x);
        plane_scale(&x, &into_contiguous(s), &dims4(&x), 1.0, true)
    }

    fn scale_planes_backward(
        dy: CubeTensor<R>,
        x: CubeTensor<R>,
        s: CubeTensor<R>,
    ) -> (CubeTensor<R>, CubeTensor<R>) {
        let (dy, x) = (into_contiguous(dy), into_contiguous(x));
        let [n, c, h, w] = dims4(&x);
        (
            plane_scale(&dy, &into_contiguous(s), &[n, c, h, w], 1.0, true),
            row_sum(&dy, &x, &[n, c], h * w, 1.0, true),
        )
    }
}

/// [`kernels::row_sum`]: `scale · Σ` over rows of `len` (of `a · b` with `product`), shaped
/// `shape`.
fn row_sum<R: CubeRuntime>(
    a: &CubeTensor<R>,
    b: &CubeTensor<R>,
    shape: &[usize],
    len: usize,
    scale: f32,
    product: bool,
) -> CubeTensor<R> {
    let out = empty(a, shape);
    let (count, dim) = elementwise(&out);
    kernels::row_sum::launch::<R>(
        &a.client,
        count,
        dim,
        a.clone().into_tensor_arg(),
        b.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        len as u32,
        scale,
        product,
        a.dtype.into(),
    );
    out
}

/// [`kernels::plane_scale`]: `scale · s` spread over planes of `shape` (times `x` with
/// `times_x`).
fn plane_scale<R: CubeRuntime>(
    x: &CubeTensor<R>,
    s: &CubeTensor<R>,
    shape: &[usize],
    scale: f32,
    times_x: bool,
) -> CubeTensor<R> {
    let out = empty(s, shape);
    let len = shape[2] * shape[3];
    let (count, dim) = elementwise(&out);
    kernels::plane_scale::launch::<R>(
        &s.client,
        count,
        dim,
        x.clone().into_tensor_arg(),
        s.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        len as u32,
        scale,
        times_x,
        s.dtype.into(),
    );
    out
}

/// `act(scale · c + shift)` per channel, `scale` and `shift` read at their offsets.
fn affine<R: CubeRuntime>(
    c: &CubeTensor<R>,
    scale: &CubeTensor<R>,
    scale_offset: usize,
    shift: &CubeTensor<R>,
    shift_offset: usize,
    act: Act,
) -> CubeTensor<R> {
    let [_, ch, h, w] = dims4(c);
    let y = empty(c, &dims4(c));
    let (count, dim) = elementwise(&y);
    kernels::affine_act::launch::<R>(
        &c.client,
        count,
        dim,
        c.clone().into_tensor_arg(),
        scale.clone().into_tensor_arg(),
        shift.clone().into_tensor_arg(),
        y.clone().into_tensor_arg(),
        ch as u32,
        (h * w) as u32,
        scale_offset as u32,
        shift_offset as u32,
        act_code(act),
        c.dtype.into(),
    );
    y
}

/// The backward of BatchNorm (`batch` = its mean, variance and epsilon; `params` = gamma,
/// beta) or of the folded affine (`params` = scale, shift) with the activation: three launches
/// (split sums, per-channel coefficients, the elementwise gradient).
fn norm_backward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    dy: CubeTensor<R>,
    c: CubeTensor<R>,
    [p0, p1]: [CubeTensor<R>; 2],
    batch: Option<(CubeTensor<R>, CubeTensor<R>, f64)>,
    act: Act,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let (dy, c) = (into_contiguous(dy), into_contiguous(c));
    let (p0, p1) = (into_contiguous(p0), into_contiguous(p1));
    let [n, ch, h, w] = dims4(&c);
    let (mean, var, epsilon, batch_stats) = match batch {
        Some((m, v, e)) => (into_contiguous(m), into_contiguous(v), e, true),
        None => (p0.clone(), p1.clone(), 0.0, false),
    };
    let (chunk, splits) = split(n * h * w);
    let part = empty(&c, &[2 * splits as usize * ch]);
    kernels::grad_partial::launch::<R>(
        &c.client,
        CubeCount::Static(ch as u32, splits, 1),
        CubeDim::new_1d(REDUCE_CUBE),
        dy.clone().into_tensor_arg(),
        c.clone().into_tensor_arg(),
        p0.clone().into_tensor_arg(),
        p1.clone().into_tensor_arg(),
        mean.clone().into_tensor_arg(),
        var.clone().into_tensor_arg(),
        part.clone().into_tensor_arg(),
        n as u32,
        ch as u32,
        (h * w) as u32,
        chunk,
        splits,
        epsilon as f32,
        act_code(act),
        batch_stats,
        REDUCE_CUBE,
        c.dtype.into(),
    );
    let coef = empty(&c, &[8 * ch]);
    let dim = CubeDim::new(&c.client, ch);
    kernels::grad_coef::launch::<R>(
        &c.client,
        calculate_cube_count_elemwise(&c.client, ch, dim),
        dim,
        part.into_tensor_arg(),
        p0.into_tensor_arg(),
        p1.into_tensor_arg(),
        mean.into_tensor_arg(),
        var.into_tensor_arg(),
        coef.clone().into_tensor_arg(),
        n as u32,
        ch as u32,
        (h * w) as u32,
        splits,
        epsilon as f32,
        batch_stats,
        c.dtype.into(),
    );
    let dx = empty(&c, &[n, ch, h, w]);
    let (count, dim) = elementwise(&dx);
    kernels::grad_apply::launch::<R>(
        &c.client,
        count,
        dim,
        dy.into_tensor_arg(),
        c.clone().into_tensor_arg(),
        coef.clone().into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        ch as u32,
        (h * w) as u32,
        act_code(act),
        c.dtype.into(),
    );
    (
        dx,
        run::<CubeBackend<R, F, I, BT>, R>(&coef, 6, ch),
        run::<CubeBackend<R, F, I, BT>, R>(&coef, 7, ch),
    )
}

/// The `i`-th `len`-long run of a 1-d tensor, contiguous.
fn run<B: burn::tensor::backend::Backend<FloatTensorPrimitive = CubeTensor<R>>, R: CubeRuntime>(
    t: &CubeTensor<R>,
    i: usize,
    len: usize,
) -> CubeTensor<R> {
    let t = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t.clone()));
    into_contiguous(t.narrow(0, i * len, len).into_primitive().tensor())
}
