//! BatchNorm (batch statistics or a folded per-channel affine) fused with the activation, on
//! the CPU, NCHW. Statistics and gradient sums are taken per channel over the pool (read-only
//! passes, summed in `f64`), outputs written per plane; nothing between the conv output and the
//! activation output is materialised, and the backward recomputes the pre-activation instead of
//! keeping it.

use rayon::prelude::*;

use crate::ops::Act;

/// Per-channel statistics of `[N, C, P]` data: `f(channel) -> T` over the pool.
fn per_channel<T: Send, F: Fn(usize) -> T + Sync + Send>(c: usize, f: F) -> Vec<T> {
    (0..c).into_par_iter().map(f).collect()
}

/// The `P`-long segments of channel `ch` in `[N, C, P]` data.
fn segments(data: &[f32], [n, c, p]: [usize; 3], ch: usize) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |i| &data[(i * c + ch) * p..][..p])
}

fn dims([n, c, h, w]: [usize; 4]) -> [usize; 3] {
    [n, c, h * w]
}

/// Training-mode BatchNorm + activation: `(y, mean, var)` (biased variance, as burn's).
pub fn bn_forward(
    shape: [usize; 4],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    act: Act,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = dims(shape);
    let count = (d[0] * d[2]) as f64;
    let stats = per_channel(d[1], |ch| {
        let mean = segments(x, d, ch).map(|s| sum(s) as f64).sum::<f64>() / count;
        let var = segments(x, d, ch)
            .map(|s| sq_dev(s, mean as f32) as f64)
            .sum::<f64>()
            / count;
        (mean, var)
    });
    let (scale, shift): (Vec<f32>, Vec<f32>) = stats
        .iter()
        .enumerate()
        .map(|(ch, &(mean, var))| {
            let s = gamma[ch] as f64 / (var + epsilon).sqrt();
            (s as f32, (beta[ch] as f64 - mean * s) as f32)
        })
        .unzip();
    let y = affine_forward(shape, x, &scale, &shift, act);
    let (mean, var) = stats.iter().map(|&(m, v)| (m as f32, v as f32)).unzip();
    (y, mean, var)
}

/// `act(scale · x + shift)` per channel.
pub fn affine_forward(
    shape: [usize; 4],
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    act: Act,
) -> Vec<f32> {
    let [_, c, p] = dims(shape);
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(p)
        .zip(x.par_chunks(p))
        .enumerate()
        .for_each(|(i, (out, inp))| affine_act(out, inp, scale[i % c], shift[i % c], act));
    y
}

/// Gradients of [`bn_forward`]: `(dx, dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    shape: [usize; 4],
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
    act: Act,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = dims(shape);
    let [_, c, p] = d;
    let count = (d[0] * p) as f64;
    let invstd: Vec<f64> = var
        .iter()
        .map(|&v| 1.0 / (v as f64 + epsilon).sqrt())
        .collect();
    // z = scale · x + shift = gamma · (x - mean) · invstd + beta
    let scale: Vec<f32> = (0..c)
        .map(|ch| (gamma[ch] as f64 * invstd[ch]) as f32)
        .collect();
    let shift: Vec<f32> = (0..c)
        .map(|ch| (beta[ch] as f64 - mean[ch] as f64 * scale[ch] as f64) as f32)
        .collect();
    // Σ dz and Σ dz · (x − mean) per channel (dz = dy · act'(z)).
    let sums = per_channel(c, |ch| {
        dz_totals(d, dy, x, ch, [scale[ch], shift[ch], mean[ch]], act)
    });
    // dbeta = Σ dz; dgamma = Σ dz · xhat = invstd · Σ dz · (x − mean);
    // dx = gamma · invstd · (dz − dbeta / M − xhat · dgamma / M)
    //    = a · (dz − mean(dz)) + b · (x − mean), centred so a one-value channel gets exactly 0.
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    let mut coef = vec![(0.0f32, 0.0f32, 0.0f32); c];
    for ch in 0..c {
        let (s, sxm) = sums[ch];
        let is = invstd[ch];
        let dg = is * sxm;
        dbeta[ch] = s as f32;
        dgamma[ch] = dg as f32;
        let g = gamma[ch] as f64 * is;
        // xhat = (x − mean) · is
        coef[ch] = (g as f32, (s / count) as f32, (-g * dg * is / count) as f32);
    }
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(p)
        .zip(dy.par_chunks(p).zip(x.par_chunks(p)))
        .enumerate()
        .for_each(|(i, (out, (g, v)))| {
            let ch = i % c;
            let (a, dz_mean, b) = coef[ch];
            let lin = [a, dz_mean, b, mean[ch]];
            dx_plane(out, g, v, scale[ch], shift[ch], act, lin);
        });
    (dx, dgamma, dbeta)
}

/// `(Σ dz, Σ dz · (x − m))` over channel `ch`, with `dz = dy · act'(scale · x + shift)` and
/// `[scale, shift, m] = coef`.
fn dz_totals(
    d: [usize; 3],
    dy: &[f32],
    x: &[f32],
    ch: usize,
    coef: [f32; 3],
    act: Act,
) -> (f64, f64) {
    let (mut s, mut sxm) = (0.0f64, 0.0f64);
    for (g, v) in segments(dy, d, ch).zip(segments(x, d, ch)) {
        let (a, b) = dz_sums(g, v, coef, act);
        s += a as f64;
        sxm += b as f64;
    }
    (s, sxm)
}

