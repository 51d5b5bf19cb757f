//! Builds a static [`Graph`] and its parameter entities.
//!
//! A model builder (e.g. [`crate::models::mlp`]) calls the layer methods; each checks its input shape and
//! returns the output value, so a wrong config fails here, before any training. [`GraphBuilder::finish`]
//! spawns one entity per parameter, lays all parameters out in one arena (gradients and optimizer state
//! use the same layout), and initialises them from the run seed.

use bevy_ecs::prelude::*;
use ecstrain_components::{
    Activation, Arena, Conv2dSpec, Grads, Graph, NoDecay, Node, OpKind, ParamInfo, ParamRef, ParamSlice, Params,
    Pool2dSpec, ValueId, ValueInfo,
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
    Linear {
        in_features: usize,
        out_features: usize,
        weight: ParamHandle,
        bias: Option<ParamHandle>,
    },
    Conv2d {
        spec: Conv2dSpec,
        in_hw: (usize, usize),
        out_hw: (usize, usize),
        weight: ParamHandle,
        bias: Option<ParamHandle>,
    },
    Ready(OpKind),
}

/// Input `(C, H, W)`, output height, output width of a pooling op.
type PoolShapes = ((usize, usize, usize), usize, usize);

/// Output size of a convolution or pooling window along one axis (PyTorch floor mode), or `None` when the
/// window does not fit.
fn window_out(size: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) -> Option<usize> {
    let span = dilation * (kernel.checked_sub(1)?) + 1;
    let padded = size + 2 * padding;
    (stride > 0 && kernel > 0 && padded >= span).then(|| (padded - span) / stride + 1)
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

    fn chw(&self, name: &str, x: ValueId) -> Result<(usize, usize, usize), GraphError> {
        match *self.shape(x) {
            [c, h, w] => Ok((c, h, w)),
            ref other => {
                Err(GraphError::Shape { node: name.into(), expected: "[C, H, W]".into(), got: other.to_vec() })
            }
        }
    }

    /// `nn.Conv2d` named `name` (parameters `name.weight` `[oc, c/groups, kh, kw]`, `name.bias`) on a `[C, H, W]`
    /// input.
    pub fn conv2d(&mut self, name: &str, x: ValueId, spec: Conv2dSpec, bias: bool) -> Result<ValueId, GraphError> {
        let (c, h, w) = self.chw(name, x)?;
        let invalid = |message: String| GraphError::Invalid { node: name.into(), message };
        if spec.in_channels != c {
            return Err(GraphError::Shape {
                node: name.into(),
                expected: format!("[{}, H, W]", spec.in_channels),
                got: vec![c, h, w],
            });
        }
        if spec.groups == 0
            || !c.is_multiple_of(spec.groups)
            || !spec.out_channels.is_multiple_of(spec.groups)
            || spec.out_channels == 0
        {
            return Err(invalid(format!(
                "groups {} must divide in_channels {c} and out_channels {} (both >= 1)",
                spec.groups, spec.out_channels
            )));
        }
        let oh = window_out(h, spec.kernel.0, spec.stride.0, spec.padding.0, spec.dilation.0);
        let ow = window_out(w, spec.kernel.1, spec.stride.1, spec.padding.1, spec.dilation.1);
        let (Some(oh), Some(ow)) = (oh, ow) else {
            return Err(invalid(format!(
                "kernel {:?} (dilation {:?}, padding {:?}, stride {:?}) does not fit a {h}x{w} input",
                spec.kernel, spec.dilation, spec.padding, spec.stride
            )));
        };
        let fan_in = (c / spec.groups) * spec.kernel.0 * spec.kernel.1;
        let weight = self.param(
            &format!("{name}.weight"),
            &[spec.out_channels, c / spec.groups, spec.kernel.0, spec.kernel.1],
            Init::torch_default(fan_in),
        );
        let bias = bias.then(|| self.param(&format!("{name}.bias"), &[spec.out_channels], Init::torch_default(fan_in)));
        let op = PendingOp::Conv2d { spec, in_hw: (h, w), out_hw: (oh, ow), weight, bias };
        Ok(self.push(name, op, x, vec![spec.out_channels, oh, ow]))
    }

    fn pool_out(&self, name: &str, x: ValueId, spec: Pool2dSpec) -> Result<PoolShapes, GraphError> {
        let (c, h, w) = self.chw(name, x)?;
        let invalid = |message: String| GraphError::Invalid { node: name.into(), message };
        if 2 * spec.padding.0 > spec.kernel.0 || 2 * spec.padding.1 > spec.kernel.1 {
            return Err(invalid(format!(
                "padding {:?} must be at most half the kernel {:?}",
                spec.padding, spec.kernel
            )));
        }
        let oh = window_out(h, spec.kernel.0, spec.stride.0, spec.padding.0, 1);
        let ow = window_out(w, spec.kernel.1, spec.stride.1, spec.padding.1, 1);
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok(((c, h, w), oh, ow)),
            _ => Err(invalid(format!(
                "pooling window {:?} (stride {:?}) does not fit a {h}x{w} input",
                spec.kernel, spec.stride
            ))),
        }
    }

    /// `nn.MaxPool2d`.
    pub fn max_pool2d(&mut self, name: &str, x: ValueId, spec: Pool2dSpec) -> Result<ValueId, GraphError> {
        let (in_chw, oh, ow) = self.pool_out(name, x, spec)?;
        Ok(self.push(name, PendingOp::Ready(OpKind::MaxPool2d { spec, in_chw }), x, vec![in_chw.0, oh, ow]))
    }

    /// `nn.AvgPool2d` (count_include_pad = True).
    pub fn avg_pool2d(&mut self, name: &str, x: ValueId, spec: Pool2dSpec) -> Result<ValueId, GraphError> {
        let (in_chw, oh, ow) = self.pool_out(name, x, spec)?;
        Ok(self.push(name, PendingOp::Ready(OpKind::AvgPool2d { spec, in_chw }), x, vec![in_chw.0, oh, ow]))
    }

    /// `nn.AdaptiveAvgPool2d(1)` followed by flatten: `[C, H, W]` -> `[C]`.
    pub fn global_avg_pool(&mut self, name: &str, x: ValueId) -> Result<ValueId, GraphError> {
        let in_chw = self.chw(name, x)?;
        Ok(self.push(name, PendingOp::Ready(OpKind::GlobalAvgPool { in_chw }), x, vec![in_chw.0]))
    }

    /// Reinterprets a sample as `shape` (same element count).
    pub fn reshape(&mut self, name: &str, x: ValueId, shape: &[usize]) -> Result<ValueId, GraphError> {
        let have = self.shape(x).to_vec();
        if have.iter().product::<usize>() != shape.iter().product::<usize>() {
            return Err(GraphError::Shape {
                node: name.into(),
                expected: format!("{} elements to reshape into {shape:?}", shape.iter().product::<usize>()),
                got: have,
            });
        }
        Ok(self.push(name, PendingOp::Ready(OpKind::Reshape), x, shape.to_vec()))
    }

    /// `nn.Flatten()`: `[...]` -> `[numel]`.
    pub fn flatten(&mut self, name: &str, x: ValueId) -> ValueId {
        let n = self.shape(x).iter().product::<usize>();
        self.push(name, PendingOp::Ready(OpKind::Reshape), x, vec![n])
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
                    PendingOp::Conv2d { spec, in_hw, out_hw, weight, bias } => {
                        OpKind::Conv2d { spec, in_hw, out_hw, weight: refs[weight.0], bias: bias.map(|b| refs[b.0]) }
                    }
                    PendingOp::Ready(op) => op,
                };
                Node { name: n.name, op, input: n.input, output: n.output }
            })
            .collect();
        Graph { arch: self.arch, values: self.values, nodes, output }
    }
}
