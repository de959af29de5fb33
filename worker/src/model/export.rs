//! A trained [`Model`] as a standard ONNX inference graph (`hbac export`), for use outside
//! hbac: onnxruntime, TensorRT, OpenVINO, a browser.
//!
//! The graph takes `input`, float32 `[batch, 3, height, width]` — the same preprocessed windows
//! hbac's models take (`[3, 400, 300]` in the reference pipeline; the network is fully
//! convolutional, so other sizes run too) — and gives `probabilities`, float32 `[batch, 6]`:
//! the softmax over the six classes in the order of the vote columns. Inside, in order: the
//! model's 1/255 rescaling and input pooling when its config has them; every convolution with
//! its BatchNorm folded in (`w·γ/√(σ²+ε)`, bias `β − μ·γ/√(σ²+ε)`) and TensorFlow "same"
//! padding (`auto_pad = SAME_UPPER`); the activations (hard-swish and hard-sigmoid as ONNX's
//! own ops, swish as `x · sigmoid(x)`); squeeze-excite as pool → 1×1 convs → gate → `Mul`;
//! residual `Add`s; global average pooling, the dense head (`Gemm`) and `Softmax`. Operator
//! set 17, nothing outside the default domain.

use burn::module::{Param, RunningState};
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use hbac_common::hms::VOTE_COLUMNS;
use hbac_common::onnx::{Attr, Dim, Graph, OnnxError};

use super::layers::{Act, ConvBn, InvertedResidual, SqueezeExcite};
use super::{Arch, Backbone, Model};

/// Name of the graph's input.
pub const INPUT: &str = "input";
/// Name of the graph's output.
pub const OUTPUT: &str = "probabilities";

/// Why a model could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the weights of {layer}: {detail}")]
    Read { layer: String, detail: String },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
}

impl<B: Backend> Model<B> {
    /// The architecture of the backbone.
    pub fn arch(&self) -> Arch {
        match self.backbone {
            Backbone::MobileNetV3(_) => Arch::MobileNetV3Large,
            Backbone::EfficientNetV2(_) => Arch::EfficientNetV2B2,
        }
    }

    /// The model as an ONNX file (see the module docs); `metadata` is added to the model's
    /// properties after hbac's own (`hbac.arch`, `hbac.classes`, `hbac.input`).
    pub fn to_onnx(&self, metadata: &[(String, String)]) -> Result<Vec<u8>, ExportError> {
        let arch = self.arch();
        let mut g = Graph::new(arch.name());
        let batch = || Dim::named("batch");
        let mut x = g.input(
            INPUT,
            &[
                batch(),
                Dim::Fixed(3),
                Dim::named("height"),
                Dim::named("width"),
            ],
        );
        if self.rescale {
            let scale = g.constant("rescale.factor", &[], &[1.0 / 255.0]);
            x = g.node("Mul", &[&x, &scale], &[], "rescale");
        }
        if self.downsample > 1 {
            let d = self.downsample as i64;
            x = g.node(
                "AveragePool",
                &[&x],
                &[
                    ("kernel_shape", Attr::Ints(vec![d, d])),
                    ("strides", Attr::Ints(vec![d, d])),
                ],
                "downsample",
            );
        }
        x = match &self.backbone {
            Backbone::MobileNetV3(m) => {
                let mut x = conv_bn(&mut g, &x, &m.stem, "stem")?;
                for (i, b) in m.blocks.iter().enumerate() {
                    x = block(&mut g, &x, b, &format!("blocks.{i}"))?;
                }
                conv_bn(&mut g, &x, &m.last, "last")?
            }
            Backbone::EfficientNetV2(m) => {
                let mut x = conv_bn(&mut g, &x, &m.stem, "stem")?;
                for (i, b) in m.blocks.iter().enumerate() {
                    x = block(&mut g, &x, b, &format!("blocks.{i}"))?;
                }
                conv_bn(&mut g, &x, &m.top, "top")?
            }
        };
        let pooled = g.node("GlobalAveragePool", &[&x], &[], "pool");
        let flat = g.node("Flatten", &[&pooled], &[("axis", Attr::Int(1))], "features");
        // burn's Linear holds its weight as [in, out]: Gemm's B without transposition.
        let [fin, fout] = self.head.weight.dims();
        let w = g.constant(
            "head.weight",
            &[fin, fout],
            &values(&self.head.weight, "head")?,
        );
        let b = match &self.head.bias {
            Some(b) => values(b, "head")?,
            None => vec![0.0; fout],
        };
        let b = g.constant("head.bias", &[fout], &b);
        let logits = g.node("Gemm", &[&flat, &w, &b], &[], "logits");
        let p = g.node("Softmax", &[&logits], &[("axis", Attr::Int(1))], OUTPUT);
        g.output(&p, &[batch(), Dim::Fixed(fout)]);

        let mut props = vec![
            ("hbac.arch".to_string(), arch.name().to_string()),
            ("hbac.classes".to_string(), VOTE_COLUMNS.join(",")),
            (
                "hbac.input".to_string(),
                "float32 [batch, 3, height, width]: hbac's preprocessed spectrogram windows \
                 (reference pipeline: [3, 400, 300])"
                    .to_string(),
            ),
        ];
        props.extend_from_slice(metadata);
        let doc = format!(
            "{} trained by hbac: input `{INPUT}` [batch, 3, height, width] float32, output \
             `{OUTPUT}` [batch, {fout}] in the order {}",
            arch.name(),
            VOTE_COLUMNS.join(", ")
        );
        Ok(g.encode(&doc, &props)?)
    }
}

