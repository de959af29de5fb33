//! The CubeCL kernels: a tiled batched GEMM, im2col / col2im, depthwise convolution
//! (forward, input gradient, weight gradient) and BatchNorm + activation (statistics, apply,
//! gradient sums, gradient apply). Tensors are contiguous NCHW; shapes arrive as runtime
//! scalars, the kernel size and the activation as compile-time values (one compiled kernel
//! per kind of layer). Gathers instead of scatters throughout: no atomics, deterministic.

// The `#[cube]` macro translates operators, not `usize::is_multiple_of`.
#![allow(clippy::manual_is_multiple_of)]

use cubecl::prelude::*;

/// Activation codes (compile-time kernel parameters).
pub const IDENTITY: u32 = 0;
pub const RELU: u32 = 1;
pub const HARD_SWISH: u32 = 2;
pub const SWISH: u32 = 3;
pub const HARD_SIGMOID: u32 = 4;
pub const SIGMOID: u32 = 5;

/// A convolution's geometry as the kernels see it (filled on the host by
/// `super::geometry`): channels, the input plane `h × w`, the output plane `ho × wo`, the
/// stride and the padding before the first row and column. The kernel size is compile-time.
#[derive(CubeLaunch, CubeType)]
pub struct Geometry {
    pub channels: u32,
    pub h: u32,
    pub w: u32,
    pub ho: u32,
    pub wo: u32,
    pub stride: u32,
    pub pad_top: u32,
    pub pad_left: u32,
}

#[cube]
fn sigmoid<F: Float>(z: F) -> F {
    F::new(1.0) / (F::new(1.0) + (-z).exp())
}

/// The activation at `z`.
#[cube]
fn act_eval<F: Float>(z: F, #[comptime] act: u32) -> F {
    let mut y = z;
    if comptime![act == RELU] {
        y = z.max(F::new(0.0));
    } else if comptime![act == HARD_SWISH] {
        y = z * (z * F::new(1.0 / 6.0) + F::new(0.5)).clamp(F::new(0.0), F::new(1.0));
    } else if comptime![act == SWISH] {
        y = z * sigmoid::<F>(z);
    } else if comptime![act == HARD_SIGMOID] {
        y = (z * F::new(1.0 / 6.0) + F::new(0.5)).clamp(F::new(0.0), F::new(1.0));
    } else if comptime![act == SIGMOID] {
        y = sigmoid::<F>(z);
    }
    y
}

/// The derivative of the activation at `z`.
#[cube]
fn act_grad<F: Float>(z: F, #[comptime] act: u32) -> F {
    let mut d = F::new(1.0);
    if comptime![act == RELU] {
        d = select(z > F::new(0.0), F::new(1.0), F::new(0.0));
    } else if comptime![act == HARD_SWISH] {
        d = select(
            z <= F::new(-3.0),
            F::new(0.0),
            select(
                z >= F::new(3.0),
                F::new(1.0),
                z * F::new(1.0 / 3.0) + F::new(0.5),
            ),
        );
    } else if comptime![act == SWISH] {
        let s = sigmoid::<F>(z);
        d = s * (F::new(1.0) + z * (F::new(1.0) - s));
    } else if comptime![act == HARD_SIGMOID] {
        d = select(
            z > F::new(-3.0) && z < F::new(3.0),
            F::new(1.0 / 6.0),
            F::new(0.0),
        );
    } else if comptime![act == SIGMOID] {
        let s = sigmoid::<F>(z);
        d = s * (F::new(1.0) - s);
    }
    d
}

