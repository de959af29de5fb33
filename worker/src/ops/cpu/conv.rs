//! Convolutions on the CPU, NCHW, "same" padding:
//!
//! * pointwise (1×1, stride 1): one GEMM per sample forward and for the input gradient, and a
//!   sum of per-sample GEMMs for the weight gradient;
//! * dense k×k: im2col + GEMM forward, the weight gradient as `dy · colᵀ`, the input gradient as
//!   `wᵀ · dy` scattered back by col2im;
//! * depthwise k×k: direct loops per channel plane over a zero-padded copy of the plane whose
//!   columns are split by phase (`column mod stride`), so every tap of a strided kernel reads
//!   and writes contiguous memory and the loops vectorise.
//!
//! Work is split over samples (GEMM paths) or planes / channels (depthwise) on the rayon pool;
//! sums over samples are reduced in a fixed order, so results do not depend on scheduling.

use rayon::prelude::*;

use super::gemm::{Mat, gemm};
use crate::ops::ConvPlan;

/// The convolution's output, `[N, cout, Ho, Wo]`.
pub fn forward(plan: &ConvPlan, x: &[f32], w: &[f32]) -> Vec<f32> {
    if plan.geom.depthwise {
        depthwise_forward(plan, x, w)
    } else {
        let mut y = vec![0.0; plan.n * plan.cout * plan.out_plane()];
        dense_forward(plan, x, w, &mut y);
        y
    }
}

/// The input gradient, `[N, cin, H, W]`.
pub fn backward_input(plan: &ConvPlan, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if plan.geom.depthwise {
        depthwise_backward_input(plan, dy, w)
    } else {
        dense_backward_input(plan, dy, w)
    }
}

/// The weight gradient, `[cout, cin / groups, k, k]`.
pub fn backward_weight(plan: &ConvPlan, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if plan.geom.depthwise {
        depthwise_backward_weight(plan, x, dy)
    } else {
        dense_backward_weight(plan, x, dy)
    }
}

/// Whether to split GEMM work over samples (one single-threaded GEMM each) rather than run the
/// samples in turn with each GEMM on the whole pool.
fn by_sample(n: usize) -> bool {
    n >= rayon::current_num_threads()
}

/// Runs `f(sample, out_chunk, scratch)` for every sample, over the pool when [`by_sample`].
fn each_sample<F>(n: usize, out: &mut [f32], chunk: usize, scratch: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut Vec<f32>, bool) + Sync,
{
    if by_sample(n) {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(|| vec![0.0; scratch], |s, (i, o)| f(i, o, s, false));
    } else {
        let mut s = vec![0.0; scratch];
        for (i, o) in out.chunks_mut(chunk).enumerate() {
            f(i, o, &mut s, true);
        }
    }
}

