//! `sequential`: a model written entirely in YAML as a list of layers, applied in order, like PyTorch's
//! `nn.Sequential`. Parameters are named `layers.<index>.weight` / `.bias`, so the twin is a module whose
//! `layers` attribute is the `nn.Sequential` of the same list.
//!
//! ```yaml
//! model:
//!   arch: sequential
//!   layers:
//!     - {type: reshape, shape: [1, 8, 8]}
//!     - {type: conv2d, out_channels: 16, kernel: 3, padding: 1}
//!     - {type: relu}
//!     - {type: max_pool2d, kernel: 2}
//!     - {type: flatten}
//!     - {type: linear, out_features: 10}
//! ```

use ecstrain_components::{Activation, Conv2dSpec, Pool2dSpec, ValueId};
use serde::Deserialize;

use super::{parse_options, BuiltModel};
use crate::graph::GraphBuilder;

/// A size given as one number (square) or as `[height, width]`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Pair {
    /// The same size for height and width.
    One(usize),
    /// `[height, width]`.
    Two([usize; 2]),
}

impl Pair {
    fn hw(self) -> (usize, usize) {
        match self {
            Pair::One(v) => (v, v),
            Pair::Two([h, w]) => (h, w),
        }
    }
}

fn one() -> Pair {
    Pair::One(1)
}
fn zero() -> Pair {
    Pair::One(0)
}
fn yes() -> bool {
    true
}
fn one_usize() -> usize {
    1
}

/// One layer of a `sequential` model; `type` selects the variant.
///
/// The layers without options are empty struct variants (`Relu {}`), not unit variants: serde's internally
/// tagged unit variants accept and drop any other key, so `{type: relu, negative_slope: 0.2}` was taken for a
/// plain ReLU; an empty struct variant refuses it (`deny_unknown_fields`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// `nn.Linear(in, out_features)` over a flat sample.
    Linear {
        /// Output features.
        out_features: usize,
        /// With a bias.
        #[serde(default = "yes")]
        bias: bool,
    },
    /// `nn.Conv2d` over a `[C, H, W]` sample.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel size.
        kernel: Pair,
        /// Stride.
        #[serde(default = "one")]
        stride: Pair,
        /// Zero padding.
        #[serde(default = "zero")]
        padding: Pair,
        /// Dilation.
        #[serde(default = "one")]
        dilation: Pair,
        /// Channel groups.
        #[serde(default = "one_usize")]
        groups: usize,
        /// With a bias.
        #[serde(default = "yes")]
        bias: bool,
    },
    /// `nn.MaxPool2d` (stride defaults to the kernel, as in PyTorch).
    MaxPool2d {
        /// Window.
        kernel: Pair,
        /// Stride (default: the kernel).
        #[serde(default)]
        stride: Option<Pair>,
        /// Padding.
        #[serde(default = "zero")]
        padding: Pair,
    },
    /// `nn.AvgPool2d` (stride defaults to the kernel).
    AvgPool2d {
        /// Window.
        kernel: Pair,
        /// Stride (default: the kernel).
        #[serde(default)]
        stride: Option<Pair>,
        /// Padding.
        #[serde(default = "zero")]
        padding: Pair,
    },
    /// Global average pooling `[C, H, W]` -> `[C]`.
    GlobalAvgPool {},
    /// `nn.AdaptiveAvgPool2d(output_size)`: `[C, H, W]` -> `[C, OH, OW]`.
    AdaptiveAvgPool2d {
        /// Output size (one number or `[h, w]`).
        output_size: Pair,
    },
    /// `nn.Flatten()`.
    Flatten {},
    /// View the sample as `shape`.
    Reshape {
        /// New per-sample shape.
        shape: Vec<usize>,
    },
    /// `nn.ReLU`.
    Relu {},
    /// `nn.GELU()` (erf form).
    Gelu {},
    /// `nn.GELU(approximate="tanh")`.
    GeluTanh {},
    /// `nn.Tanh`.
    Tanh {},
    /// `nn.Sigmoid`.
    Sigmoid {},
    /// `nn.SiLU`.
    Silu {},
    /// `nn.Softmax(dim=-1)`: softmax over the last dimension.
    Softmax {},
    /// `nn.Embedding(num_embeddings, embedding_dim)` on a `[T]` sample of integer token ids.
    Embedding {
        /// Vocabulary size.
        num_embeddings: usize,
        /// Row width.
        embedding_dim: usize,
    },
    /// Mean over tokens: `[T, D]` -> `[D]`.
    TokenMean {},
    /// `x.permute(0, *[1 + d for d in dims])`: reorders the per-sample axes.
    Permute {
        /// New order of the per-sample axes (a permutation of 0..rank).
        dims: Vec<usize>,
    },
    /// `nn.Dropout(p)`.
    Dropout {
        /// Drop probability.
        p: f64,
    },
    /// `nn.BatchNorm2d(C)` over a `[C, H, W]` sample (parameters `weight`, `bias`; buffers `running_mean`,
    /// `running_var`, `num_batches_tracked`).
    BatchNorm2d {
        /// Added to the variance.
        #[serde(default = "bn_eps")]
        eps: f64,
        /// Weight of the new batch statistic in the running average.
        #[serde(default = "bn_momentum")]
        momentum: f64,
        /// Learned scale and shift.
        #[serde(default = "yes")]
        affine: bool,
    },
    /// `nn.LayerNorm(D)` over the last dimension.
    LayerNorm {
        /// Added to the variance.
        #[serde(default = "bn_eps")]
        eps: f64,
        /// Learned scale and shift.
        #[serde(default = "yes")]
        affine: bool,
    },
    /// `nn.Upsample(scale_factor, mode="nearest")` on `[C, H, W]`.
    Upsample {
        /// Integer scale factor (one number or `[h, w]`).
        scale: Pair,
    },
    /// `x + f(x)` where `f` is the nested layer list (a PyTorch module whose `layers` attribute is that
    /// `nn.Sequential`: parameters `layers.<i>.layers.<j>.*`). `f` must keep the shape.
    Residual {
        /// The residual branch.
        layers: Vec<Layer>,
    },
}