/// A batched matrix product over strided operands, tiled in shared memory: for each batch
/// `z`, `out[z] = a[z] · b[z]` (`m × k` by `k × n`, `out` row-major `m × n`); element `(i, j)`
/// of `a[z]` is `a[z · a_batch + i · a_row + j · a_col]` (a batch stride of 0 broadcasts), the
/// same for `b`. With `sum_batches`, `out` is one `m × n` matrix, `Σ_z a[z] · b[z]`. One cube
/// of `tile × tile` units per output tile (and batch).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn gemm<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    out: &mut Tensor<F>,
    batches: u32,
    m: u32,
    n: u32,
    k: u32,
    a_batch: u32,
    a_row: u32,
    a_col: u32,
    b_batch: u32,
    b_row: u32,
    b_col: u32,
    #[comptime] tile: u32,
    #[comptime] sum_batches: bool,
    #[define(F)] _dtype: StorageType,
) {
    let t = tile as usize;
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let ty = UNIT_POS_Y as usize;
    let tx = UNIT_POS_X as usize;
    let row = CUBE_POS_Y as usize * t + ty;
    let col = CUBE_POS_X as usize * t + tx;
    let (a_batch, a_row, a_col) = (a_batch as usize, a_row as usize, a_col as usize);
    let (b_batch, b_row, b_col) = (b_batch as usize, b_row as usize, b_col as usize);
    let mut tile_a = SharedMemory::<F>::new(tile as usize * tile as usize);
    let mut tile_b = SharedMemory::<F>::new(tile as usize * tile as usize);
    let mut first = CUBE_POS_Z as usize;
    let mut last = first + 1;
    if comptime![sum_batches] {
        first = 0;
        last = batches as usize;
    }
    let mut acc = F::new(0.0);
    for z in first..last {
        let mut k0 = 0;
        while k0 < k {
            let ka = k0 + tx;
            let mut va = F::new(0.0);
            if row < m && ka < k {
                va = a[z * a_batch + row * a_row + ka * a_col];
            }
            tile_a[ty * t + tx] = va;
            let kb = k0 + ty;
            let mut vb = F::new(0.0);
            if kb < k && col < n {
                vb = b[z * b_batch + kb * b_row + col * b_col];
            }
            tile_b[ty * t + tx] = vb;
            sync_cube();
            #[unroll]
            for i in 0..tile {
                acc += tile_a[ty * t + i as usize] * tile_b[i as usize * t + tx];
            }
            sync_cube();
            k0 += t;
        }
    }
    if row < m && col < n {
        let mut base = CUBE_POS_Z as usize * m * n;
        if comptime![sum_batches] {
            base = 0;
        }
        out[base + row * n + col] = acc;
    }
}

/// im2col: `col[n, (ci, kh, kw), (oh, ow)]` = the input under that tap, zero in the padding;
/// one unit per element of `col`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn im2col<F: Float>(
    x: &Tensor<F>,
    col: &mut Tensor<F>,
    g: Geometry,
    #[comptime] k: u32,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= col.len() {
        terminate!();
    }
    let (h, width, ho, wo) = (g.h as usize, g.w as usize, g.ho as usize, g.wo as usize);
    let (s, pt, pl) = (g.stride as usize, g.pad_top as usize, g.pad_left as usize);
    let cin = g.channels;
    let kk = (k * k) as usize;
    let i = ABSOLUTE_POS;
    let p = ho * wo;
    let q = i % p;
    let r = (i / p) % (cin as usize * kk);
    let n = i / (p * cin as usize * kk);
    let ci = r / kk;
    let kh = (r % kk) / k as usize;
    let kw = r % k as usize;
    let ih = (q / wo) * s + kh;
    let iw = (q % wo) * s + kw;
    let mut v = F::new(0.0);
    if ih >= pt && ih - pt < h && iw >= pl && iw - pl < width {
        v = x[((n * cin as usize + ci) * h + ih - pt) * width + iw - pl];
    }
    col[i] = v;
}

/// col2im: the input gradient from `dcol` (laid out as [`im2col`]'s output), one unit per
/// input element gathering the taps that read it.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn col2im<F: Float>(
    dcol: &Tensor<F>,
    dx: &mut Tensor<F>,
    g: Geometry,
    #[comptime] k: u32,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= dx.len() {
        terminate!();
    }
    let (h, width, ho, wo) = (g.h as usize, g.w as usize, g.ho as usize, g.wo as usize);
    let (s, pt, pl) = (g.stride as usize, g.pad_top as usize, g.pad_left as usize);
    let cin = g.channels;
    let kk = (k * k) as usize;
    let i = ABSOLUTE_POS;
    let iw = i % width;
    let ih = (i / width) % h;
    let ci = (i / (width * h)) % cin as usize;
    let n = i / (width * h * cin as usize);
    let (ph, pw) = (ih + pt, iw + pl);
    let p = ho * wo;
    let base = (n * cin as usize + ci) * kk;
    let mut acc = F::new(0.0);
    #[unroll]
    for kh in 0..k {
        let kh_ = kh as usize;
        if ph >= kh_ && (ph - kh_) % s == 0 && (ph - kh_) / s < ho {
            let oh = (ph - kh_) / s;
            #[unroll]
            for kw in 0..k {
                let kw_ = kw as usize;
                if pw >= kw_ && (pw - kw_) % s == 0 && (pw - kw_) / s < wo {
                    let ow = (pw - kw_) / s;
                    acc += dcol[(base + (kh * k + kw) as usize) * p + oh * wo + ow];
                }
            }
        }
    }
    dx[i] = acc;
}

