//! The model graph IR: a static graph of ops over values, built once by a registered model builder.
//!
//! The graph is data. Shapes are per sample (the batch dimension is implicit and leading) and were checked
//! when the graph was built; each parameter an op uses is referenced by its entity and its arena slice.
//! Forward and backward are systems (in `ecstrain-systems`) that walk `nodes` in order and in reverse.

use bevy_ecs::prelude::*;

use crate::{Arena, ParamSlice};

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

/// Element-wise activation functions (defined next to their kernels).
pub use ecstrain_kernels::ops::activation::Activation;

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

/// What a node computes. Shapes are per sample; the batch dimension is implicit.
#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// `y = x W^T + b` over the last dimension of `[rows.., in_features]` (PyTorch applies `nn.Linear` to the
    /// last axis, so a `[T, D]` token matrix is `rows = T`).
    Linear {
        /// Product of the leading per-sample dimensions (1 for a flat sample).
        rows: usize,
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// Weight `[out_features, in_features]`.
        weight: ParamRef,
        /// Optional bias `[out_features]`.
        bias: Option<ParamRef>,
        /// The activation applied to the result, when the graph's fusion pass has folded the activation node
        /// that read this output into the linear node (builders always leave it `None`). The pre-activation
        /// then lives in the node's saved buffer for the backward.
        act: Option<Activation>,
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
    /// `nn.AdaptiveAvgPool2d((OH, OW))`: `[C, H, W]` -> `[C, OH, OW]`, bins as PyTorch's.
    AdaptiveAvgPool2d {
        /// Input `[C, H, W]`.
        in_chw: (usize, usize, usize),
        /// Output height and width.
        out_hw: (usize, usize),
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
    /// `nn.BatchNorm2d` over `[C, H, W]`: batch statistics in training (updating the running statistics with
    /// PyTorch's momentum rule), running statistics in evaluation.
    BatchNorm2d {
        /// Channels.
        channels: usize,
        /// H * W.
        hw: usize,
        /// Added to the variance.
        eps: f64,
        /// Weight of the new batch statistic in the running average.
        momentum: f64,
        /// Optional scale `[C]`.
        weight: Option<ParamRef>,
        /// Optional shift `[C]`.
        bias: Option<ParamRef>,
        /// `running_mean [C]`, then `running_var [C]`, then `num_batches_tracked [1]`, in the [`Buffers`] arena.
        stats: ParamSlice,
    },
    /// `nn.LayerNorm(dim)` over the last dimension.
    LayerNorm {
        /// Normalised dimension (the last).
        dim: usize,
        /// Added to the variance.
        eps: f64,
        /// Optional scale `[dim]`.
        weight: Option<ParamRef>,
        /// Optional shift `[dim]`.
        bias: Option<ParamRef>,
    },
    /// `nn.Embedding(vocab, dim)`: each element of a `[T]` sample of integer ids (stored as floats, checked
    /// when the run is assembled) becomes its `[dim]` row of the table: `[T]` -> `[T, dim]`.
    Embedding {
        /// Table rows (valid ids are `0..vocab`).
        vocab: usize,
        /// Row width.
        dim: usize,
        /// Table `[vocab, dim]`.
        weight: ParamRef,
    },
    /// Softmax over the last dimension.
    Softmax {
        /// Size of the last dimension.
        dim: usize,
    },
    /// Element-wise sum of two inputs of one shape (residual connections).
    Add,
    /// Concatenation of the inputs along a per-sample axis.
    Concat {
        /// Per-sample axis.
        axis: usize,
    },
    /// Multi-head scaled dot-product self-attention on a fused projection: input `[T, 3D]` laid out as
    /// `[T, 3, heads, D / heads]` (q, k, v; PyTorch's `qkv(x).reshape(B, T, 3, H, D/H)`), output `[T, D]`
    /// with the heads merged back.
    Attention {
        /// Heads.
        heads: usize,
        /// Tokens T.
        tokens: usize,
        /// Model width D (the output's last dimension).
        dim: usize,
        /// Each token attends only to itself and earlier tokens.
        causal: bool,
    },
    /// Axis permutation of the sample (`x.permute(0, 1 + perm...)` in PyTorch terms).
    Permute {
        /// Input per-sample shape.
        in_shape: Vec<usize>,
        /// Output axis `a` is input axis `perm[a]`.
        perm: Vec<usize>,
    },
    /// Prepends a learned token: `[T, D]` -> `[T + 1, D]` (a ViT class token, parameter `[1, 1, D]`).
    PrependToken {
        /// The token.
        token: ParamRef,
    },
    /// Adds a learned tensor of the sample's shape to every sample (a position embedding `[1, T, D]`).
    AddParam {
        /// The added tensor.
        param: ParamRef,
    },
    /// Mean over tokens: `[T, D]` -> `[D]`.
    TokenMean,
    /// One token: `[T, D]` -> `[D]` (the class token of a ViT).
    SelectToken {
        /// Token index.
        index: usize,
    },
    /// Nearest-neighbour upsampling of `[C, H, W]` by integer factors.
    Upsample {
        /// (height, width) factors.
        factor: (usize, usize),
        /// Input `[C, H, W]`.
        in_chw: (usize, usize, usize),
    },
    /// Vector quantisation of `[D, H, W]` against a codebook `[K, D]` with the straight-through estimator;
    /// its loss `codebook + beta * commitment` is added to the task's loss (weighted by the task).
    VectorQuantize {
        /// Codebook `[codes, dim]`.
        codebook: ParamRef,
        /// Codes K.
        codes: usize,
        /// Code dimension D (channels).
        dim: usize,
        /// Positions H * W.
        positions: usize,
        /// Weight of the commitment term.
        beta: f64,
    },
    /// Fake quantization of an activation for quantization-aware training (inserted before the input of
    /// every linear / conv2d node by `run.qat`): `y = clamp(round(x / s), -128, 127) * s` with `s = amax / 127`,
    /// and the straight-through gradient (passed where `x / s` rounds inside the int8 range, zero where it
    /// saturates). In training `amax` follows the batch's max |x| as a moving average (PyTorch's
    /// `MovingAverageMinMaxObserver`, symmetric); in evaluation it is fixed.
    FakeQuantize {
        /// `amax [1]` in the [`Buffers`] arena (checkpointed with the model).
        amax: ParamSlice,
        /// Weight of the new batch's max |x| in the moving average (0.01 in PyTorch).
        averaging: f64,
    },
}

impl OpKind {
    /// Every parameter the op uses.
    pub fn params(&self) -> Vec<ParamRef> {
        match self {
            OpKind::Linear { weight, bias, .. } | OpKind::Conv2d { weight, bias, .. } => {
                std::iter::once(*weight).chain(*bias).collect()
            }
            OpKind::BatchNorm2d { weight, bias, .. } | OpKind::LayerNorm { weight, bias, .. } => {
                weight.iter().chain(bias.iter()).copied().collect()
            }
            OpKind::PrependToken { token: p } | OpKind::AddParam { param: p } => vec![*p],
            OpKind::VectorQuantize { codebook, .. } => vec![*codebook],
            OpKind::Embedding { weight, .. } => vec![*weight],
            _ => Vec::new(),
        }
    }

    /// Mutable references to every parameter (to fill in entities once they are spawned).
    pub fn params_mut(&mut self) -> Vec<&mut ParamRef> {
        match self {
            OpKind::Linear { weight, bias, .. } | OpKind::Conv2d { weight, bias, .. } => {
                std::iter::once(weight).chain(bias.as_mut()).collect()
            }
            OpKind::BatchNorm2d { weight, bias, .. } | OpKind::LayerNorm { weight, bias, .. } => {
                weight.iter_mut().chain(bias.iter_mut()).collect()
            }
            OpKind::PrependToken { token: p } | OpKind::AddParam { param: p } => vec![p],
            OpKind::VectorQuantize { codebook, .. } => vec![codebook],
            OpKind::Embedding { weight, .. } => vec![weight],
            _ => Vec::new(),
        }
    }

    /// A short description for the model summary (`Conv2d(1, 32, (3, 3))`).
    pub fn label(&self) -> String {
        match self {
            OpKind::Linear { in_features, out_features, act: None, .. } => {
                format!("Linear({in_features}, {out_features})")
            }
            OpKind::Linear { in_features, out_features, act: Some(a), .. } => {
                format!("Linear({in_features}, {out_features}) + {a:?}")
            }
            OpKind::Conv2d { spec, .. } => {
                format!("Conv2d({}, {}, {:?})", spec.in_channels, spec.out_channels, spec.kernel)
            }
            OpKind::MaxPool2d { spec, .. } => format!("MaxPool2d({:?})", spec.kernel),
            OpKind::AvgPool2d { spec, .. } => format!("AvgPool2d({:?})", spec.kernel),
            OpKind::GlobalAvgPool { .. } => "GlobalAvgPool".into(),
            OpKind::AdaptiveAvgPool2d { out_hw, .. } => format!("AdaptiveAvgPool2d({out_hw:?})"),
            OpKind::Reshape => "Reshape".into(),
            OpKind::Activation(a) => format!("{a:?}"),
            OpKind::Dropout { p } => format!("Dropout({p})"),
            OpKind::BatchNorm2d { channels, .. } => format!("BatchNorm2d({channels})"),
            OpKind::LayerNorm { dim, .. } => format!("LayerNorm({dim})"),
            OpKind::Softmax { .. } => "Softmax".into(),
            OpKind::Embedding { vocab, dim, .. } => format!("Embedding({vocab}, {dim})"),
            OpKind::Add => "Add".into(),
            OpKind::Concat { axis } => format!("Concat(axis {axis})"),
            OpKind::Attention { heads, causal, .. } => {
                format!("Attention({heads} heads{})", if *causal { ", causal" } else { "" })
            }
            OpKind::Permute { perm, .. } => format!("Permute({perm:?})"),
            OpKind::PrependToken { .. } => "PrependToken".into(),
            OpKind::AddParam { .. } => "AddParam".into(),
            OpKind::TokenMean => "TokenMean".into(),
            OpKind::SelectToken { index } => format!("SelectToken({index})"),
            OpKind::Upsample { factor, .. } => format!("Upsample({factor:?})"),
            OpKind::VectorQuantize { codes, dim, .. } => format!("VectorQuantize({codes}, {dim})"),
            OpKind::FakeQuantize { .. } => "FakeQuantize(int8)".into(),
        }
    }
}

/// One op application.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Module path of the op (`layers.0`), the prefix of its parameter names.
    pub name: String,
    /// The op.
    pub op: OpKind,
    /// Input values (one for most ops; two for `Add`; any number for `Concat`).
    pub inputs: Vec<ValueId>,
    /// Output value.
    pub output: ValueId,
}

/// A non-trainable tensor of the model (batch-norm running statistics), saved in checkpoints under its
/// PyTorch name but never touched by an optimizer.
#[derive(Clone, Debug, PartialEq)]
pub struct BufferEntry {
    /// Dotted name (`layer1.0.bn1.running_mean`).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Place in the [`Buffers`] arena.
    pub slice: ParamSlice,
    /// Stored as an integer in checkpoints (`num_batches_tracked` is an int64 in PyTorch).
    pub integer: bool,
}

/// The model's buffers: one f32 arena and the named entries in it.
#[derive(Resource, Clone, Debug, Default, PartialEq)]
pub struct Buffers {
    /// Every buffer, back to back.
    pub arena: Arena,
    /// Names and slices.
    pub entries: Vec<BufferEntry>,
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
