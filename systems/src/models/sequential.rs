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

use ecstrain_components::{Activation, Conv2dSpec, Pool2dSpec};
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
    GlobalAvgPool,
    /// `nn.Flatten()`.
    Flatten,
    /// View the sample as `shape`.
    Reshape {
        /// New per-sample shape.
        shape: Vec<usize>,
    },
    /// `nn.ReLU`.
    Relu,
    /// `nn.GELU()` (erf form).
    Gelu,
    /// `nn.GELU(approximate="tanh")`.
    GeluTanh,
    /// `nn.Tanh`.
    Tanh,
    /// `nn.Sigmoid`.
    Sigmoid,
    /// `nn.Dropout(p)`.
    Dropout {
        /// Drop probability.
        p: f64,
    },
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
    let o: SequentialOptions = parse_options("model", options)?;
    if o.layers.is_empty() {
        return Err("model.layers: a sequential model needs at least one layer".into());
    }
    let mut g = GraphBuilder::new("sequential", data_shape);
    let mut x = g.input();
    for (i, layer) in o.layers.iter().enumerate() {
        let name = format!("layers.{i}");
        let e = |e: crate::graph::GraphError| format!("model.layers[{i}]: {e}");
        let act = |g: &mut GraphBuilder, a| g.activation(&name, x, a);
        x = match layer {
            Layer::Linear { out_features, bias } => g.linear(&name, x, *out_features, *bias).map_err(e)?,
            Layer::Conv2d { out_channels, kernel, stride, padding, dilation, groups, bias } => {
                let Some(&c) = g.shape(x).first() else {
                    return Err(format!("model.layers[{i}]: conv2d needs a [C, H, W] input"));
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
            Layer::GlobalAvgPool => g.global_avg_pool(&name, x).map_err(e)?,
            Layer::Flatten => g.flatten(&name, x),
            Layer::Reshape { shape } => g.reshape(&name, x, shape).map_err(e)?,
            Layer::Relu => act(&mut g, Activation::Relu),
            Layer::Gelu => act(&mut g, Activation::Gelu),
            Layer::GeluTanh => act(&mut g, Activation::GeluTanh),
            Layer::Tanh => act(&mut g, Activation::Tanh),
            Layer::Sigmoid => act(&mut g, Activation::Sigmoid),
            Layer::Dropout { p } => g.dropout(&name, x, *p).map_err(e)?,
        };
    }
    Ok(BuiltModel { builder: g, output: x })
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
    }
}