/// An inverted-residual block; returns its output value.
fn block<B: Backend>(
    g: &mut Graph,
    x: &str,
    b: &InvertedResidual<B>,
    name: &str,
) -> Result<String, ExportError> {
    let mut y = x.to_string();
    if let Some(e) = &b.expand {
        y = conv_bn(g, &y, e, &format!("{name}.expand"))?;
    }
    if let Some(d) = &b.depthwise {
        y = conv_bn(g, &y, d, &format!("{name}.depthwise"))?;
    }
    if let Some(se) = &b.se {
        y = squeeze_excite(g, &y, se, &format!("{name}.se"))?;
    }
    y = conv_bn(g, &y, &b.project, &format!("{name}.project"))?;
    Ok(if b.residual {
        g.node("Add", &[&y, x], &[], &format!("{name}.residual"))
    } else {
        y
    })
}

/// A convolution with its BatchNorm folded in, then the activation.
fn conv_bn<B: Backend>(
    g: &mut Graph,
    x: &str,
    layer: &ConvBn<B>,
    name: &str,
) -> Result<String, ExportError> {
    let (w, b) = fold(&layer.conv, &layer.bn, name)?;
    let y = conv(g, x, &layer.conv, w, b, name);
    Ok(activation(g, &y, layer.act, name))
}

/// `conv`'s weights scaled per output channel by BatchNorm's `γ/√(σ²+ε)`, and the bias that
/// takes its place.
fn fold<B: Backend>(
    conv: &Conv2d<B>,
    bn: &BatchNorm<B>,
    name: &str,
) -> Result<(Vec<f32>, Vec<f32>), ExportError> {
    let w = values(&conv.weight, name)?;
    let gamma = values(&bn.gamma, name)?;
    let beta = values(&bn.beta, name)?;
    let mean = running(&bn.running_mean, name)?;
    let var = running(&bn.running_var, name)?;
    let cout = gamma.len();
    let per_out = w.len() / cout.max(1);
    let scale: Vec<f64> = (0..cout)
        .map(|o| gamma[o] as f64 / (var[o] as f64 + bn.epsilon).sqrt())
        .collect();
    let w = w
        .iter()
        .enumerate()
        .map(|(i, &v)| (v as f64 * scale[i / per_out]) as f32)
        .collect();
    let b = (0..cout)
        .map(|o| (beta[o] as f64 - mean[o] as f64 * scale[o]) as f32)
        .collect();
    Ok((w, b))
}

