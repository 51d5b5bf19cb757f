//! Builds a static [`Graph`] and its parameter entities.
//!
//! A model builder (e.g. [`crate::models::mlp`]) calls the layer methods; each checks its input shape and
//! returns the output value, so a wrong config fails here, before any training. [`GraphBuilder::finish`]
//! spawns one entity per parameter, lays all parameters out in one arena (gradients and optimizer state
//! use the same layout), and initialises them from the run seed.

use bevy_ecs::prelude::*;
use std::collections::HashMap;

use ecstrain_components::{
    Activation, Arena, Bias, BufferEntry, Buffers, Conv2dSpec, Grads, Graph, NoDecay, Node, OpKind, ParamInfo,
    ParamRef, ParamSlice, Params, Pool2dSpec, ValueId, ValueInfo,
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

struct ParamSpec {
    name: String,
    shape: Vec<usize>,
    init: Init,
    no_decay: bool,
}

struct BufferSpec {
    entry: BufferEntry,
    init: f32,
}

/// Input `(C, H, W)`, output height, output width of a pooling op.
type PoolShapes = ((usize, usize, usize), usize, usize);

/// Output size of a convolution or pooling window along one axis (PyTorch floor mode), or `None` when the
/// window does not fit (or its sizes overflow).
fn window_out(size: usize, kernel: usize, stride: usize, padding: usize, dilation: usize) -> Option<usize> {
    let span = dilation.checked_mul(kernel.checked_sub(1)?)?.checked_add(1)?;
    let padded = size.checked_add(padding.checked_mul(2)?)?;
    (stride > 0 && kernel > 0 && padded >= span).then(|| (padded - span) / stride + 1)
}

/// The most elements one run may hold in any one of its arenas or per-sample activations: beyond this the
/// f32 bytes would not fit a Rust allocation (`isize::MAX`), whatever the machine.
pub const MAX_ELEMENTS: usize = (isize::MAX as usize) / 8;

/// Elements of a tensor of `shape`, or `None` past [`MAX_ELEMENTS`] (or on overflow).
fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_ELEMENTS)
}

/// What a built model holds, in elements: checked, so a config with absurd sizes is an error instead of an
/// allocation failure (see [`GraphBuilder::footprint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Parameter elements (the arena; gradients and optimizer state have the same layout).
    pub params: usize,
    /// Buffer elements (batch-norm statistics).
    pub buffers: usize,
    /// Elements of every value of one sample (input included), the activations a batch holds per sample.
    pub activations_per_sample: usize,
}

/// Accumulates values, ops and parameters; see the module docs.
pub struct GraphBuilder {
    arch: String,
    values: Vec<ValueInfo>,
    nodes: Vec<Node>,
    params: Vec<ParamSpec>,
    buffers: Vec<BufferSpec>,
    /// Running totals of `params` / `buffers` elements (the next offsets; summing at each declaration made
    /// building a deep model quadratic).
    param_total: usize,
    buffer_total: usize,
    /// The first parameter, buffer or value too large to hold ([`Self::footprint`] reports it).
    too_large: Option<GraphError>,
}

impl GraphBuilder {
    /// A graph for model `arch` whose input has this per-sample shape (value 0).
    pub fn new(arch: &str, input_shape: &[usize]) -> GraphBuilder {
        GraphBuilder {
            arch: arch.to_string(),
            values: vec![ValueInfo { shape: input_shape.to_vec() }],
            nodes: Vec::new(),
            params: Vec::new(),
            buffers: Vec::new(),
            param_total: 0,
            buffer_total: 0,
            too_large: None,
        }
    }

    /// The elements of `shape` for `what`, recording the first one past [`MAX_ELEMENTS`] (0 then, so
    /// building can go on to the end and report it).
    fn numel_or_note(&mut self, what: &str, shape: &[usize], total: Option<usize>) -> usize {
        match checked_numel(shape)
            .filter(|&n| total.is_none_or(|t| t.checked_add(n).is_some_and(|s| s <= MAX_ELEMENTS)))
        {
            Some(n) => n,
            None => {
                self.too_large.get_or_insert_with(|| GraphError::Invalid {
                    node: what.to_string(),
                    message: format!(
                        "shape {shape:?} is too large to hold (more than {MAX_ELEMENTS} elements with the rest of \
                         the model); check the model's sizes"
                    ),
                });
                0
            }
        }
    }