/// `Σ_samples f(sample, acc, scratch)` into a `len`-long accumulator, the samples split into a
/// fixed number of contiguous groups whose partial sums are added in order.
fn sum_over_samples<F>(n: usize, len: usize, scratch: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [f32], &mut Vec<f32>, bool) + Sync,
{
    if !by_sample(n) {
        let (mut acc, mut s) = (vec![0.0; len], vec![0.0; scratch]);
        for i in 0..n {
            f(i, &mut acc, &mut s, true);
        }
        return acc;
    }
    let groups = rayon::current_num_threads().min(n).max(1);
    let partials: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|g| {
            let (mut acc, mut s) = (vec![0.0; len], vec![0.0; scratch]);
            for i in (g * n / groups)..((g + 1) * n / groups) {
                f(i, &mut acc, &mut s, false);
            }
            acc
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut total = partials.next().unwrap_or_else(|| vec![0.0; len]);
    for p in partials {
        for (t, v) in total.iter_mut().zip(&p) {
            *t += v;
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Dense convolutions (pointwise and k×k).

/// Rows of the im2col matrix: `cin · k · k`.
fn col_rows(plan: &ConvPlan) -> usize {
    plan.cin * plan.geom.kernel * plan.geom.kernel
}

fn dense_forward(plan: &ConvPlan, x: &[f32], w: &[f32], y: &mut [f32]) {
    let (cin, cout, p) = (plan.cin, plan.cout, plan.out_plane());
    let rows = col_rows(plan);
    let pointwise = plan.geom.is_pointwise();
    let scratch = if pointwise { 0 } else { rows * p };
    let wm = Mat::rows(w, cout, rows);
    each_sample(plan.n, y, cout * p, scratch, |i, yn, col, par| {
        let xn = &x[i * cin * plan.in_plane()..][..cin * plan.in_plane()];
        if pointwise {
            gemm(yn, false, wm, Mat::rows(xn, cin, p), par);
        } else {
            im2col(plan, xn, col);
            gemm(yn, false, wm, Mat::rows(col, rows, p), par);
        }
    });
}

fn dense_backward_input(plan: &ConvPlan, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (cin, cout, p) = (plan.cin, plan.cout, plan.out_plane());
    let rows = col_rows(plan);
    let pointwise = plan.geom.is_pointwise();
    let mut dx = vec![0.0; plan.n * cin * plan.in_plane()];
    let wt = Mat::rows(w, cout, rows).t();
    let scratch = if pointwise { 0 } else { rows * p };
    each_sample(
        plan.n,
        &mut dx,
        cin * plan.in_plane(),
        scratch,
        |i, dxn, dcol, par| {
            let dyn_ = Mat::rows(&dy[i * cout * p..][..cout * p], cout, p);
            if pointwise {
                gemm(dxn, false, wt, dyn_, par);
            } else {
                gemm(dcol, false, wt, dyn_, par);
                col2im(plan, dcol, dxn);
            }
        },
    );
    dx
}

fn dense_backward_weight(plan: &ConvPlan, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (cin, cout, p) = (plan.cin, plan.cout, plan.out_plane());
    let rows = col_rows(plan);
    let pointwise = plan.geom.is_pointwise();
    let scratch = if pointwise { 0 } else { rows * p };
    sum_over_samples(plan.n, cout * rows, scratch, |i, acc, col, par| {
        let xn = &x[i * cin * plan.in_plane()..][..cin * plan.in_plane()];
        let dyn_ = Mat::rows(&dy[i * cout * p..][..cout * p], cout, p);
        if pointwise {
            gemm(acc, true, dyn_, Mat::rows(xn, cin, p).t(), par);
        } else {
            im2col(plan, xn, col);
            gemm(acc, true, dyn_, Mat::rows(col, rows, p).t(), par);
        }
    })
}

/// The range of output positions `o` whose input position `o · s + t - pad` lies in `0..size`.
fn valid(out: usize, size: usize, s: usize, t: usize, pad: usize) -> (usize, usize) {
    // o · s + t ≥ pad  and  o · s + t < size + pad
    let lo = pad.saturating_sub(t).div_ceil(s);
    let hi = if size + pad > t {
        (size + pad - t).div_ceil(s).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Fills `col` (`[cin·k·k, Ho·Wo]`) with the input windows of one sample.
fn im2col(plan: &ConvPlan, x: &[f32], col: &mut [f32]) {
    let (k, s) = (plan.geom.kernel, plan.geom.stride);
    let (h, w, ho, wo) = (plan.h, plan.w, plan.ho, plan.wo);
    let p = ho * wo;
    for ci in 0..plan.cin {
        let plane = &x[ci * h * w..][..h * w];
        for kh in 0..k {
            let (oh_lo, oh_hi) = valid(ho, h, s, kh, plan.pad_top);
            for kw in 0..k {
                let (ow_lo, ow_hi) = valid(wo, w, s, kw, plan.pad_left);
                let row = &mut col[((ci * k + kh) * k + kw) * p..][..p];
                for oh in 0..ho {
                    let out = &mut row[oh * wo..][..wo];
                    if oh < oh_lo || oh >= oh_hi || ow_lo >= ow_hi {
                        out.fill(0.0);
                        continue;
                    }
                    let ih = oh * s + kh - plan.pad_top;
                    let src = &plane[ih * w..][..w];
                    out[..ow_lo].fill(0.0);
                    out[ow_hi..].fill(0.0);
                    let iw0 = ow_lo * s + kw - plan.pad_left;
                    if s == 1 {
                        out[ow_lo..ow_hi].copy_from_slice(&src[iw0..iw0 + (ow_hi - ow_lo)]);
                    } else {
                        for (o, v) in out[ow_lo..ow_hi]
                            .iter_mut()
                            .zip(src[iw0..].iter().step_by(s))
                        {
                            *o = *v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds `col` (`[cin·k·k, Ho·Wo]`) back onto the input positions of one sample (`dx` is
/// overwritten).
fn col2im(plan: &ConvPlan, col: &[f32], dx: &mut [f32]) {
    let (k, s) = (plan.geom.kernel, plan.geom.stride);
    let (h, w, ho, wo) = (plan.h, plan.w, plan.ho, plan.wo);
    let p = ho * wo;
    dx.fill(0.0);
    for ci in 0..plan.cin {
        let plane = &mut dx[ci * h * w..][..h * w];
        for kh in 0..k {
            let (oh_lo, oh_hi) = valid(ho, h, s, kh, plan.pad_top);
            for kw in 0..k {
                let (ow_lo, ow_hi) = valid(wo, w, s, kw, plan.pad_left);
                if ow_lo >= ow_hi {
                    continue;
                }
                let row = &col[((ci * k + kh) * k + kw) * p..][..p];
                for oh in oh_lo..oh_hi {
                    let ih = oh * s + kh - plan.pad_top;
                    let dst = &mut plane[ih * w..][..w];
                    let src = &row[oh * wo + ow_lo..oh * wo + ow_hi];
                    let iw0 = ow_lo * s + kw - plan.pad_left;
                    if s == 1 {
                        add_assign(&mut dst[iw0..iw0 + src.len()], src);
                    } else {
                        for (d, v) in dst[iw0..].iter_mut().step_by(s).zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d += v;
    }
}

// ---------------------------------------------------------------------------------------------
// Depthwise convolutions.

/// `$body` with `$sp` bound to a [`Split`] whose kernel size and stride are constants in the
/// layers' common cases (3 or 5, stride 1 or 2): one copy of `$body` per case, so the inlined
/// loops unroll for each; any other geometry runs the generic copy.
macro_rules! specialised {
    ($split:expr, |$sp:ident| $body:expr) => {{
        let split: Split = $split;
        match (split.k, split.s) {
            (3, 1) => {
                let $sp = Split {
                    k: 3,
                    s: 1,
                    ..split
                };
                $body
            }
            (3, 2) => {
                let $sp = Split {
                    k: 3,
                    s: 2,
                    ..split
                };
                $body
            }
            (5, 1) => {
                let $sp = Split {
                    k: 5,
                    s: 1,
                    ..split
                };
                $body
            }
            (5, 2) => {
                let $sp = Split {
                    k: 5,
                    s: 2,
                    ..split
                };
                $body
            }
            _ => {
                let $sp = split;
                $body
            }
        }
    }};
}

/// A zero-padded plane whose columns are split by phase: padded column `c` lives at
/// `(c mod s) · half + c / s` of its row, so the inputs of output columns `0..Wo` for tap `kw`
/// are the contiguous run starting at [`Split::tap`]`(kw)`.
#[derive(Clone, Copy)]
struct Split {
    k: usize,
    s: usize,
    rows: usize,
    half: usize,
    /// Row length: `s · half`.
    row: usize,
}

impl Split {
    fn new(plan: &ConvPlan) -> Self {
        let (k, s) = (plan.geom.kernel, plan.geom.stride);
        let rows = (plan.ho - 1) * s + k;
        let cols = (plan.wo - 1) * s + k;
        let half = cols.div_ceil(s);
        Self {
            k,
            s,
            rows,
            half,
            row: s * half,
        }
    }

    fn len(&self) -> usize {
        self.rows * self.row
    }

    #[inline(always)]
    fn tap(&self, kw: usize) -> usize {
        (kw % self.s) * self.half + kw / self.s
    }

    #[inline(always)]
    fn slot(&self, c: usize) -> usize {
        (c % self.s) * self.half + c / self.s
    }
}

/// Fills `buf` from one input plane.
#[inline(always)]
fn split_fill(plan: &ConvPlan, sp: Split, plane: &[f32], buf: &mut [f32]) {
    buf.fill(0.0);
    let (pt, pl) = (plan.pad_top, plan.pad_left);
    for ih in 0..plan.h.min(sp.rows.saturating_sub(pt)) {
        let src = &plane[ih * plan.w..][..plan.w];
        let dst = &mut buf[(ih + pt) * sp.row..][..sp.row];
        let cols = plan.w.min(sp.s * sp.half - pl);
        if sp.s == 1 {
            dst[pl..pl + cols].copy_from_slice(&src[..cols]);
        } else {
            for (iw, v) in src[..cols].iter().enumerate() {
                dst[sp.slot(iw + pl)] = *v;
            }
        }
    }
}

fn depthwise_forward(plan: &ConvPlan, x: &[f32], w: &[f32]) -> Vec<f32> {
    let sp = Split::new(plan);
    let (inp, outp, kk) = (plan.in_plane(), plan.out_plane(), sp.k * sp.k);
    let c = plan.cout;
    let mut y = vec![0.0; plan.n * c * outp];
    y.par_chunks_mut(outp).enumerate().for_each_init(
        || vec![0.0; sp.len()],
        |buf, (i, out)| {
            split_fill(plan, sp, &x[i * inp..][..inp], buf);
            let wk = &w[(i % c) * kk..][..kk];
            dw_forward_plane(sp, plan.ho, plan.wo, buf, wk, out);
        },
    );
    y
}

simd! {
fn dw_forward_plane(sp: Split, ho: usize, wo: usize, buf: &[f32], wk: &[f32], out: &mut [f32]) {
    specialised!(sp, |sp| dw_forward_plane_k(sp, ho, wo, buf, wk, out))
}
}

#[inline(always)]
fn dw_forward_plane_k(sp: Split, ho: usize, wo: usize, buf: &[f32], wk: &[f32], out: &mut [f32]) {
    let k = sp.k;
    for oh in 0..ho {
        let o = &mut out[oh * wo..][..wo];
        o.fill(0.0);
        for kh in 0..k {
            let r = &buf[(oh * sp.s + kh) * sp.row..][..sp.row];
            for kw in 0..k {
                let wv = wk[kh * k + kw];
                let t = &r[sp.tap(kw)..][..wo];
                for (a, v) in o.iter_mut().zip(t) {
                    *a += wv * v;
                }
            }
        }
    }
}

fn depthwise_backward_input(plan: &ConvPlan, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let sp = Split::new(plan);
    let (inp, outp, kk) = (plan.in_plane(), plan.out_plane(), sp.k * sp.k);
    let c = plan.cin;
    let mut dx = vec![0.0; plan.n * c * inp];
    dx.par_chunks_mut(inp).enumerate().for_each_init(
        || vec![0.0; sp.len()],
        |buf, (i, dxp)| {
            let wk = &w[(i % c) * kk..][..kk];
            dw_backward_input_plane(sp, plan.ho, plan.wo, &dy[i * outp..][..outp], wk, buf);
            // Crop the padded, phase-split gradient back onto the input plane.
            for ih in 0..plan.h.min(sp.rows.saturating_sub(plan.pad_top)) {
                let src = &buf[(ih + plan.pad_top) * sp.row..][..sp.row];
                let dst = &mut dxp[ih * plan.w..][..plan.w];
                let cols = plan.w.min(sp.s * sp.half - plan.pad_left);
                if sp.s == 1 {
                    dst[..cols].copy_from_slice(&src[plan.pad_left..plan.pad_left + cols]);
                } else {
                    for (iw, d) in dst[..cols].iter_mut().enumerate() {
                        *d = src[sp.slot(iw + plan.pad_left)];
                    }
                }
            }
        },
    );
    dx
}

simd! {
fn dw_backward_input_plane(
    sp: Split,
    ho: usize,
    wo: usize,
    dy: &[f32],
    wk: &[f32],
    buf: &mut [f32],
) {
    specialised!(sp, |sp| dw_backward_input_plane_k(sp, ho, wo, dy, wk, buf))
}
}

#[inline(always)]
fn dw_backward_input_plane_k(
    sp: Split,
    ho: usize,
    wo: usize,
    dy: &[f32],
    wk: &[f32],
    buf: &mut [f32],
) {
    let k = sp.k;
    buf.fill(0.0);
    for oh in 0..ho {
        let g = &dy[oh * wo..][..wo];
        for kh in 0..k {
            let r = &mut buf[(oh * sp.s + kh) * sp.row..][..sp.row];
            for kw in 0..k {
                let wv = wk[kh * k + kw];
                let t = &mut r[sp.tap(kw)..][..wo];
                for (a, v) in t.iter_mut().zip(g) {
                    *a += wv * v;
                }
            }
        }
    }
}

fn depthwise_backward_weight(plan: &ConvPlan, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let sp = Split::new(plan);
    let (inp, outp, kk) = (plan.in_plane(), plan.out_plane(), sp.k * sp.k);
    let c = plan.cin;
    let mut dw = vec![0.0; c * kk];
    dw.par_chunks_mut(kk).enumerate().for_each_init(
        || (vec![0.0; sp.len()], vec![0.0f64; kk]),
        |(buf, acc), (ch, dwc)| {
            acc.fill(0.0);
            for i in 0..plan.n {
                let plane = (i * c + ch) * inp;
                split_fill(plan, sp, &x[plane..][..inp], buf);
                let g = &dy[(i * c + ch) * outp..][..outp];
                dw_backward_weight_plane(sp, plan.ho, plan.wo, buf, g, acc);
            }
            for (d, a) in dwc.iter_mut().zip(acc.iter()) {
                *d = *a as f32;
            }
        },
    );
    dw
}

simd! {
fn dw_backward_weight_plane(
    sp: Split,
    ho: usize,
    wo: usize,
    buf: &[f32],
    dy: &[f32],
    acc: &mut [f64],
) {
    specialised!(sp, |sp| dw_backward_weight_plane_k(sp, ho, wo, buf, dy, acc))
}
}

#[inline(always)]
fn dw_backward_weight_plane_k(
    sp: Split,
    ho: usize,
    wo: usize,
    buf: &[f32],
    dy: &[f32],
    acc: &mut [f64],
) {
    let k = sp.k;
    for kh in 0..k {
        for kw in 0..k {
            let mut total = 0.0f64;
            for oh in 0..ho {
                let g = &dy[oh * wo..][..wo];
                let t = &buf[(oh * sp.s + kh) * sp.row + sp.tap(kw)..][..wo];
                total += dot(g, t) as f64;
            }
            acc[kh * k + kw] += total;
        }
    }
}

/// A dot product with 16 independent partial sums, so it vectorises.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut lanes = [0.0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..L {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ranges_cover_exactly_the_inputs_inside_the_plane() {
        for size in 1usize..12 {
            for k in [1, 3, 5] {
                for s in [1, 2] {
                    let out = size.div_ceil(s);
                    let pad = (((out - 1) * s + k).saturating_sub(size)) / 2;
                    for t in 0..k {
                        let (lo, hi) = valid(out, size, s, t, pad);
                        for o in 0..out {
                            let pos = (o * s + t) as isize - pad as isize;
                            let inside = pos >= 0 && (pos as usize) < size;
                            assert_eq!(
                                inside,
                                o >= lo && o < hi,
                                "size {size} k {k} s {s} t {t} o {o}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        for n in [0, 1, 15, 16, 17, 100] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.25).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - want).abs() <= 1e-3 * want.abs().max(1.0));
        }
    }
}