/// Depthwise forward: one unit per output element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dw_forward<F: Float>(
    x: &Tensor<F>,
    w: &Tensor<F>,
    y: &mut Tensor<F>,
    g: Geometry,
    #[comptime] k: u32,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= y.len() {
        terminate!();
    }
    let (h, width, ho, wo) = (g.h as usize, g.w as usize, g.ho as usize, g.wo as usize);
    let (s, pt, pl) = (g.stride as usize, g.pad_top as usize, g.pad_left as usize);
    let channels = g.channels;
    let i = ABSOLUTE_POS;
    let ow = i % wo;
    let oh = (i / wo) % ho;
    let plane = i / (wo * ho);
    let c = plane % channels as usize;
    let xb = plane * h * width;
    let wb = c * (k * k) as usize;
    let mut acc = F::new(0.0);
    #[unroll]
    for kh in 0..k {
        let ih = oh * s + kh as usize;
        if ih >= pt && ih - pt < h {
            #[unroll]
            for kw in 0..k {
                let iw = ow * s + kw as usize;
                if iw >= pl && iw - pl < width {
                    acc += w[wb + (kh * k + kw) as usize] * x[xb + (ih - pt) * width + iw - pl];
                }
            }
        }
    }
    y[i] = acc;
}

/// Depthwise input gradient: one unit per input element, gathering the outputs it fed.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dw_backward_input<F: Float>(
    dy: &Tensor<F>,
    w: &Tensor<F>,
    dx: &mut Tensor<F>,
    g: Geometry,
    #[comptime] k: u32,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= dx.len() {
        terminate!();
    }
    let (h, width, ho, wo) = (g.h as usize, g.w as usize, g.ho as usize, g.wo as usize);
    let (s, pt, pl) = (g.stride as usize, g.pad_top as usize, g.pad_left as usize);
    let channels = g.channels;
    let i = ABSOLUTE_POS;
    let iw = i % width;
    let ih = (i / width) % h;
    let plane = i / (width * h);
    let c = plane % channels as usize;
    let gb = plane * ho * wo;
    let wb = c * (k * k) as usize;
    let (ph, pw) = (ih + pt, iw + pl);
    let mut acc = F::new(0.0);
    #[unroll]
    for kh in 0..k {
        let kh_ = kh as usize;
        if ph >= kh_ && (ph - kh_) % s == 0 && (ph - kh_) / s < ho {
            let oh = (ph - kh_) / s;
            #[unroll]
            for kw in 0..k {
                let kw_ = kw as usize;
                if pw >= kw_ && (pw - kw_) % s == 0 && (pw - kw_) / s < wo {
                    let ow = (pw - kw_) / s;
                    acc += w[wb + (kh * k + kw) as usize] * dy[gb + oh * wo + ow];
                }
            }
        }
    }
    dx[i] = acc;
}

/// Depthwise weight gradient, first pass: one cube per (channel, tap, split); its units stride
/// over split `s`'s `chunk` of the batch × output plane, then reduce in shared memory into
/// `part[s · C·k·k + c · k·k + tap]` ([`sum_rows`] adds the splits).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn dw_backward_weight<F: Float>(
    x: &Tensor<F>,
    dy: &Tensor<F>,
    part: &mut Tensor<F>,
    batch: u32,
    g: Geometry,
    chunk: u32,
    #[comptime] k: u32,
    #[comptime] cube: u32,
    #[define(F)] _dtype: StorageType,
) {
    let (h, width, ho, wo) = (g.h as usize, g.w as usize, g.ho as usize, g.wo as usize);
    let (s, pt, pl) = (g.stride as usize, g.pad_top as usize, g.pad_left as usize);
    let channels = g.channels;
    let c = CUBE_POS_X as usize;
    let tap = CUBE_POS_Y as usize;
    let split = CUBE_POS_Z as usize;
    let kk = (k * k) as usize;
    let kh = tap / k as usize;
    let kw = tap % k as usize;
    let per_plane = ho * wo;
    let total = batch as usize * per_plane;
    let start = split * chunk as usize;
    let mut end = start + chunk as usize;
    if end > total {
        end = total;
    }
    let mut acc = F::new(0.0);
    let mut j = start + UNIT_POS_X as usize;
    while j < end {
        let n = j / per_plane;
        let o = j % per_plane;
        let oh = o / wo;
        let ow = o % wo;
        let ih = oh * s + kh;
        let iw = ow * s + kw;
        if ih >= pt && ih - pt < h && iw >= pl && iw - pl < width {
            let plane = n * channels as usize + c;
            acc += dy[plane * per_plane + o] * x[(plane * h + ih - pt) * width + iw - pl];
        }
        j += cube as usize;
    }
    let total = block_sum::<F>(acc, cube);
    if UNIT_POS_X == 0 {
        part[split * channels as usize * kk + c * kk + tap] = total;
    }
}

