//! ONNX files: the messages of `proto/onnx.proto` (the part of the ONNX format hbac writes) and
//! [`Graph`], a small builder of inference graphs — float32 initializers, nodes with their
//! attributes, typed inputs and outputs — that `hbac export` translates trained models with.
//!
//! The files are standard ONNX, IR version [`IR_VERSION`] with the default operator set at
//! version [`OPSET`]: onnxruntime, `onnx.checker` and Netron read them.

use std::collections::HashSet;

use prost::Message;

/// The generated messages (`package onnx`).
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// The IR version that goes with [`OPSET`] (ONNX 1.12+).
pub const IR_VERSION: i64 = 8;
/// The version of the default (`ai.onnx`) operator set the graphs use.
pub const OPSET: i64 = 17;

/// Why a graph could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("initializer `{name}`: {values} values for dimensions {dims:?}")]
    Shape {
        name: String,
        dims: Vec<usize>,
        values: usize,
    },
    #[error("graph output `{0}` is not a value of the graph")]
    UnknownOutput(String),
}

/// A node attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(String),
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(usize),
    /// A size chosen at run time, by name (`"batch"`).
    Named(String),
}

impl Dim {
    /// A size chosen at run time.
    pub fn named(name: &str) -> Self {
        Dim::Named(name.to_string())
    }
}

/// An inference graph under construction. Every value is named; nodes get one output each,
/// named after the hint they are given (made unique).
#[derive(Debug, Default)]
pub struct Graph {
    name: String,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    names: HashSet<String>,
    error: Option<OnnxError>,
}

impl Graph {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Self::default()
        }
    }

    /// `hint`, or `hint_2`, `hint_3`… if a value already has that name.
    fn fresh(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut n = 1;
        while self.names.contains(&name) {
            n += 1;
            name = format!("{hint}_{n}");
        }
        self.names.insert(name.clone());
        name
    }

    /// A float32 graph input; returns its name.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        let name = self.fresh(name);
        self.inputs.push(value_info(&name, dims));
        name
    }

    /// A float32 constant (row-major `values` of shape `dims`; `[]` is a scalar); returns its
    /// name. A length that does not match the shape is reported by [`Graph::encode`].
    pub fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh(name);
        if dims.iter().product::<usize>() != values.len() && self.error.is_none() {
            self.error = Some(OnnxError::Shape {
                name: name.clone(),
                dims: dims.to_vec(),
                values: values.len(),
            });
        }
        self.initializers.push(pb::TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// A node of the default operator set with one output, named after `hint`; returns the
    /// output's name.
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
        hint: &str,
    ) -> String {
        let output = self.fresh(hint);
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name: output.clone(),
            op_type: op.to_string(),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
        output
    }

    /// Makes the value `name` a float32 graph output of shape `dims`.
    pub fn output(&mut self, name: &str, dims: &[Dim]) {
        if !self.names.contains(name) && self.error.is_none() {
            self.error = Some(OnnxError::UnknownOutput(name.to_string()));
        }
        self.outputs.push(value_info(name, dims));
    }

    /// The ONNX model file: this graph, `doc`, and `metadata` as the model's properties.
    pub fn encode(self, doc: &str, metadata: &[(String, String)]) -> Result<Vec<u8>, OnnxError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let model = pb::ModelProto {
            ir_version: IR_VERSION,
            producer_name: "hbac".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_string(),
            graph: Some(pb::GraphProto {
                node: self.nodes,
                name: self.name,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            metadata_props: metadata
                .iter()
                .map(|(key, value)| pb::StringStringEntryProto {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            ..Default::default()
        };
        Ok(model.encode_to_vec())
    }
}

fn value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n as i64),
                Dim::Named(s) => Value::DimParam(s.clone()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn attribute(name: &str, value: &Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType;
    let mut a = pb::AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match value {
        Attr::Int(i) => {
            a.i = *i;
            a.r#type = AttributeType::Int as i32;
        }
        Attr::Ints(v) => {
            a.ints = v.clone();
            a.r#type = AttributeType::Ints as i32;
        }
        Attr::Float(f) => {
            a.f = *f;
            a.r#type = AttributeType::Float as i32;
        }
        Attr::Str(s) => {
            a.s = s.as_bytes().to_vec();
            a.r#type = AttributeType::String as i32;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_round_trips_through_the_onnx_messages() {
        let mut g = Graph::new("tiny");
        let x = g.input("input", &[Dim::named("batch"), Dim::Fixed(4)]);
        let w = g.constant("w", &[4, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let b = g.constant("b", &[2], &[0.5, -0.5]);
        let y = g.node("Gemm", &[&x, &w, &b], &[], "logits");
        let p = g.node("Softmax", &[&y], &[("axis", Attr::Int(1))], "probabilities");
        g.output(&p, &[Dim::named("batch"), Dim::Fixed(2)]);
        let bytes = g.encode("doc", &[("arch".into(), "test".into())]).unwrap();

        let m = pb::ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(m.ir_version, IR_VERSION);
        assert_eq!(m.opset_import[0].version, OPSET);
        assert_eq!(m.metadata_props[0].key, "arch");
        let graph = m.graph.unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Gemm", "Softmax"]);
        assert_eq!(graph.node[1].attribute[0].i, 1);
        assert_eq!(graph.node[1].input, ["logits"]);
        assert_eq!(graph.output[0].name, "probabilities");
        let w = &graph.initializer[0];
        assert_eq!(w.dims, [4, 2]);
        assert_eq!(&w.raw_data[4..8], &2.0f32.to_le_bytes());
        assert_eq!(graph.input[0].name, "input");
    }

    #[test]
    fn names_are_made_unique() {
        let mut g = Graph::new("g");
        let x = g.input("x", &[Dim::Fixed(1)]);
        let a = g.node("Relu", &[&x], &[], "act");
        let b = g.node("Relu", &[&a], &[], "act");
        assert_eq!((a.as_str(), b.as_str()), ("act", "act_2"));
    }

    #[test]
    fn a_constant_of_the_wrong_length_and_an_unknown_output_are_errors() {
        let mut g = Graph::new("g");
        g.constant("w", &[2, 3], &[0.0; 5]);
        let e = g.encode("", &[]).unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("5 values"), "{e}");

        let mut g = Graph::new("g");
        g.output("nowhere", &[Dim::Fixed(1)]);
        let e = g.encode("", &[]).unwrap_err().to_string();
        assert!(e.contains("nowhere"), "{e}");
    }
}