/// Gradients of [`affine_forward`]: `(dx, dscale, dshift)`.
pub fn affine_backward(
    shape: [usize; 4],
    dy: &[f32],
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    act: Act,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = dims(shape);
    let [_, c, p] = d;
    let sums = per_channel(c, |ch| {
        dz_totals(d, dy, x, ch, [scale[ch], shift[ch], 0.0], act)
    });
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(p)
        .zip(dy.par_chunks(p).zip(x.par_chunks(p)))
        .enumerate()
        .for_each(|(i, (out, (g, v)))| {
            let ch = i % c;
            dx_plane(
                out,
                g,
                v,
                scale[ch],
                shift[ch],
                act,
                [scale[ch], 0.0, 0.0, 0.0],
            );
        });
    let dscale = sums.iter().map(|&(_, sx)| sx as f32).collect();
    let dshift = sums.iter().map(|&(s, _)| s as f32).collect();
    (dx, dscale, dshift)
}

simd! {
    fn sum(x: &[f32]) -> f32 {
        const L: usize = 16;
        let mut lanes = [0.0f32; L];
        let chunks = x.chunks_exact(L);
        let tail: f32 = chunks.remainder().iter().sum();
        for v in chunks {
            for l in 0..L {
                lanes[l] += v[l];
            }
        }
        lanes.iter().sum::<f32>() + tail
    }

    fn sq_dev(x: &[f32], mean: f32) -> f32 {
        const L: usize = 16;
        let mut lanes = [0.0f32; L];
        let chunks = x.chunks_exact(L);
        let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        for v in chunks {
            for l in 0..L {
                let d = v[l] - mean;
                lanes[l] += d * d;
            }
        }
        lanes.iter().sum::<f32>() + tail
    }

    fn affine_act(out: &mut [f32], x: &[f32], scale: f32, shift: f32, act: Act) {
        match act {
            Act::Identity => affine_with(out, x, scale, shift, Act::Identity),
            Act::Relu => affine_with(out, x, scale, shift, Act::Relu),
            Act::HardSwish => affine_with(out, x, scale, shift, Act::HardSwish),
            Act::Swish => affine_with(out, x, scale, shift, Act::Swish),
            Act::HardSigmoid => affine_with(out, x, scale, shift, Act::HardSigmoid),
            Act::Sigmoid => affine_with(out, x, scale, shift, Act::Sigmoid),
        }
    }

    fn dz_sums(dy: &[f32], x: &[f32], coef: [f32; 3], act: Act) -> (f32, f32) {
        match act {
            Act::Identity => dz_sums_with(dy, x, coef, Act::Identity),
            Act::Relu => dz_sums_with(dy, x, coef, Act::Relu),
            Act::HardSwish => dz_sums_with(dy, x, coef, Act::HardSwish),
            Act::Swish => dz_sums_with(dy, x, coef, Act::Swish),
            Act::HardSigmoid => dz_sums_with(dy, x, coef, Act::HardSigmoid),
            Act::Sigmoid => dz_sums_with(dy, x, coef, Act::Sigmoid),
        }
    }

    /// `dx = a · (dz − dz_mean) + b · (x − m)` with `lin = [a, dz_mean, b, m]`.
    fn dx_plane(
        out: &mut [f32],
        dy: &[f32],
        x: &[f32],
        scale: f32,
        shift: f32,
        act: Act,
        lin: [f32; 4],
    ) {
        match act {
            Act::Identity => dx_with(out, dy, x, scale, shift, Act::Identity, lin),
            Act::Relu => dx_with(out, dy, x, scale, shift, Act::Relu, lin),
            Act::HardSwish => dx_with(out, dy, x, scale, shift, Act::HardSwish, lin),
            Act::Swish => dx_with(out, dy, x, scale, shift, Act::Swish, lin),
            Act::HardSigmoid => dx_with(out, dy, x, scale, shift, Act::HardSigmoid, lin),
            Act::Sigmoid => dx_with(out, dy, x, scale, shift, Act::Sigmoid, lin),
        }
    }
}

#[inline(always)]
fn affine_with(out: &mut [f32], x: &[f32], scale: f32, shift: f32, act: Act) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = act.eval(v * scale + shift);
    }
}

#[inline(always)]
fn dz_sums_with(dy: &[f32], x: &[f32], [scale, shift, m]: [f32; 3], act: Act) -> (f32, f32) {
    const L: usize = 16;
    let (mut s, mut sx) = ([0.0f32; L], [0.0f32; L]);
    let n = dy.len().min(x.len());
    let (dy, x) = (&dy[..n], &x[..n]);
    let (gc, xc) = (dy.chunks_exact(L), x.chunks_exact(L));
    let (mut ts, mut tsx) = (0.0f32, 0.0f32);
    for (g, v) in gc.remainder().iter().zip(xc.remainder()) {
        let dz = g * act.grad(v * scale + shift);
        ts += dz;
        tsx += dz * (v - m);
    }
    for (g, v) in gc.zip(xc) {
        for l in 0..L {
            let dz = g[l] * act.grad(v[l] * scale + shift);
            s[l] += dz;
            sx[l] += dz * (v[l] - m);
        }
    }
    (s.iter().sum::<f32>() + ts, sx.iter().sum::<f32>() + tsx)
}

#[inline(always)]
fn dx_with(
    out: &mut [f32],
    dy: &[f32],
    x: &[f32],
    scale: f32,
    shift: f32,
    act: Act,
    [a, dz_mean, b, m]: [f32; 4],
) {
    for ((o, g), v) in out.iter_mut().zip(dy).zip(x) {
        let dz = g * act.grad(v * scale + shift);
        *o = a * (dz - dz_mean) + b * (v - m);
    }
}