/// `out[i] = Σ_r part[r · len + i]` over `rows` rows, one unit per output element: the
/// second pass of the split reductions (summed GEMM batches, depthwise weight gradients).
#[cube(launch)]
pub fn sum_rows<F: Float>(
    part: &Tensor<F>,
    out: &mut Tensor<F>,
    rows: u32,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let len = out.len();
    let i = ABSOLUTE_POS;
    let mut acc = F::new(0.0);
    for r in 0..rows as usize {
        acc += part[r * len + i];
    }
    out[i] = acc;
}

/// The sum of `v` over the units of the cube (all units get it).
#[cube]
fn block_sum<F: Float>(v: F, #[comptime] cube: u32) -> F {
    let mut shared = SharedMemory::<F>::new(cube as usize);
    let u = UNIT_POS_X as usize;
    shared[u] = v;
    sync_cube();
    let mut half = CUBE_DIM_X as usize / 2;
    while half > 0 {
        if u < half {
            shared[u] = shared[u] + shared[u + half];
        }
        sync_cube();
        half /= 2;
    }
    shared[0]
}

/// The first and one-past-last index of split `split` (of `chunk` values each, the last
/// shorter) of `total` values.
#[cube]
fn split_range(split: usize, chunk: u32, total: usize) -> (usize, usize) {
    let start = split * chunk as usize;
    let mut end = start + chunk as usize;
    if end > total {
        end = total;
    }
    (start, end)
}

/// BatchNorm statistics, first pass: one cube per (channel `c`, split `s`) of the channel's
/// `batch · plane` values; writes the split's sum to `part[s · C + c]` and its sum of squared
/// deviations around its own mean to `part[(splits + s) · C + c]` (exact, like two passes over
/// the whole channel, and every cube of the GPU busy even for a 16-channel layer).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn bn_partial<F: Float>(
    x: &Tensor<F>,
    part: &mut Tensor<F>,
    batch: u32,
    channels: u32,
    plane: u32,
    chunk: u32,
    splits: u32,
    #[comptime] cube: u32,
    #[define(F)] _dtype: StorageType,
) {
    let c = CUBE_POS_X as usize;
    let split = CUBE_POS_Y as usize;
    let (cs, p) = (channels as usize, plane as usize);
    let (start, end) = split_range(split, chunk, batch as usize * p);
    let mut acc = F::new(0.0);
    let mut j = start + UNIT_POS_X as usize;
    while j < end {
        acc += x[((j / p) * cs + c) * p + j % p];
        j += cube as usize;
    }
    let sum = block_sum::<F>(acc, cube);
    let mean = sum / F::cast_from((end - start) as u32);
    sync_cube();
    let mut sq = F::new(0.0);
    let mut j = start + UNIT_POS_X as usize;
    while j < end {
        let d = x[((j / p) * cs + c) * p + j % p] - mean;
        sq += d * d;
        j += cube as usize;
    }
    let m2 = block_sum::<F>(sq, cube);
    if UNIT_POS_X == 0 {
        part[split * cs + c] = sum;
        part[(splits as usize + split) * cs + c] = m2;
    }
}

