//! BatchNorm (batch statistics or a folded per-channel affine) fused with the activation, on
//! the CPU, NCHW. Every pass runs over planes (one sample's channel) on the pool; per-plane
//! partial results are combined per channel in plane order (in `f64`), so results do not
//! depend on scheduling. Nothing between the conv output and the activation output is
//! materialised; the backward writes `dz = dy · act'(z)` over the incoming gradient's buffer
//! in its first pass and the input gradient over it in the second, so it allocates nothing of
//! the activation's size.

use rayon::prelude::*;

use crate::ops::Act;

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
    let [n, c, p] = dims(shape);
    // Per plane: its mean and sum of squared deviations (two passes over a plane, which
    // stays in cache), merged per channel with Chan et al.'s formula (equal counts).
    let planes: Vec<(f64, f64)> = x
        .par_chunks(p.max(1))
        .map(|s| {
            let m = sum(s) as f64 / p as f64;
            (m, sq_dev(s, m as f32) as f64)
        })
        .collect();
    let mut mean = vec![0.0f32; c];
    let mut var = vec![0.0f32; c];
    let mut scale = vec![0.0f32; c];
    let mut shift = vec![0.0f32; c];
    for ch in 0..c {
        let of = |i: usize| planes[i * c + ch];
        let m = (0..n).map(|i| of(i).0).sum::<f64>() / n as f64;
        let m2: f64 = (0..n)
            .map(|i| {
                let (mi, m2i) = of(i);
                m2i + p as f64 * (mi - m) * (mi - m)
            })
            .sum();
        let v = m2 / (n * p) as f64;
        let s = gamma[ch] as f64 / (v + epsilon).sqrt();
        (mean[ch], var[ch]) = (m as f32, v as f32);
        (scale[ch], shift[ch]) = (s as f32, (beta[ch] as f64 - m * s) as f32);
    }
    (affine_forward(shape, x, &scale, &shift, act), mean, var)
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
    y.par_chunks_mut(p.max(1))
        .zip(x.par_chunks(p.max(1)))
        .enumerate()
        .for_each(|(i, (out, inp))| affine_act(out, inp, scale[i % c], shift[i % c], act));
    y
}

/// First backward pass: `dz` over `dy` in place; per channel `(Σ dz, Σ dz · (x − m))`, with
/// `z = scale · x + shift` and `m = centre[channel]`.
fn dz_pass(
    [n, c, p]: [usize; 3],
    dy: &mut [f32],
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    centre: &[f32],
    act: Act,
) -> Vec<(f64, f64)> {
    let planes: Vec<(f32, f32)> = dy
        .par_chunks_mut(p.max(1))
        .zip(x.par_chunks(p.max(1)))
        .enumerate()
        .map(|(i, (g, v))| {
            let ch = i % c;
            dz_in_place(g, v, [scale[ch], shift[ch], centre[ch]], act)
        })
        .collect();
    (0..c)
        .map(|ch| {
            (0..n).fold((0.0, 0.0), |(s, sx), i| {
                let (a, b) = planes[i * c + ch];
                (s + a as f64, sx + b as f64)
            })
        })
        .collect()
}

/// Gradients of [`bn_forward`]: `(dx, dgamma, dbeta)`; `dx` reuses `dy`'s buffer.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    shape: [usize; 4],
    mut dy: Vec<f32>,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    epsilon: f64,
    act: Act,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = dims(shape);
    let [n, c, p] = d;
    let count = (n * p) as f64;
    let invstd: Vec<f64> = var
        .iter()
        .map(|&v| 1.0 / (v as f64 + epsilon).sqrt())
        .collect();
    // z = scale · x + shift = gamma · (x − mean) · invstd + beta
    let scale: Vec<f32> = (0..c)
        .map(|ch| (gamma[ch] as f64 * invstd[ch]) as f32)
        .collect();
    let shift: Vec<f32> = (0..c)
        .map(|ch| (beta[ch] as f64 - mean[ch] as f64 * scale[ch] as f64) as f32)
        .collect();
    let sums = dz_pass(d, &mut dy, x, &scale, &shift, mean, act);
    // dbeta = Σ dz; dgamma = Σ dz · xhat = invstd · Σ dz · (x − mean);
    // dx = gamma · invstd · (dz − dbeta / M − xhat · dgamma / M)
    //    = a · (dz − mean(dz)) + b · (x − mean), centred so a one-value channel gets exactly 0.
    let mut dgamma = vec![0.0; c];
    let mut dbeta = vec![0.0; c];
    let mut lin = vec![[0.0f32; 4]; c];
    for ch in 0..c {
        let (s, sxm) = sums[ch];
        let is = invstd[ch];
        let dg = is * sxm;
        dbeta[ch] = s as f32;
        dgamma[ch] = dg as f32;
        let a = gamma[ch] as f64 * is;
        lin[ch] = [
            a as f32,
            (s / count) as f32,
            (-a * dg * is / count) as f32,
            mean[ch],
        ];
    }
    dy.par_chunks_mut(p.max(1))
        .zip(x.par_chunks(p.max(1)))
        .enumerate()
        .for_each(|(i, (dz, v))| dx_in_place(dz, v, lin[i % c]));
    (dy, dgamma, dbeta)
}

