//! The model graph IR: a static graph of ops over values, built once by a registered model builder.
//!
//! The graph is data. Shapes are per sample (the batch dimension is implicit and leading) and were checked
//! when the graph was built; each parameter an op uses is referenced by its entity and its arena slice.
//! Forward and backward are systems (in `ecstrain-systems`) that walk `nodes` in order and in reverse.

use bevy_ecs::prelude::*;

use crate::ParamSlice;

/// Index of a value (an activation tensor) in [`Graph::values`]. Value 0 is the model input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub usize);

/// Shape information of one value.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Shape of one sample (no batch dimension).
    pub shape: Vec<usize>,
}

impl ValueInfo {
    /// Elements per sample.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parameter used by an op: the entity (identity, name, markers) and its arena slice (for the kernels).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamRef {
    /// The parameter entity.
    pub entity: Entity,
    /// Its place in the arenas.
    pub slice: ParamSlice,
}

/// Element-wise activation functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(x, 0).
    Relu,
    /// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (PyTorch's default).
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
    /// tanh(x).
    Tanh,
    /// 1 / (1 + e^-x).
    Sigmoid,
}

impl Activation {
    /// Names accepted in configs.
    pub const NAMES: &'static [&'static str] = &["relu", "gelu", "gelu_tanh", "tanh", "sigmoid"];

    /// Parses a config name.
    pub fn parse(s: &str) -> Option<Activation> {
        match s.to_ascii_lowercase().as_str() {
            "relu" => Some(Activation::Relu),
            "gelu" => Some(Activation::Gelu),
            "gelu_tanh" => Some(Activation::GeluTanh),
            "tanh" => Some(Activation::Tanh),
            "sigmoid" => Some(Activation::Sigmoid),
            _ => None,
        }
    }
}

/// Hyper-parameters of a 2-D convolution (PyTorch `nn.Conv2d`), pairs as (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size.
    pub kernel: (usize, usize),
    /// Stride.
    pub stride: (usize, usize),
    /// Zero padding on each side.
    pub padding: (usize, usize),
    /// Dilation.
    pub dilation: (usize, usize),
    /// Channel groups.
    pub groups: usize,
}

/// Window of a 2-D pooling op, pairs as (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dSpec {
    /// Window size.
    pub kernel: (usize, usize),
    /// Stride.
    pub stride: (usize, usize),
    /// Implicit padding on each side.
    pub padding: (usize, usize),
}

/// What a node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// `y = x W^T + b` over the last dimension.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// Weight `[out_features, in_features]`.
        weight: ParamRef,
        /// Optional bias `[out_features]`.
        bias: Option<ParamRef>,
    },
    /// An element-wise activation.
    Activation(Activation),
    /// 2-D convolution over a `[C, H, W]` sample.
    Conv2d {
        /// Geometry.
        spec: Conv2dSpec,
        /// Input height and width.
        in_hw: (usize, usize),
        /// Output height and width.
        out_hw: (usize, usize),
        /// Weight `[out_channels, in_channels / groups, kh, kw]`.
        weight: ParamRef,
        /// Optional bias `[out_channels]`.
        bias: Option<ParamRef>,
    },
    /// Max pooling over `[C, H, W]` (PyTorch floor mode; padding counts as -inf).
    MaxPool2d {
        /// Window.
        spec: Pool2dSpec,
        /// Input `[C, H, W]`.
        in_chw: (usize, usize, usize),
    },
    /// Average pooling over `[C, H, W]` (PyTorch floor mode, padding counted in the divisor).
    AvgPool2d {
        /// Window.
        spec: Pool2dSpec,
        /// Input `[C, H, W]`.
        in_chw: (usize, usize, usize),
    },
    /// Mean over H and W: `[C, H, W]` -> `[C]`.
    GlobalAvgPool {
        /// Input `[C, H, W]`.
        in_chw: (usize, usize, usize),
    },
    /// Same elements, new per-sample shape (flatten, reshape).
    Reshape,
    /// Inverted dropout with drop probability `p`, active in training mode only.
    Dropout {
        /// Probability of zeroing an element.
        p: f64,
    },
}

/// One op application.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Module path of the op (`layers.0`), the prefix of its parameter names.
    pub name: String,
    /// The op.
    pub op: OpKind,
    /// Input value.
    pub input: ValueId,
    /// Output value.
    pub output: ValueId,
}

/// A static model graph.
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct Graph {
    /// Registered name of the model that built the graph (`mlp`).
    pub arch: String,
    /// Every value; `values[0]` is the input.
    pub values: Vec<ValueInfo>,
    /// Ops in execution order.
    pub nodes: Vec<Node>,
    /// The value the task's loss reads (logits, reconstruction, embedding).
    pub output: ValueId,
}

impl Graph {
    /// The model input's per-sample shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.values[0].shape
    }

    /// The output's per-sample shape.
    pub fn output_shape(&self) -> &[usize] {
        &self.values[self.output.0].shape
    }
}
