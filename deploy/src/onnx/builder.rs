//! A small writer of ONNX graphs: fresh value names, initializers (weights and shape constants) and nodes
//! with typed attributes, collected into a `GraphProto`.

use std::collections::HashSet;

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, GraphProto, NodeProto, TensorProto,
};

/// An attribute value of a node.
#[derive(Clone, Debug)]
pub enum Attr {
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f32),
    /// `INTS`.
    Ints(Vec<i64>),
    /// `STRING`.
    Str(&'static str),
}

/// The graph being written.
#[derive(Default)]
pub struct GraphWriter {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    names: HashSet<String>,
    counter: usize,
}

impl GraphWriter {
    /// A fresh value name starting with `hint` (`hint`, else `hint_1`, `hint_2`, ...).
    pub fn fresh(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        while self.names.contains(&name) {
            self.counter += 1;
            name = format!("{hint}_{}", self.counter);
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds a float initializer `name` of `shape` (little-endian raw data) and returns its name.
    pub fn f32_tensor(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "initializer {name}: shape and data disagree");
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, shape, DataType::Float, raw)
    }

    /// Adds an int8 initializer.
    pub fn i8_tensor(&mut self, name: &str, shape: &[usize], data: &[i8]) -> String {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "initializer {name}: shape and data disagree");
        let raw = data.iter().map(|v| *v as u8).collect();
        self.tensor(name, shape, DataType::Int8, raw)
    }

    /// Adds an int64 initializer (shapes, axes, indices); `shape` `[]` is a scalar.
    pub fn i64_tensor(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "initializer {name}: shape and data disagree");
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, shape, DataType::Int64, raw)
    }

    /// A 1-D int64 constant (a shape or a list of axes) under a fresh name.
    pub fn i64s(&mut self, hint: &str, values: &[i64]) -> String {
        self.i64_tensor(hint, &[values.len()], values)
    }

    fn tensor(&mut self, name: &str, shape: &[usize], ty: DataType, raw: Vec<u8>) -> String {
        let name = self.fresh(name);
        self.initializers.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(ty as i32),
            name: Some(name.clone()),
            raw_data: Some(raw),
            ..Default::default()
        });
        name
    }

    /// Adds a node `op` reading `inputs` (`""` for an omitted optional input) and writing one fresh value
    /// named after `hint`; returns that value's name.
    pub fn node(&mut self, op: &str, hint: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(hint);
        self.node_to(op, hint, inputs, &out, attrs);
        out
    }

    /// Adds a node writing the given (already reserved) output name.
    pub fn node_to(&mut self, op: &str, hint: &str, inputs: &[&str], output: &str, attrs: &[(&str, Attr)]) {
        let name = format!("{hint}/{op}_{}", self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: Some(name),
            op_type: Some(op.to_string()),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            ..Default::default()
        });
    }

    /// The finished graph (inputs and outputs are added by the caller).
    pub fn finish(self, name: &str) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: Some(name.to_string()),
            initializer: self.initializers,
            ..Default::default()
        }
    }
}

fn attribute(name: &str, a: &Attr) -> AttributeProto {
    let mut p = AttributeProto { name: Some(name.to_string()), ..Default::default() };
    match a {
        Attr::Int(i) => {
            p.r#type = Some(AttributeType::Int as i32);
            p.i = Some(*i);
        }
        Attr::Float(f) => {
            p.r#type = Some(AttributeType::Float as i32);
            p.f = Some(*f);
        }
        Attr::Ints(v) => {
            p.r#type = Some(AttributeType::Ints as i32);
            p.ints = v.clone();
        }
        Attr::Str(s) => {
            p.r#type = Some(AttributeType::String as i32);
            p.s = Some(s.as_bytes().to_vec());
        }
    }
    p
}

/// `usize` dimensions as ONNX's `i64`s.
pub fn dims(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}
