//! Keras' `KLDivergence` loss on softmax outputs: both sides clipped to `[1e-7, 1]`,
//! `Σ t · ln(t / p)` per row, averaged over the batch (matches
//! [`hbac_common::metric::keras_kl`]).

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;

const EPS: f64 = 1e-7;

/// Mean KL divergence of `softmax(logits)` from `target`.
///
/// # Shapes
/// - `logits`, `target`: `[N, C]` → `[1]`
pub fn keras_kl<B: Backend>(logits: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    let p = softmax(logits, 1).clamp(EPS, 1.0);
    let t = target.clamp(EPS, 1.0);
    (t.clone() * (t.log() - p.log())).sum_dim(1).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    #[test]
    fn equals_the_reference_implementation() {
        let device = Default::default();
        let logits = [
            [2.0f32, 0.5, -1.0, 0.0, 0.3, -3.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 9.0],
        ];
        let target = [
            [0.5f32, 0.5, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        ];
        let l = keras_kl::<B>(
            Tensor::from_data(TensorData::from(logits), &device),
            Tensor::from_data(TensorData::from(target), &device),
        )
        .into_scalar();
        let probs: Vec<[f32; 6]> = logits
            .iter()
            .map(|r| {
                let m = r.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = r.iter().map(|v| (v - m).exp()).collect();
                let s: f32 = e.iter().sum();
                std::array::from_fn(|i| e[i] / s)
            })
            .collect();
        let want = hbac_common::metric::keras_kl(&target, &probs);
        assert!((l as f64 - want).abs() < 1e-5, "{l} vs {want}");
    }
}
