//! Seeded initial weights, drawn on the host from hbac's own generator.
//!
//! burn's initialisers draw from one process-wide generator per backend (`Backend::seed`): any
//! other random tensor made in the same process while a model is built — a second training in
//! `hbac local`, a test running beside it — shifts every weight after it, and each backend
//! draws different numbers for the same seed. [`seeded`] redraws every convolution and dense
//! weight and bias from a ChaCha8 stream of the run's seed, in module order, with burn's default
//! distribution (Kaiming-uniform with gain 1/√3, i.e. `U(±1/√fan_in)`, PyTorch's default too).
//! The same seed therefore gives the same initial model on every backend and whatever else the
//! process does. BatchNorm parameters and statistics are constants and are left as they are.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `module` with every `Conv2d` and `Linear` weight and bias redrawn from `seed`.
pub fn seeded<B: Backend, M: Module<B>>(module: M, seed: u64) -> M {
    module.map(&mut Redraw {
        rng: ChaCha8Rng::seed_from_u64(seed),
        owners: Vec::new(),
        fan_in: 1,
    })
}

/// The mapper: `owners` is the stack of (field, owning struct) that `enter_module` reports.
struct Redraw {
    rng: ChaCha8Rng,
    owners: Vec<(String, String)>,
    /// The fan-in of the last weight drawn: a layer's bias follows its weight.
    fan_in: usize,
}

impl<B: Backend> ModuleMapper<B> for Redraw {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.owners
            .push((name.to_owned(), container_type.to_owned()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.owners.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, old, mapper) = param.consume();
        let (field, owner) = self
            .owners
            .last()
            .map_or(("", ""), |(f, o)| (f.as_str(), o.as_str()));
        let shape = old.shape();
        let dims = shape.to_vec();
        let fan_in = match (owner, field) {
            // [out, in / groups, kh, kw]
            ("Struct:Conv2d", "weight") => Some(dims[1..].iter().product()),
            // [in, out] (burn's row layout)
            ("Struct:Linear", "weight") => Some(dims[0]),
            ("Struct:Conv2d" | "Struct:Linear", "bias") => Some(self.fan_in),
            _ => None,
        };
        let value = match fan_in {
            None => old,
            Some(fan_in) => {
                self.fan_in = fan_in.max(1);
                let bound = 1.0 / (self.fan_in as f64).sqrt();
                let values: Vec<f32> = (0..shape.num_elements())
                    .map(|_| self.rng.random_range(-bound..bound) as f32)
                    .collect();
                let grad = old.is_require_grad();
                Tensor::from_data(TensorData::new(values, shape), &old.device())
                    .set_require_grad(grad)
            }
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, ModelConfig};
    use burn::backend::Flex;
    use burn::module::ModuleVisitor;

    /// Every float parameter's values, in module order.
    fn params<M: Module<Flex>>(m: &M) -> Vec<Vec<f32>> {
        struct All(Vec<Vec<f32>>);
        impl ModuleVisitor<Flex> for All {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Flex, D>>) {
                self.0.push(p.val().into_data().to_vec().unwrap());
            }
        }
        let mut all = All(Vec::new());
        m.visit(&mut all);
        all.0
    }

    #[test]
    fn the_seed_alone_decides_the_weights() {
        let cfg = ModelConfig::new(Arch::EfficientNetV2B2).with_width(0.25);
        let device = Default::default();
        // The backend's own generator in different states: the weights must not care.
        <Flex as Backend>::seed(&device, 1);
        let a = params(&cfg.init_seeded::<Flex>(7, &device));
        let _ = Tensor::<Flex, 1>::random([5], burn::tensor::Distribution::Default, &device);
        let b = params(&cfg.init_seeded::<Flex>(7, &device));
        let c = params(&cfg.init_seeded::<Flex>(8, &device));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn weights_follow_burns_default_distribution() {
        let device = Default::default();
        let layer = burn::nn::conv::Conv2dConfig::new([8, 16], [3, 3]).init::<Flex>(&device);
        let layer = seeded(layer, 3);
        let w: Vec<f32> = layer.weight.val().into_data().to_vec().unwrap();
        let b: Vec<f32> = layer.bias.unwrap().val().into_data().to_vec().unwrap();
        let bound = 1.0 / 72f32.sqrt(); // fan-in 8 · 3 · 3
        assert!(w.iter().chain(&b).all(|v| v.abs() <= bound));
        // Uniform on (-bound, bound): variance bound² / 3.
        let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.1, "{var}");
        let dense = seeded(burn::nn::LinearConfig::new(100, 6).init::<Flex>(&device), 3);
        let w: Vec<f32> = dense.weight.val().into_data().to_vec().unwrap();
        assert!(w.iter().all(|v| v.abs() <= 0.1) && w.iter().any(|v| v.abs() > 0.08));
        // BatchNorm constants are untouched.
        let bn = seeded(burn::nn::BatchNormConfig::new(4).init::<Flex>(&device), 3);
        let gamma: Vec<f32> = bn.gamma.val().into_data().to_vec().unwrap();
        assert_eq!(gamma, vec![1.0; 4]);
    }
}