/// A `Conv` node with `conv`'s geometry and the given weights and bias.
fn conv<B: Backend>(
    g: &mut Graph,
    x: &str,
    conv: &Conv2d<B>,
    w: Vec<f32>,
    b: Vec<f32>,
    name: &str,
) -> String {
    let dims = conv.weight.dims();
    let [kh, kw] = conv.kernel_size.map(|k| k as i64);
    let [sh, sw] = conv.stride.map(|s| s as i64);
    let w = g.constant(&format!("{name}.weight"), &dims, &w);
    let b = g.constant(&format!("{name}.bias"), &[dims[0]], &b);
    let mut attrs = vec![
        ("kernel_shape", Attr::Ints(vec![kh, kw])),
        ("strides", Attr::Ints(vec![sh, sw])),
        ("group", Attr::Int(conv.groups as i64)),
    ];
    if kh > 1 || kw > 1 || sh > 1 || sw > 1 {
        // TensorFlow "same": output ⌈size / stride⌉, the odd padding pixel at the end.
        attrs.push(("auto_pad", Attr::Str("SAME_UPPER".into())));
    }
    g.node("Conv", &[x, &w, &b], &attrs, name)
}

/// Squeeze-excite: global pool, 1×1 conv, `inner`, 1×1 conv, `gate`, scaling the input.
fn squeeze_excite<B: Backend>(
    g: &mut Graph,
    x: &str,
    se: &SqueezeExcite<B>,
    name: &str,
) -> Result<String, ExportError> {
    let mut s = g.node("GlobalAveragePool", &[x], &[], &format!("{name}.pool"));
    for (layer, act, part) in [
        (&se.reduce, se.inner, "reduce"),
        (&se.expand, se.gate, "expand"),
    ] {
        let part = format!("{name}.{part}");
        let w = values(&layer.weight, &part)?;
        let b = match &layer.bias {
            Some(b) => values(b, &part)?,
            None => vec![0.0; layer.weight.dims()[0]],
        };
        s = conv(g, &s, layer, w, b, &part);
        s = activation(g, &s, act, &part);
    }
    Ok(g.node("Mul", &[x, &s], &[], &format!("{name}.scale")))
}

/// `act` applied to `x`; returns the output value (`x` itself for the identity).
fn activation(g: &mut Graph, x: &str, act: Act, name: &str) -> String {
    let hint = format!("{name}.act");
    match act {
        Act::Identity => x.to_string(),
        Act::Relu => g.node("Relu", &[x], &[], &hint),
        Act::HardSwish => g.node("HardSwish", &[x], &[], &hint),
        Act::HardSigmoid => g.node(
            "HardSigmoid",
            &[x],
            &[
                ("alpha", Attr::Float(1.0 / 6.0)),
                ("beta", Attr::Float(0.5)),
            ],
            &hint,
        ),
        Act::Sigmoid => g.node("Sigmoid", &[x], &[], &hint),
        Act::Swish => {
            let s = g.node("Sigmoid", &[x], &[], &format!("{name}.sigmoid"));
            g.node("Mul", &[x, &s], &[], &hint)
        }
    }
}

fn values<B: Backend, const D: usize>(
    p: &Param<Tensor<B, D>>,
    layer: &str,
) -> Result<Vec<f32>, ExportError> {
    read(p.val(), layer)
}

fn running<B: Backend>(
    s: &RunningState<Tensor<B, 1>>,
    layer: &str,
) -> Result<Vec<f32>, ExportError> {
    read(s.value(), layer)
}

fn read<B: Backend, const D: usize>(t: Tensor<B, D>, layer: &str) -> Result<Vec<f32>, ExportError> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ExportError::Read {
            layer: layer.to_string(),
            detail: format!("{e:?}"),
        })
}
