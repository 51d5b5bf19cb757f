//! Builds a static [`Graph`] and its parameter entities.
//!
//! A model builder (e.g. [`crate::models::mlp`]) calls the layer methods; each checks its input shape and
//! returns the output value, so a wrong config fails here, before any training. [`GraphBuilder::finish`]
//! spawns one entity per parameter, lays all parameters out in one arena (gradients and optimizer state
//! use the same layout), and initialises them from the run seed.

use bevy_ecs::prelude::*;
use ecstrain_components::{
    Activation, Arena, Grads, Graph, NoDecay, Node, OpKind, ParamInfo, ParamRef, ParamSlice, Params, ValueId, ValueInfo,
};
use ecstrain_kernels::rng::Rng;

use super::Init;

/// A model that cannot be built as configured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// An op got an input of the wrong shape.
    #[error("{node}: expected input shape {expected}, got {got:?}")]
    Shape {
        /// Module path of the op.
        node: String,
        /// What the op accepts.
        expected: String,
        /// What it got.
        got: Vec<usize>,
    },
    /// A size or option is out of range.
    #[error("{node}: {message}")]
    Invalid {
        /// Module path of the op.
        node: String,
        /// What is wrong.
        message: String,
    },
}

/// Handle to a parameter declared in a builder (index into its parameter list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamHandle(usize);

struct ParamSpec {
    name: String,
    shape: Vec<usize>,
    init: Init,
    no_decay: bool,
}

enum PendingOp {
    Linear { in_features: usize, out_features: usize, weight: ParamHandle, bias: Option<ParamHandle> },
    Ready(OpKind),
}

struct PendingNode {
    name: String,
    op: PendingOp,
    input: ValueId,
    output: ValueId,
}

/// Accumulates values, ops and parameters; see the module docs.
pub struct GraphBuilder {
    arch: String,
    values: Vec<ValueInfo>,
    nodes: Vec<PendingNode>,
    params: Vec<ParamSpec>,
}

impl GraphBuilder {
    /// A graph for model `arch` whose input has this per-sample shape (value 0).
    pub fn new(arch: &str, input_shape: &[usize]) -> GraphBuilder {
        GraphBuilder {
            arch: arch.to_string(),
            values: vec![ValueInfo { shape: input_shape.to_vec() }],
            nodes: Vec::new(),
            params: Vec::new(),
        }
    }

    /// The model input.
    pub fn input(&self) -> ValueId {
        ValueId(0)
    }

    /// Per-sample shape of a value.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.values[v.0].shape
    }

    /// Declares a parameter. 1-d parameters get [`NoDecay`] (biases, norm weights), as Ultralytics and timm do.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> ParamHandle {
        self.params.push(ParamSpec { name: name.to_string(), shape: shape.to_vec(), init, no_decay: shape.len() <= 1 });
        ParamHandle(self.params.len() - 1)
    }

    fn push(&mut self, name: &str, op: PendingOp, input: ValueId, out_shape: Vec<usize>) -> ValueId {
        self.values.push(ValueInfo { shape: out_shape });
        let output = ValueId(self.values.len() - 1);
        self.nodes.push(PendingNode { name: name.to_string(), op, input, output });
        output
    }

    /// `nn.Linear(in, out_features, bias)` named `name` (parameters `name.weight`, `name.bias`), applied to the
    /// last dimension of a flat input `[in]`.
    pub fn linear(&mut self, name: &str, x: ValueId, out_features: usize, bias: bool) -> Result<ValueId, GraphError> {
        let shape = self.shape(x).to_vec();
        if shape.len() != 1 {
            return Err(GraphError::Shape {
                node: name.into(),
                expected: "[in_features] (flatten first)".into(),
                got: shape,
            });
        }
        if out_features == 0 {
            return Err(GraphError::Invalid { node: name.into(), message: "out_features must be at least 1".into() });
        }
        let in_features = shape[0];
        let weight =
            self.param(&format!("{name}.weight"), &[out_features, in_features], Init::torch_default(in_features));
        let bias = bias.then(|| self.param(&format!("{name}.bias"), &[out_features], Init::torch_default(in_features)));
        Ok(self.push(name, PendingOp::Linear { in_features, out_features, weight, bias }, x, vec![out_features]))
    }

    /// An element-wise activation.
    pub fn activation(&mut self, name: &str, x: ValueId, act: Activation) -> ValueId {
        let shape = self.shape(x).to_vec();
        self.push(name, PendingOp::Ready(OpKind::Activation(act)), x, shape)
    }

    /// `nn.Dropout(p)`.
    pub fn dropout(&mut self, name: &str, x: ValueId, p: f64) -> Result<ValueId, GraphError> {
        if !(0.0..1.0).contains(&p) {
            return Err(GraphError::Invalid {
                node: name.into(),
                message: format!("dropout p must be in [0, 1), got {p}"),
            });
        }
        let shape = self.shape(x).to_vec();
        Ok(self.push(name, PendingOp::Ready(OpKind::Dropout { p }), x, shape))
    }

    /// Total parameter elements declared so far.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.shape.iter().product::<usize>()).sum()
    }

    /// Spawns parameter entities, allocates and initialises the [`Params`] and [`Grads`] arenas, and returns
    /// the graph with `output` as the value the task reads.
    pub fn finish(self, world: &mut World, output: ValueId, seed: u64) -> Graph {
        let total = self.num_params();
        let mut params = Arena::zeros(total);
        let mut rng = Rng::derive(seed, &[0x1A17]);
        let mut refs = Vec::with_capacity(self.params.len());
        let mut offset = 0;
        for spec in &self.params {
            let len: usize = spec.shape.iter().product();
            let slice = ParamSlice { offset, len };
            spec.init.fill(params.get_mut(slice), &mut rng);
            let mut e = world.spawn((ParamInfo { name: spec.name.clone(), shape: spec.shape.clone() }, slice));
            if spec.no_decay {
                e.insert(NoDecay);
            }
            refs.push(ParamRef { entity: e.id(), slice });
            offset += len;
        }
        world.insert_resource(Params(params));
        world.insert_resource(Grads(Arena::zeros(total)));
        let nodes = self
            .nodes
            .into_iter()
            .map(|n| {
                let op = match n.op {
                    PendingOp::Linear { in_features, out_features, weight, bias } => OpKind::Linear {
                        in_features,
                        out_features,
                        weight: refs[weight.0],
                        bias: bias.map(|b| refs[b.0]),
                    },
                    PendingOp::Ready(op) => op,
                };
                Node { name: n.name, op, input: n.input, output: n.output }
            })
            .collect();
        Graph { arch: self.arch, values: self.values, nodes, output }
    }
}