fn bn_eps() -> f64 {
    1e-5
}
fn bn_momentum() -> f64 {
    0.1
}

/// Options of the `sequential` model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SequentialOptions {
    /// The layers, in order.
    pub layers: Vec<Layer>,
}

/// Builds the layer list for samples of `data_shape`.
pub fn build(options: &serde_json::Value, data_shape: &[usize]) -> Result<BuiltModel, String> {
    let o: SequentialOptions = parse_options("model", options)
        .map_err(|e| options.get("layers").and_then(|l| locate_bad_layer(l, "model.layers")).unwrap_or(e))?;
    if o.layers.is_empty() {
        return Err("model.layers: a sequential model needs at least one layer".into());
    }
    let mut g = GraphBuilder::new("sequential", data_shape);
    let x = g.input();
    let out = append_layers(&mut g, x, &o.layers, "layers", "model.layers")?;
    Ok(BuiltModel { builder: g, output: out })
}

/// `{path}[i]: <serde's message>` for the first layer of `layers` (depth first through residual blocks)
/// that does not parse, so an unknown or misspelt option names its layer; `None` when every layer parses.
fn locate_bad_layer(layers: &serde_json::Value, path: &str) -> Option<String> {
    for (i, v) in layers.as_array()?.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if let Some(inner) = v.get("layers").and_then(|l| locate_bad_layer(l, &format!("{here}.layers"))) {
            return Some(inner);
        }
        if let Err(e) = serde_json::from_value::<Layer>(v.clone()) {
            return Some(format!("{here}: {e}"));
        }
    }
    None
}