/// BatchNorm statistics, second pass: one unit per channel combines the splits (Chan et al.'s
/// parallel variance) and writes `stats[c] = mean`, `stats[C + c] = var`,
/// `stats[2C + c] = scale = gamma / sqrt(var + eps)`, `stats[3C + c] = shift`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn bn_combine<F: Float>(
    part: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    stats: &mut Tensor<F>,
    batch: u32,
    channels: u32,
    plane: u32,
    chunk: u32,
    splits: u32,
    epsilon: f32,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= channels as usize {
        terminate!();
    }
    let c = ABSOLUTE_POS;
    let cs = channels as usize;
    let total = batch as usize * plane as usize;
    let mut sum = F::new(0.0);
    for s in 0..splits as usize {
        sum += part[s * cs + c];
    }
    let mean = sum / F::cast_from(total as u32);
    let mut m2 = F::new(0.0);
    for s in 0..splits as usize {
        let (start, end) = split_range(s, chunk, total);
        let n = F::cast_from((end - start) as u32);
        let d = part[s * cs + c] / n - mean;
        m2 += part[(splits as usize + s) * cs + c] + n * d * d;
    }
    let var = m2 / F::cast_from(total as u32);
    let scale = gamma[c] / (var + F::cast_from(epsilon)).sqrt();
    stats[c] = mean;
    stats[cs + c] = var;
    stats[2 * cs + c] = scale;
    stats[3 * cs + c] = beta[c] - mean * scale;
}

/// `y = act(scale[c] · x + shift[c])`, one unit per element; `scale` and `shift` are read
/// from their tensors at the given offsets.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn affine_act<F: Float>(
    x: &Tensor<F>,
    scale: &Tensor<F>,
    shift: &Tensor<F>,
    y: &mut Tensor<F>,
    channels: u32,
    plane: u32,
    scale_offset: u32,
    shift_offset: u32,
    #[comptime] act: u32,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= y.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let c = (i / plane as usize) % channels as usize;
    let z = scale[scale_offset as usize + c] * x[i] + shift[shift_offset as usize + c];
    y[i] = act_eval::<F>(z, act);
}

/// The per-channel `scale, shift, centre, 1/std` of the BatchNorm (`batch_stats`: `p0`, `p1`
/// are gamma, beta) or folded affine (`p0`, `p1` are scale, shift) a gradient goes through.
#[cube]
#[allow(clippy::too_many_arguments)]
fn norm_coefs<F: Float>(
    p0: &Tensor<F>,
    p1: &Tensor<F>,
    mean: &Tensor<F>,
    var: &Tensor<F>,
    c: usize,
    epsilon: f32,
    #[comptime] batch_stats: bool,
) -> (F, F, F, F) {
    let mut scale = p0[c];
    let mut shift = p1[c];
    let mut centre = F::new(0.0);
    let mut invstd = F::new(1.0);
    if comptime![batch_stats] {
        invstd = F::new(1.0) / (var[c] + F::cast_from(epsilon)).sqrt();
        centre = mean[c];
        scale = p0[c] * invstd;
        shift = p1[c] - centre * scale;
    }
    (scale, shift, centre, invstd)
}

/// Gradient sums, first pass: one cube per (channel `c`, split `s`); with
/// `z = scale · x + shift` and `dz = dy · act'(z)`, writes the split's `Σ dz` to
/// `part[s · C + c]` and `Σ dz · (x − centre)` to `part[(splits + s) · C + c]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn grad_partial<F: Float>(
    dy: &Tensor<F>,
    x: &Tensor<F>,
    p0: &Tensor<F>,
    p1: &Tensor<F>,
    mean: &Tensor<F>,
    var: &Tensor<F>,
    part: &mut Tensor<F>,
    batch: u32,
    channels: u32,
    plane: u32,
    chunk: u32,
    splits: u32,
    epsilon: f32,
    #[comptime] act: u32,
    #[comptime] batch_stats: bool,
    #[comptime] cube: u32,
    #[define(F)] _dtype: StorageType,
) {
    let c = CUBE_POS_X as usize;
    let split = CUBE_POS_Y as usize;
    let (cs, p) = (channels as usize, plane as usize);
    let (scale, shift, centre, _invstd) =
        norm_coefs::<F>(p0, p1, mean, var, c, epsilon, batch_stats);
    let (start, end) = split_range(split, chunk, batch as usize * p);
    let mut s = F::new(0.0);
    let mut sx = F::new(0.0);
    let mut j = start + UNIT_POS_X as usize;
    while j < end {
        let idx = ((j / p) * cs + c) * p + j % p;
        let v = x[idx];
        let dz = dy[idx] * act_grad::<F>(scale * v + shift, act);
        s += dz;
        sx += dz * (v - centre);
        j += cube as usize;
    }
    let s = block_sum::<F>(s, cube);
    sync_cube();
    let sx = block_sum::<F>(sx, cube);
    if UNIT_POS_X == 0 {
        part[split * cs + c] = s;
        part[(splits as usize + split) * cs + c] = sx;
    }
}

