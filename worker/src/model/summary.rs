//! Parameter accounting the way Keras reports it: every tensor of the model, grouped by layer,
//! with BatchNorm running statistics counted as non-trainable parameters.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// One layer (module path) and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRow {
    /// Module path, e.g. `backbone.blocks.3.depthwise`.
    pub path: String,
    /// Tensor shapes, e.g. `conv.weight [72, 1, 5, 5]`.
    pub tensors: Vec<String>,
    pub trainable: usize,
    pub non_trainable: usize,
}

/// A model's layers and totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub layers: Vec<LayerRow>,
    pub trainable: usize,
    pub non_trainable: usize,
}

impl Summary {
    /// All parameters, trainable or not.
    pub fn total(&self) -> usize {
        self.trainable + self.non_trainable
    }

    /// Parameters whose path starts with `prefix`.
    pub fn total_under(&self, prefix: &str) -> usize {
        self.layers
            .iter()
            .filter(|l| l.path.starts_with(prefix))
            .map(|l| l.trainable + l.non_trainable)
            .sum()
    }
}

struct Collector {
    path: Vec<String>,
    layers: Vec<LayerRow>,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // The path ends with the tensor's own field; the layer is everything before it.
        let (field, layer) = match self.path.split_last() {
            Some((f, rest)) => (f.clone(), rest),
            None => (String::from("?"), &[][..]),
        };
        // Drop the enum variant level (`MobileNetV3`) and the `bn`/`conv` level from layer names.
        let (layer_path, tensor_name) = match layer.split_last() {
            Some((sub, rest))
                if ["bn", "conv", "reduce", "expand"].contains(&sub.as_str())
                    && !rest.is_empty() =>
            {
                (rest.join("."), format!("{sub}.{field}"))
            }
            _ => (layer.join("."), field.clone()),
        };
        let shape = param.val().dims();
        let n: usize = shape.iter().product();
        let running = field == "running_mean" || field == "running_var";
        let row = match self.layers.last_mut() {
            Some(r) if r.path == layer_path => r,
            _ => {
                self.layers.push(LayerRow {
                    path: layer_path,
                    tensors: vec![],
                    trainable: 0,
                    non_trainable: 0,
                });
                self.layers.last_mut().expect("just pushed")
            }
        };
        row.tensors.push(format!("{tensor_name} {shape:?}"));
        if running {
            row.non_trainable += n;
        } else {
            row.trainable += n;
        }
    }
}

/// Counts the parameters of any module.
pub fn summarize<B: Backend, M: Module<B>>(module: &M) -> Summary {
    let mut c = Collector {
        path: vec![],
        layers: vec![],
    };
    module.visit(&mut c);
    let trainable = c.layers.iter().map(|l| l.trainable).sum();
    let non_trainable = c.layers.iter().map(|l| l.non_trainable).sum();
    Summary {
        layers: c.layers,
        trainable,
        non_trainable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Arch, ModelConfig};

    type B = burn::backend::Flex;

    #[test]
    fn counts_match_keras_exactly() {
        let device = Default::default();
        for (arch, total, trainable, backbone, features) in [
            (Arch::MobileNetV3Large, 3_002_118, 2_977_718, 2_996_352, 960),
            (
                Arch::EfficientNetV2B2,
                8_777_828,
                8_695_540,
                8_769_374,
                1408,
            ),
        ] {
            let model = ModelConfig::new(arch).init::<B>(&device);
            let s = summarize::<B, _>(&model);
            assert_eq!(model.backbone.out_channels(), features, "{arch}");
            assert_eq!(s.total_under("backbone"), backbone, "{arch} backbone");
            assert_eq!(s.total(), total, "{arch} total");
            assert_eq!(s.trainable, trainable, "{arch} trainable");
            assert_eq!(
                s.total(),
                model.num_params(),
                "{arch}: burn's own count agrees"
            );
        }
    }
}