    /// What the model holds so far, or the error naming the first parameter, buffer or value whose size
    /// cannot be held. Assembly checks this before [`Self::finish`] allocates the arenas.
    pub fn footprint(&self) -> Result<Footprint, GraphError> {
        if let Some(e) = &self.too_large {
            return Err(e.clone());
        }
        let activations_per_sample = self
            .values
            .iter()
            .try_fold(0usize, |sum, v| sum.checked_add(checked_numel(&v.shape)?))
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| GraphError::Invalid {
                node: self.arch.clone(),
                message: format!("the activations of one sample are more than {MAX_ELEMENTS} elements"),
            })?;
        Ok(Footprint { params: self.param_total, buffers: self.buffer_total, activations_per_sample })
    }

    /// The model input.
    pub fn input(&self) -> ValueId {
        ValueId(0)
    }

    /// Per-sample shape of a value.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.values[v.0].shape
    }

    /// Declares a parameter; its place in the arena is fixed now, its entity is spawned by [`Self::finish`].
    /// 1-d parameters get [`NoDecay`] (biases, norm weights), as Ultralytics and timm do.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> ParamRef {
        self.param_with_decay(name, shape, init, shape.len() <= 1)
    }

    /// [`Self::param`] with an explicit weight-decay choice (ViT class tokens and position embeddings are
    /// excluded from decay by timm, although they are not 1-d).
    pub fn param_with_decay(&mut self, name: &str, shape: &[usize], init: Init, decay: bool) -> ParamRef {
        let len = self.numel_or_note(name, shape, Some(self.param_total));
        let slice = ParamSlice { offset: self.param_total, len };
        self.param_total += len;
        self.params.push(ParamSpec { name: name.to_string(), shape: shape.to_vec(), init, no_decay: !decay });
        ParamRef { entity: Entity::PLACEHOLDER, slice }
    }

    /// Declares a non-trainable buffer filled with `init` (batch-norm running statistics).
    pub fn buffer(&mut self, name: &str, shape: &[usize], init: f32, integer: bool) -> ParamSlice {
        let (offset, len) = (self.buffer_total, self.numel_or_note(name, shape, Some(self.buffer_total)));
        self.buffer_total += len;
        let slice = ParamSlice { offset, len };
        let entry = BufferEntry { name: name.to_string(), shape: shape.to_vec(), slice, integer };
        self.buffers.push(BufferSpec { entry, init });
        slice
    }

    /// Appends a node computing `op` from `inputs` into a new value of per-sample shape `out_shape`.
    pub fn push_op(&mut self, name: &str, op: OpKind, inputs: &[ValueId], out_shape: Vec<usize>) -> ValueId {
        self.numel_or_note(name, &out_shape, None);
        self.values.push(ValueInfo { shape: out_shape });
        let output = ValueId(self.values.len() - 1);
        self.nodes.push(Node { name: name.to_string(), op, inputs: inputs.to_vec(), output });
        output
    }

    fn push(&mut self, name: &str, op: OpKind, input: ValueId, out_shape: Vec<usize>) -> ValueId {
        self.push_op(name, op, &[input], out_shape)
    }

    /// `nn.Linear(in, out_features, bias)` named `name` (parameters `name.weight`, `name.bias`), applied to the
    /// last dimension of the input (`[in]`, or `[T, in]` for tokens).
    pub fn linear(&mut self, name: &str, x: ValueId, out_features: usize, bias: bool) -> Result<ValueId, GraphError> {
        let shape = self.shape(x).to_vec();
        if shape.is_empty() || shape.len() > 2 {
            return Err(GraphError::Shape {
                node: name.into(),
                expected: "[in_features] or [tokens, in_features] (flatten first)".into(),
                got: shape,
            });
        }
        if out_features == 0 {
            return Err(GraphError::Invalid { node: name.into(), message: "out_features must be at least 1".into() });
        }
        let in_features = *shape.last().expect("checked non-empty");
        let rows = shape[..shape.len() - 1].iter().product();
        let weight =
            self.param(&format!("{name}.weight"), &[out_features, in_features], Init::torch_default(in_features));
        let bias = bias.then(|| self.param(&format!("{name}.bias"), &[out_features], Init::torch_default(in_features)));
        let mut out_shape = shape;
        *out_shape.last_mut().expect("checked non-empty") = out_features;
        Ok(self.push(name, OpKind::Linear { rows, in_features, out_features, weight, bias, act: None }, x, out_shape))
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
        if spec.dilation.0 == 0 || spec.dilation.1 == 0 || spec.stride.0 == 0 || spec.stride.1 == 0 {
            return Err(invalid(format!("stride {:?} and dilation {:?} must be >= 1", spec.stride, spec.dilation)));
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
        let op = OpKind::Conv2d { spec, in_hw: (h, w), out_hw: (oh, ow), weight, bias };
        Ok(self.push(name, op, x, vec![spec.out_channels, oh, ow]))
    }

    fn pool_out(&self, name: &str, x: ValueId, spec: Pool2dSpec) -> Result<PoolShapes, GraphError> {
        let (c, h, w) = self.chw(name, x)?;
        let invalid = |message: String| GraphError::Invalid { node: name.into(), message };
        // `p > k / 2` is `2p > k` without the overflow a huge padding would cause.
        if spec.padding.0 > spec.kernel.0 / 2 || spec.padding.1 > spec.kernel.1 / 2 {
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
        Ok(self.push(name, OpKind::MaxPool2d { spec, in_chw }, x, vec![in_chw.0, oh, ow]))
    }

    /// `nn.AvgPool2d` (count_include_pad = True).
    pub fn avg_pool2d(&mut self, name: &str, x: ValueId, spec: Pool2dSpec) -> Result<ValueId, GraphError> {
        let (in_chw, oh, ow) = self.pool_out(name, x, spec)?;
        Ok(self.push(name, OpKind::AvgPool2d { spec, in_chw }, x, vec![in_chw.0, oh, ow]))
    }

    /// `nn.AdaptiveAvgPool2d((OH, OW))`: `[C, H, W]` -> `[C, OH, OW]`.
    pub fn adaptive_avg_pool2d(
        &mut self,
        name: &str,
        x: ValueId,
        out_hw: (usize, usize),
    ) -> Result<ValueId, GraphError> {
        let in_chw = self.chw(name, x)?;
        if out_hw.0 == 0 || out_hw.1 == 0 {
            return Err(Self::invalid(name, format!("output size must be at least 1x1, got {out_hw:?}")));
        }
        let op = OpKind::AdaptiveAvgPool2d { in_chw, out_hw };
        Ok(self.push(name, op, x, vec![in_chw.0, out_hw.0, out_hw.1]))
    }

    /// `nn.AdaptiveAvgPool2d(1)` followed by flatten: `[C, H, W]` -> `[C]`.
    pub fn global_avg_pool(&mut self, name: &str, x: ValueId) -> Result<ValueId, GraphError> {
        let in_chw = self.chw(name, x)?;
        Ok(self.push(name, OpKind::GlobalAvgPool { in_chw }, x, vec![in_chw.0]))
    }

    /// Reinterprets a sample as `shape` (same element count).
    pub fn reshape(&mut self, name: &str, x: ValueId, shape: &[usize]) -> Result<ValueId, GraphError> {
        let have = self.shape(x).to_vec();
        let Some(want) = checked_numel(shape) else {
            return Err(Self::invalid(name, format!("shape {shape:?} is too large to hold")));
        };
        if checked_numel(&have) != Some(want) {
            return Err(GraphError::Shape {
                node: name.into(),
                expected: format!("{want} elements to reshape into {shape:?}"),
                got: have,
            });
        }
        Ok(self.push(name, OpKind::Reshape, x, shape.to_vec()))
    }

    /// `nn.Flatten()`: `[...]` -> `[numel]`.
    pub fn flatten(&mut self, name: &str, x: ValueId) -> ValueId {
        let n = self.shape(x).iter().product::<usize>();
        self.push(name, OpKind::Reshape, x, vec![n])
    }

    /// An element-wise activation.
    pub fn activation(&mut self, name: &str, x: ValueId, act: Activation) -> ValueId {
        let shape = self.shape(x).to_vec();
        self.push(name, OpKind::Activation(act), x, shape)
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
        Ok(self.push(name, OpKind::Dropout { p }, x, shape))
    }

    fn invalid(name: &str, message: String) -> GraphError {
        GraphError::Invalid { node: name.into(), message }
    }

    fn tokens(&self, name: &str, x: ValueId) -> Result<(usize, usize), GraphError> {
        match *self.shape(x) {
            [t, d] => Ok((t, d)),
            ref other => Err(GraphError::Shape { node: name.into(), expected: "[T, D]".into(), got: other.to_vec() }),
        }
    }

    /// `nn.BatchNorm2d(C, eps, momentum, affine)` on `[C, H, W]`: parameters `name.weight` (ones) and
    /// `name.bias` (zeros), buffers `name.running_mean` (zeros), `name.running_var` (ones) and
    /// `name.num_batches_tracked`.
    pub fn batch_norm2d(
        &mut self,
        name: &str,
        x: ValueId,
        eps: f64,
        momentum: f64,
        affine: bool,
    ) -> Result<ValueId, GraphError> {
        let (c, h, w) = self.chw(name, x)?;
        if eps.is_nan() || eps <= 0.0 || !(0.0..=1.0).contains(&momentum) {
            return Err(Self::invalid(
                name,
                format!("eps must be > 0 and momentum in [0, 1], got {eps} and {momentum}"),
            ));
        }
        let weight = affine.then(|| self.param(&format!("{name}.weight"), &[c], Init::Ones));
        let bias = affine.then(|| self.param(&format!("{name}.bias"), &[c], Init::Zeros));
        let stats = self.buffer(&format!("{name}.running_mean"), &[c], 0.0, false);
        self.buffer(&format!("{name}.running_var"), &[c], 1.0, false);
        self.buffer(&format!("{name}.num_batches_tracked"), &[], 0.0, true);
        let stats = ParamSlice { offset: stats.offset, len: 2 * c + 1 };
        let op = OpKind::BatchNorm2d { channels: c, hw: h * w, eps, momentum, weight, bias, stats };
        Ok(self.push(name, op, x, vec![c, h, w]))
    }

    /// `nn.LayerNorm(D, eps)` over the last dimension: parameters `name.weight` (ones), `name.bias` (zeros).
    pub fn layer_norm(&mut self, name: &str, x: ValueId, eps: f64, affine: bool) -> Result<ValueId, GraphError> {
        let shape = self.shape(x).to_vec();
        let Some(&dim) = shape.last() else {
            return Err(GraphError::Shape { node: name.into(), expected: "[.., D]".into(), got: shape });
        };
        if eps.is_nan() || eps <= 0.0 {
            return Err(Self::invalid(name, format!("eps must be > 0, got {eps}")));
        }
        let weight = affine.then(|| self.param(&format!("{name}.weight"), &[dim], Init::Ones));
        let bias = affine.then(|| self.param(&format!("{name}.bias"), &[dim], Init::Zeros));
        Ok(self.push(name, OpKind::LayerNorm { dim, eps, weight, bias }, x, shape))
    }

    /// `nn.Embedding(vocab, dim)` named `name` (table `name.weight`, N(0, 1) as PyTorch) on a `[T]` sample of
    /// integer ids: `[T]` -> `[T, dim]`. Ids read from data are checked when the run is assembled.
    pub fn embedding(&mut self, name: &str, x: ValueId, vocab: usize, dim: usize) -> Result<ValueId, GraphError> {
        let t = match *self.shape(x) {
            [t] => t,
            ref other => {
                return Err(GraphError::Shape {
                    node: name.into(),
                    expected: "[T] (token ids)".into(),
                    got: other.to_vec(),
                })
            }
        };
        if vocab == 0 || dim == 0 {
            return Err(Self::invalid(name, format!("vocab and dim must be at least 1, got {vocab} and {dim}")));
        }
        if x.0 != 0 {
            // Ids are checked once, in the data; ids computed by earlier layers could not be.
            return Err(Self::invalid(
                name,
                "an embedding reads token ids from the data: make it the first layer".into(),
            ));
        }
        let weight = self.param(&format!("{name}.weight"), &[vocab, dim], Init::Normal { std: 1.0 });
        Ok(self.push(name, OpKind::Embedding { vocab, dim, weight }, x, vec![t, dim]))
    }

    /// `nn.Softmax(dim=-1)`: softmax over the last dimension.
    pub fn softmax(&mut self, name: &str, x: ValueId) -> Result<ValueId, GraphError> {
        let shape = self.shape(x).to_vec();
        match shape.last() {
            Some(&dim) if dim > 0 => Ok(self.push(name, OpKind::Softmax { dim }, x, shape)),
            _ => Err(GraphError::Shape { node: name.into(), expected: "[.., D] with D >= 1".into(), got: shape }),
        }
    }

    /// `a + b` (a residual connection); both of one shape.
    pub fn add(&mut self, name: &str, a: ValueId, b: ValueId) -> Result<ValueId, GraphError> {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if sa != sb {
            return Err(GraphError::Shape {
                node: name.into(),
                expected: format!("{sa:?} (the first input)"),
                got: sb,
            });
        }
        Ok(self.push_op(name, OpKind::Add, &[a, b], sa))
    }

    /// `torch.cat(inputs, dim=1 + axis)`: concatenation along a per-sample axis.
    pub fn concat(&mut self, name: &str, inputs: &[ValueId], axis: usize) -> Result<ValueId, GraphError> {
        let shapes: Vec<&[usize]> = inputs.iter().map(|&v| self.shape(v)).collect();
        let shape = ecstrain_kernels::ops::concat::concat_shape(&shapes, axis)
            .map_err(|e| Self::invalid(name, format!("cannot concatenate {shapes:?} on axis {axis}: {e}")))?;
        Ok(self.push_op(name, OpKind::Concat { axis }, inputs, shape))
    }

    /// Multi-head self-attention on a fused `[T, 3D]` projection (see [`OpKind::Attention`]) -> `[T, D]`.
    pub fn attention(&mut self, name: &str, qkv: ValueId, heads: usize, causal: bool) -> Result<ValueId, GraphError> {
        let (t, d3) = self.tokens(name, qkv)?;
        if !d3.is_multiple_of(3) || heads == 0 || !(d3 / 3).is_multiple_of(heads) || d3 == 0 {
            return Err(Self::invalid(
                name,
                format!("the fused projection width {d3} must be 3 * D with D a multiple of heads ({heads})"),
            ));
        }
        let dim = d3 / 3;
        Ok(self.push(name, OpKind::Attention { heads, tokens: t, dim, causal }, qkv, vec![t, dim]))
    }

    /// Permutes the sample's axes: output axis `a` is input axis `perm[a]`.
    pub fn permute(&mut self, name: &str, x: ValueId, perm: &[usize]) -> Result<ValueId, GraphError> {
        let in_shape = self.shape(x).to_vec();
        ecstrain_kernels::ops::permute::validate_perm(perm, in_shape.len())
            .map_err(|e| Self::invalid(name, format!("permutation {perm:?} of a {in_shape:?} sample: {e}")))?;
        let out = ecstrain_kernels::ops::permute::permuted_shape(&in_shape, perm);
        Ok(self.push(name, OpKind::Permute { in_shape, perm: perm.to_vec() }, x, out))
    }

    /// Prepends the learned token `param_name` (`[1, 1, D]`, zeros as timm's `cls_token`): `[T, D]` -> `[T+1, D]`.
    pub fn prepend_token(&mut self, name: &str, param_name: &str, x: ValueId) -> Result<ValueId, GraphError> {
        let (t, d) = self.tokens(name, x)?;
        let token = self.param_with_decay(param_name, &[1, 1, d], Init::Zeros, false);
        Ok(self.push(name, OpKind::PrependToken { token }, x, vec![t + 1, d]))
    }

    /// Adds the learned tensor `param_name` (`[1, ..sample shape]`, N(0, std^2), no weight decay) to every
    /// sample: a position embedding.
    pub fn add_param(&mut self, name: &str, param_name: &str, x: ValueId, std: f64) -> ValueId {
        let shape = self.shape(x).to_vec();
        let pshape: Vec<usize> = std::iter::once(1).chain(shape.iter().copied()).collect();
        let param = self.param_with_decay(param_name, &pshape, Init::Normal { std }, false);
        self.push(name, OpKind::AddParam { param }, x, shape)
    }

    /// Mean over tokens: `[T, D]` -> `[D]`.
    pub fn token_mean(&mut self, name: &str, x: ValueId) -> Result<ValueId, GraphError> {
        let (_, d) = self.tokens(name, x)?;
        Ok(self.push(name, OpKind::TokenMean, x, vec![d]))
    }

    /// Token `index`: `[T, D]` -> `[D]`.
    pub fn select_token(&mut self, name: &str, x: ValueId, index: usize) -> Result<ValueId, GraphError> {
        let (t, d) = self.tokens(name, x)?;
        if index >= t {
            return Err(Self::invalid(name, format!("token {index} of {t}")));
        }
        Ok(self.push(name, OpKind::SelectToken { index }, x, vec![d]))
    }

    /// `nn.Upsample(scale_factor=(fh, fw), mode="nearest")` on `[C, H, W]`.
    pub fn upsample(&mut self, name: &str, x: ValueId, factor: (usize, usize)) -> Result<ValueId, GraphError> {
        let in_chw = self.chw(name, x)?;
        if factor.0 == 0 || factor.1 == 0 {
            return Err(Self::invalid(name, format!("scale factors must be >= 1, got {factor:?}")));
        }
        let (Some(oh), Some(ow)) = (in_chw.1.checked_mul(factor.0), in_chw.2.checked_mul(factor.1)) else {
            return Err(Self::invalid(name, format!("scale factors {factor:?} overflow the output size")));
        };
        let out = vec![in_chw.0, oh, ow];
        Ok(self.push(name, OpKind::Upsample { factor, in_chw }, x, out))
    }

    /// A VQ-VAE quantiser on `[D, H, W]` with a codebook `name.embedding.weight` `[codes, D]` initialised
    /// U(-1/K, 1/K) as in the original VQ-VAE code.
    pub fn vector_quantize(&mut self, name: &str, x: ValueId, codes: usize, beta: f64) -> Result<ValueId, GraphError> {
        let (d, h, w) = self.chw(name, x)?;
        if codes == 0 || beta.is_nan() || beta < 0.0 {
            return Err(Self::invalid(name, format!("codes must be >= 1 and beta >= 0, got {codes} and {beta}")));
        }
        if x.0 == 0 {
            return Err(Self::invalid(name, "cannot quantise the model input itself".into()));
        }
        let codebook =
            self.param(&format!("{name}.embedding.weight"), &[codes, d], Init::Uniform { bound: 1.0 / codes as f64 });
        let op = OpKind::VectorQuantize { codebook, codes, dim: d, positions: h * w, beta };
        Ok(self.push(name, op, x, vec![d, h, w]))
    }

    /// Total parameter elements declared so far.
    pub fn num_params(&self) -> usize {
        self.param_total
    }

    /// Spawns parameter entities, allocates and initialises the [`Params`], [`Grads`] and [`Buffers`] arenas,
    /// and returns the graph with `output` as the value the task reads. The sizes must be holdable
    /// ([`Self::footprint`] is `Ok`; assembly checks it with the config's keys in the message).
    pub fn finish(self, world: &mut World, output: ValueId, seed: u64) -> Graph {
        if let Err(e) = self.footprint() {
            panic!("GraphBuilder::finish on a model too large to hold (check footprint() first): {e}");
        }
        let total = self.num_params();
        let mut params = Arena::zeros(total);
        let mut rng = Rng::derive(seed, &[0x1A17]);
        let mut entity_at = HashMap::with_capacity(self.params.len());
        let mut offset = 0;
        for spec in &self.params {
            let len: usize = spec.shape.iter().product();
            let slice = ParamSlice { offset, len };
            spec.init.fill(params.get_mut(slice), &mut rng);
            let mut e = world.spawn((ParamInfo { name: spec.name.clone(), shape: spec.shape.clone() }, slice));
            if spec.no_decay {
                e.insert(NoDecay);
            }
            if spec.name.ends_with("bias") {
                e.insert(Bias);
            }
            entity_at.insert(offset, e.id());
            offset += len;
        }
        world.insert_resource(Params(params));
        world.insert_resource(Grads(Arena::zeros(total)));
        let mut buffers = Buffers::default();
        for b in self.buffers {
            buffers.arena.data.extend(std::iter::repeat_n(b.init, b.entry.slice.len));
            buffers.entries.push(b.entry);
        }
        world.insert_resource(buffers);
        let mut nodes = self.nodes;
        for node in &mut nodes {
            for p in node.op.params_mut() {
                p.entity = entity_at[&p.slice.offset];
            }
        }
        Graph { arch: self.arch, values: self.values, nodes, output }
    }
}