/// Gradient coefficients per channel (one unit each), from [`grad_partial`]'s splits: writes
/// eight `C`-long runs into `coef`: `scale, shift, centre, a, dz_mean, b` for [`grad_apply`]
/// (`dx = a · (dz − dz_mean) + b · (x − centre)`), then the parameter gradients
/// (`dgamma, dbeta`, or `dscale, dshift`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn grad_coef<F: Float>(
    part: &Tensor<F>,
    p0: &Tensor<F>,
    p1: &Tensor<F>,
    mean: &Tensor<F>,
    var: &Tensor<F>,
    coef: &mut Tensor<F>,
    batch: u32,
    channels: u32,
    plane: u32,
    splits: u32,
    epsilon: f32,
    #[comptime] batch_stats: bool,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= channels as usize {
        terminate!();
    }
    let c = ABSOLUTE_POS;
    let cs = channels as usize;
    let (scale, shift, centre, invstd) =
        norm_coefs::<F>(p0, p1, mean, var, c, epsilon, batch_stats);
    let mut s = F::new(0.0);
    let mut sx = F::new(0.0);
    for r in 0..splits as usize {
        s += part[r * cs + c];
        sx += part[(splits as usize + r) * cs + c];
    }
    coef[c] = scale;
    coef[cs + c] = shift;
    coef[2 * cs + c] = centre;
    if comptime![batch_stats] {
        let m = F::cast_from(batch * plane);
        let dgamma = invstd * sx;
        coef[3 * cs + c] = scale;
        coef[4 * cs + c] = s / m;
        coef[5 * cs + c] = -scale * dgamma * invstd / m;
        coef[6 * cs + c] = dgamma;
    } else {
        coef[3 * cs + c] = scale;
        coef[4 * cs + c] = F::new(0.0);
        coef[5 * cs + c] = F::new(0.0);
        coef[6 * cs + c] = sx;
    }
    coef[7 * cs + c] = s;
}

/// `dx = a · (dz − dz_mean) + b · (x − centre)` per element, `dz` recomputed, with the
/// coefficients [`grad_coef`] wrote.
#[cube(launch)]
pub fn grad_apply<F: Float>(
    dy: &Tensor<F>,
    x: &Tensor<F>,
    coef: &Tensor<F>,
    dx: &mut Tensor<F>,
    channels: u32,
    plane: u32,
    #[comptime] act: u32,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= dx.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let cs = channels as usize;
    let c = (i / plane as usize) % cs;
    let v = x[i];
    let dz = dy[i] * act_grad::<F>(coef[c] * v + coef[cs + c], act);
    dx[i] = coef[3 * cs + c] * (dz - coef[4 * cs + c]) + coef[5 * cs + c] * (v - coef[2 * cs + c]);
}

/// `out[r] = scale · Σ_p a[r · len + p]` (with `product`, `Σ_p a · b`), one unit per row: the
/// plane means of global pooling and the gate gradient of squeeze-excite.
#[cube(launch)]
pub fn row_sum<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    out: &mut Tensor<F>,
    len: u32,
    scale: f32,
    #[comptime] product: bool,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let base = ABSOLUTE_POS * len as usize;
    let mut acc = F::new(0.0);
    for p in 0..len as usize {
        if comptime![product] {
            acc += a[base + p] * b[base + p];
        } else {
            acc += a[base + p];
        }
    }
    out[ABSOLUTE_POS] = acc * F::cast_from(scale);
}

/// `out[i] = scale · s[i / len]` (with `times_x`, `· x[i]`), one unit per element: a
/// per-plane factor spread over its plane (the squeeze-excite gate, the pooling gradient).
#[cube(launch)]
pub fn plane_scale<F: Float>(
    x: &Tensor<F>,
    s: &Tensor<F>,
    out: &mut Tensor<F>,
    len: u32,
    scale: f32,
    #[comptime] times_x: bool,
    #[define(F)] _dtype: StorageType,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let mut v = s[i / len as usize] * F::cast_from(scale);
    if comptime![times_x] {
        v *= x[i];
    }
    out[i] = v;
}