/// Appends `layers` to `x`, naming layer `i` `{prefix}.{i}` and reporting errors as `{path}[i]`.
fn append_layers(
    g: &mut GraphBuilder,
    mut x: ValueId,
    layers: &[Layer],
    prefix: &str,
    path: &str,
) -> Result<ValueId, String> {
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("{prefix}.{i}");
        let e = |e: crate::graph::GraphError| format!("{path}[{i}]: {e}");
        let act = |g: &mut GraphBuilder, a| g.activation(&name, x, a);
        x = match layer {
            Layer::Linear { out_features, bias } => g.linear(&name, x, *out_features, *bias).map_err(e)?,
            Layer::Conv2d { out_channels, kernel, stride, padding, dilation, groups, bias } => {
                let Some(&c) = g.shape(x).first() else {
                    return Err(format!("{path}[{i}]: conv2d needs a [C, H, W] input"));
                };
                let spec = Conv2dSpec {
                    in_channels: c,
                    out_channels: *out_channels,
                    kernel: kernel.hw(),
                    stride: stride.hw(),
                    padding: padding.hw(),
                    dilation: dilation.hw(),
                    groups: *groups,
                };
                g.conv2d(&name, x, spec, *bias).map_err(e)?
            }
            Layer::MaxPool2d { kernel, stride, padding } => {
                let spec =
                    Pool2dSpec { kernel: kernel.hw(), stride: stride.unwrap_or(*kernel).hw(), padding: padding.hw() };
                g.max_pool2d(&name, x, spec).map_err(e)?
            }
            Layer::AvgPool2d { kernel, stride, padding } => {
                let spec =
                    Pool2dSpec { kernel: kernel.hw(), stride: stride.unwrap_or(*kernel).hw(), padding: padding.hw() };
                g.avg_pool2d(&name, x, spec).map_err(e)?
            }
            Layer::GlobalAvgPool {} => g.global_avg_pool(&name, x).map_err(e)?,
            Layer::AdaptiveAvgPool2d { output_size } => g.adaptive_avg_pool2d(&name, x, output_size.hw()).map_err(e)?,
            Layer::Flatten {} => g.flatten(&name, x),
            Layer::Reshape { shape } => g.reshape(&name, x, shape).map_err(e)?,
            Layer::Relu {} => act(g, Activation::Relu),
            Layer::Gelu {} => act(g, Activation::Gelu),
            Layer::GeluTanh {} => act(g, Activation::GeluTanh),
            Layer::Tanh {} => act(g, Activation::Tanh),
            Layer::Sigmoid {} => act(g, Activation::Sigmoid),
            Layer::Silu {} => act(g, Activation::Silu),
            Layer::Softmax {} => g.softmax(&name, x).map_err(e)?,
            Layer::Embedding { num_embeddings, embedding_dim } => {
                g.embedding(&name, x, *num_embeddings, *embedding_dim).map_err(e)?
            }
            Layer::TokenMean {} => g.token_mean(&name, x).map_err(e)?,
            Layer::Permute { dims } => g.permute(&name, x, dims).map_err(e)?,
            Layer::Dropout { p } => g.dropout(&name, x, *p).map_err(e)?,
            Layer::BatchNorm2d { eps, momentum, affine } => {
                g.batch_norm2d(&name, x, *eps, *momentum, *affine).map_err(e)?
            }
            Layer::LayerNorm { eps, affine } => g.layer_norm(&name, x, *eps, *affine).map_err(e)?,
            Layer::Upsample { scale } => g.upsample(&name, x, scale.hw()).map_err(e)?,
            Layer::Residual { layers } => {
                if layers.is_empty() {
                    return Err(format!("{path}[{i}]: a residual needs at least one layer"));
                }
                let branch = append_layers(g, x, layers, &format!("{name}.layers"), &format!("{path}[{i}].layers"))?;
                g.add(&format!("{name}.add"), x, branch).map_err(|err| {
                    format!("{path}[{i}]: the residual branch must keep the shape {:?}: {err}", g.shape(x))
                })?
            }
        };
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_a_conv_net_from_a_layer_list() {
        let layers = json!({"layers": [
            {"type": "reshape", "shape": [1, 8, 8]},
            {"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1},
            {"type": "relu"},
            {"type": "max_pool2d", "kernel": 2},
            {"type": "flatten"},
            {"type": "linear", "out_features": 10}
        ]});
        let m = build(&layers, &[64]).unwrap();
        // conv 4*1*9+4 = 40, linear 64*10+10 = 650
        assert_eq!(m.builder.num_params(), 690);
        let mut world = bevy_ecs::world::World::new();
        let g = m.builder.finish(&mut world, m.output, 0);
        assert_eq!(g.output_shape(), &[10]);
    }

    #[test]
    fn errors_name_the_layer_and_the_choices() {
        let e = build(&json!({"layers": [{"type": "conv", "out_channels": 3}]}), &[64]).err().unwrap();
        assert!(e.contains("unknown variant `conv`") && e.contains("conv2d"), "{e}");
        let e = build(&json!({"layers": [{"type": "linear", "out_features": 3, "biass": true}]}), &[64]).err().unwrap();
        assert!(e.contains("biass"), "{e}");
        let e = build(&json!({"layers": [{"type": "max_pool2d", "kernel": 2}]}), &[64]).err().unwrap();
        assert!(e.contains("layers[0]") && e.contains("[C, H, W]"), "{e}");
        let e = build(&json!({"layers": [{"type": "reshape", "shape": [2, 8, 8]}]}), &[64]).err().unwrap();
        assert!(e.contains("layers[0]") && e.contains("128 elements"), "{e}");
        let e = build(
            &json!({"layers": [{"type": "reshape", "shape": [1, 8, 8]},
                {"type": "residual", "layers": [{"type": "conv2d", "out_channels": 2, "kernel": 1}]}]}),
            &[64],
        )
        .err()
        .unwrap();
        assert!(e.contains("layers[1]") && e.contains("keep the shape [1, 8, 8]"), "{e}");
        // Layers without options refuse options too (serde drops extra keys on tagged unit variants).
        let e = build(&json!({"layers": [{"type": "relu", "negative_slope": 0.2}]}), &[64]).err().unwrap();
        assert!(e.contains("layers[0]") && e.contains("negative_slope"), "{e}");
        let e = build(&json!({"layers": [{"type": "flatten", "start_dim": 5}]}), &[64]).err().unwrap();
        assert!(e.contains("start_dim"), "{e}");
        let nested = json!({"layers": [{"type": "residual", "layers": [{"type": "relu"}, {"type": "gelu", "x": 1}]}]});
        let e = build(&nested, &[64]).err().unwrap();
        assert!(e.starts_with("model.layers[0].layers[1]: unknown field `x`"), "{e}");
        // Sizes that overflow or cannot be held are errors naming the layer, not panics.
        let conv = |extra: serde_json::Value| {
            let mut c = json!({"type": "conv2d", "out_channels": 4, "kernel": 3});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            json!({"layers": [{"type": "reshape", "shape": [1, 8, 8]}, c, {"type": "flatten"}]})
        };
        let e = build(&conv(json!({"dilation": 0})), &[64]).err().unwrap();
        assert!(e.contains("layers[1]") && e.contains("dilation (0, 0) must be >= 1"), "{e}");
        let e = build(&conv(json!({"padding": usize::MAX})), &[64]).err().unwrap();
        assert!(e.contains("layers[1]") && e.contains("does not fit"), "{e}");
        let up =
            json!({"layers": [{"type": "reshape", "shape": [1, 8, 8]}, {"type": "upsample", "scale": usize::MAX}]});
        let e = build(&up, &[64]).err().unwrap();
        assert!(e.contains("layers[1]") && e.contains("overflow"), "{e}");
        let e = build(&json!({"layers": [{"type": "reshape", "shape": [1usize << 32, 1usize << 32]}]}), &[64])
            .err()
            .unwrap();
        assert!(e.contains("layers[0]") && e.contains("too large"), "{e}");
        let m = build(&json!({"layers": [{"type": "linear", "out_features": usize::MAX}]}), &[64]).unwrap();
        let e = m.builder.footprint().unwrap_err().to_string();
        assert!(e.contains("layers.0.weight") && e.contains("too large to hold"), "{e}");
    }

    #[test]
    fn residual_blocks_with_norms_nest_their_names() {
        let layers = json!({"layers": [
            {"type": "reshape", "shape": [1, 8, 8]},
            {"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1, "bias": false},
            {"type": "batch_norm2d"},
            {"type": "residual", "layers": [
                {"type": "conv2d", "out_channels": 4, "kernel": 3, "padding": 1},
                {"type": "silu"},
                {"type": "upsample", "scale": 2},
                {"type": "avg_pool2d", "kernel": 2}
            ]},
            {"type": "global_avg_pool"},
            {"type": "reshape", "shape": [2, 2]},
            {"type": "permute", "dims": [1, 0]},
            {"type": "softmax"},
            {"type": "flatten"},
            {"type": "layer_norm"},
            {"type": "linear", "out_features": 10}
        ]});
        let m = build(&layers, &[64]).unwrap();
        let mut world = bevy_ecs::world::World::new();
        let g = m.builder.finish(&mut world, m.output, 0);
        assert_eq!(g.output_shape(), &[10]);
        let names: Vec<String> =
            world.query::<&ecstrain_components::ParamInfo>().iter(&world).map(|p| p.name.clone()).collect();
        for n in ["layers.2.weight", "layers.3.layers.0.weight", "layers.9.bias", "layers.10.weight"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        assert!(world
            .resource::<ecstrain_components::Buffers>()
            .entries
            .iter()
            .any(|b| b.name == "layers.2.running_mean"));
    }
}
