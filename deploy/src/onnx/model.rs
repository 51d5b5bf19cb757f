//! The ONNX model of a trained graph: its one input (`input`, `[batch, ...sample shape]` with a dynamic batch
//! dimension) and output (`output`), every parameter and buffer as an initializer, opset [`OPSET`].

use std::collections::HashMap;

use bevy_ecs::entity::Entity;
use ecstrain_components::{Buffers, Graph, ParamInfo, ParamRef};
use prost::Message;

use super::lower::{lower_graph, QdqPlan};
use super::proto::{
    tensor_proto::DataType, tensor_shape_proto::dimension::Value as Dim, tensor_shape_proto::Dimension, type_proto,
    ModelProto, OperatorSetIdProto, StringStringEntryProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The default-domain opset the export targets: 17 has `LayerNormalization` and is read by every current
/// runtime (onnxruntime, TensorRT 8.6+).
pub const OPSET: i64 = 17;

/// The IR version that goes with [`OPSET`] (ONNX 1.12).
pub const IR_VERSION: i64 = 8;

/// Name of the dynamic batch dimension of the input and the output.
pub const BATCH_DIM: &str = "batch";

/// What the export reads: the graph, the parameter arena, the buffers and every parameter's name and shape.
pub struct ModelView<'a> {
    /// The static graph.
    pub graph: &'a Graph,
    /// The parameter arena (`Params`).
    pub params: &'a [f32],
    /// Non-trainable tensors (batch-norm running statistics).
    pub buffers: &'a Buffers,
    /// Name (PyTorch module path) and shape of every parameter entity.
    pub infos: &'a HashMap<Entity, ParamInfo>,
}

impl<'a> ModelView<'a> {
    /// Name, shape and values of a parameter.
    pub fn param(&self, r: &ParamRef) -> Result<(&'a str, &'a [usize], &'a [f32]), ExportError> {
        let info = self.infos.get(&r.entity).ok_or(ExportError::MissingParam(r.entity))?;
        let data = self.params.get(r.slice.range()).ok_or(ExportError::MissingParam(r.entity))?;
        Ok((&info.name, &info.shape, data))
    }
}

/// Why a graph could not be written as ONNX.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportError {
    /// A node refers to a parameter entity that has no name or lies outside the arena.
    MissingParam(Entity),
    /// The graph's value was never produced by a node (a malformed graph).
    MissingValue(usize),
    /// An op or a setting the export cannot express.
    Unsupported(String),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::MissingParam(e) => write!(f, "parameter entity {e:?} has no name or no data"),
            ExportError::MissingValue(v) => write!(f, "value {v} is read before any node writes it"),
            ExportError::Unsupported(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ExportError {}

/// A float tensor type `[batch, shape...]`.
fn tensor_type(shape: &[usize]) -> TypeProto {
    let mut dim = vec![Dimension { value: Some(Dim::DimParam(BATCH_DIM.into())), denotation: None }];
    dim.extend(shape.iter().map(|&d| Dimension { value: Some(Dim::DimValue(d as i64)), denotation: None }));
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: Some(DataType::Float as i32),
            shape: Some(TensorShapeProto { dim }),
        })),
        denotation: None,
    }
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    ValueInfoProto { name: Some(name.into()), r#type: Some(tensor_type(shape)), ..Default::default() }
}

/// The graph as a serialized ONNX `ModelProto`: float, or with int8 QuantizeLinear / DequantizeLinear pairs
/// around the inputs and weights of the nodes `qdq` covers.
pub fn export_model(view: &ModelView, qdq: Option<&QdqPlan>) -> Result<Vec<u8>, ExportError> {
    let g = view.graph;
    let mut graph = lower_graph(view, qdq)?;
    graph.input.push(value_info("input", g.input_shape()));
    graph.output.push(value_info("output", g.output_shape()));
    let meta = |k: &str, v: String| StringStringEntryProto { key: Some(k.into()), value: Some(v) };
    let model = ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("ecstrain".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!("{} exported by ecstrain", g.arch)),
        graph: Some(graph),
        metadata_props: vec![
            meta("arch", g.arch.clone()),
            meta("input_shape", format!("{:?}", g.input_shape())),
            meta("quantized", if qdq.is_some() { "int8 qdq".into() } else { "no".into() }),
        ],
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}