/// Gradients of [`affine_forward`]: `(dx, dscale, dshift)`; `dx` reuses `dy`'s buffer.
pub fn affine_backward(
    shape: [usize; 4],
    mut dy: Vec<f32>,
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    act: Act,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = dims(shape);
    let [_, c, p] = d;
    let sums = dz_pass(d, &mut dy, x, scale, shift, &vec![0.0; c], act);
    dy.par_chunks_mut(p.max(1))
        .zip(x.par_chunks(p.max(1)))
        .enumerate()
        .for_each(|(i, (dz, v))| dx_in_place(dz, v, [scale[i % c], 0.0, 0.0, 0.0]));
    let dscale = sums.iter().map(|&(_, sx)| sx as f32).collect();
    let dshift = sums.iter().map(|&(s, _)| s as f32).collect();
    (dy, dscale, dshift)
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

    /// `dz = dy · act'(scale · x + shift)` over `dy`; returns `(Σ dz, Σ dz · (x − m))` with
    /// `coef = [scale, shift, m]`.
    fn dz_in_place(dy: &mut [f32], x: &[f32], coef: [f32; 3], act: Act) -> (f32, f32) {
        match act {
            Act::Identity => dz_with(dy, x, coef, Act::Identity),
            Act::Relu => dz_with(dy, x, coef, Act::Relu),
            Act::HardSwish => dz_with(dy, x, coef, Act::HardSwish),
            Act::Swish => dz_with(dy, x, coef, Act::Swish),
            Act::HardSigmoid => dz_with(dy, x, coef, Act::HardSigmoid),
            Act::Sigmoid => dz_with(dy, x, coef, Act::Sigmoid),
        }
    }

    /// `dx = a · (dz − dz_mean) + b · (x − m)` over `dz`, with `[a, dz_mean, b, m] = lin`.
    fn dx_in_place(dz: &mut [f32], x: &[f32], [a, dz_mean, b, m]: [f32; 4]) {
        for (d, v) in dz.iter_mut().zip(x) {
            *d = a * (*d - dz_mean) + b * (v - m);
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
fn dz_with(dy: &mut [f32], x: &[f32], [scale, shift, m]: [f32; 3], act: Act) -> (f32, f32) {
    const L: usize = 16;
    let (mut s, mut sx) = ([0.0f32; L], [0.0f32; L]);
    let n = dy.len().min(x.len());
    let (dy, x) = (&mut dy[..n], &x[..n]);
    let split = n - n % L;
    let (gh, gt) = dy.split_at_mut(split);
    let (xh, xt) = x.split_at(split);
    let (mut ts, mut tsx) = (0.0f32, 0.0f32);
    for (g, v) in gt.iter_mut().zip(xt) {
        *g *= act.grad(v * scale + shift);
        ts += *g;
        tsx += *g * (v - m);
    }
    for (g, v) in gh.chunks_exact_mut(L).zip(xh.chunks_exact(L)) {
        for l in 0..L {
            let dz = g[l] * act.grad(v[l] * scale + shift);
            g[l] = dz;
            s[l] += dz;
            sx[l] += dz * (v[l] - m);
        }
    }
    (s.iter().sum::<f32>() + ts, sx.iter().sum::<f32>() + tsx)
}
