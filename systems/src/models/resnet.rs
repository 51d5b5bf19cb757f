//! `resnet`: the CIFAR-style ResNet of He et al. 2016 (section 4.2): a 3x3 stem, three stages of `n` basic
//! blocks at widths `w, 2w, 4w` (stride 2 entering stages 2 and 3), global average pooling and a linear
//! classifier; depth = 6n + 2 (ResNet-8, -20, -32, -44, -56, -110).
//!
//! Parameter and buffer names follow torchvision's `ResNet` / `BasicBlock`: `conv1`, `bn1`,
//! `layer1.0.conv1`, `layer1.0.bn1`, `layer1.0.conv2`, `layer1.0.bn2`, `layer2.0.downsample.0` (1x1 conv),
//! `layer2.0.downsample.1` (its batch norm), `fc`. Shortcuts that change shape are projections (option B of
//! the paper, as torchvision); identity otherwise. Convolutions have no bias (batch norm follows them).
//! Initialisation is PyTorch's per-layer default (torchvision re-initialises convolutions with
//! kaiming_normal; a config that wants that can load `model.pretrained`).

use serde::Deserialize;

use super::{conv_spec, parse_options, BuiltModel};
use crate::graph::{GraphBuilder, GraphError};
use ecstrain_components::{Activation, ValueId};

/// Options of the `resnet` model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResNetOptions {
    /// Per-sample input shape `[C, H, W]` (flat data of the same size is viewed in it); default: the data's.
    #[serde(default)]
    pub input_shape: Option<Vec<usize>>,
    /// Total depth, 6n + 2 (8, 20, 32, ...).
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Width of the first stage (16 in the paper); stages are `w, 2w, 4w`.
    #[serde(default = "default_width")]
    pub width: usize,
    /// Output features (classes).
    pub output_size: usize,
    /// Batch-norm epsilon.
    #[serde(default = "default_eps")]
    pub bn_eps: f64,
    /// Batch-norm momentum (PyTorch convention: weight of the new statistic).
    #[serde(default = "default_momentum")]
    pub bn_momentum: f64,
}

fn default_depth() -> usize {
    20
}
fn default_width() -> usize {
    16
}
fn default_eps() -> f64 {
    1e-5
}
fn default_momentum() -> f64 {
    0.1
}

/// Presets selectable with `model.type`.
pub const PRESETS: &[(&str, &str)] = &[
    ("resnet8", r#"{"depth": 8}"#),
    ("resnet20", r#"{"depth": 20}"#),
    ("resnet32", r#"{"depth": 32}"#),
    ("resnet44", r#"{"depth": 44}"#),
    ("resnet56", r#"{"depth": 56}"#),
];

struct Ctx {
    eps: f64,
    momentum: f64,
}

impl Ctx {
    /// conv (no bias) -> batch norm.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &self,
        g: &mut GraphBuilder,
        conv: &str,
        bn: &str,
        x: ValueId,
        out: usize,
        kernel: usize,
        stride: usize,
    ) -> Result<ValueId, GraphError> {
        let c = g.shape(x)[0];
        let y = g.conv2d(conv, x, conv_spec(c, out, kernel, stride), false)?;
        g.batch_norm2d(bn, y, self.eps, self.momentum, true)
    }

    /// torchvision's `BasicBlock`: conv3x3-bn-relu-conv3x3-bn, plus the (projected) input, then relu.
    fn basic_block(
        &self,
        g: &mut GraphBuilder,
        name: &str,
        x: ValueId,
        out: usize,
        stride: usize,
    ) -> Result<ValueId, GraphError> {
        let c = g.shape(x)[0];
        let h = self.conv_bn(g, &format!("{name}.conv1"), &format!("{name}.bn1"), x, out, 3, stride)?;
        let h = g.activation(&format!("{name}.relu1"), h, Activation::Relu);
        let h = self.conv_bn(g, &format!("{name}.conv2"), &format!("{name}.bn2"), h, out, 3, 1)?;
        let shortcut = if stride != 1 || c != out {
            let (conv, bn) = (format!("{name}.downsample.0"), format!("{name}.downsample.1"));
            self.conv_bn(g, &conv, &bn, x, out, 1, stride)?
        } else {
            x
        };
        let y = g.add(&format!("{name}.add"), h, shortcut)?;
        Ok(g.activation(&format!("{name}.relu2"), y, Activation::Relu))
    }
}

/// Builds the ResNet graph for samples of `data_shape`.
pub fn build(options: &serde_json::Value, data_shape: &[usize]) -> Result<BuiltModel, String> {
    let o: ResNetOptions = parse_options("model", options)?;
    if o.depth < 8 || !(o.depth - 2).is_multiple_of(6) {
        return Err(format!("model.depth must be 6n + 2 with n >= 1 (8, 20, 32, 44, 56, 110), got {}", o.depth));
    }
    if o.width == 0 || o.output_size == 0 {
        return Err("model.width and model.output_size must be at least 1".into());
    }
    let e = |e: GraphError| format!("model: {e}");
    let (mut g, x, _) = super::image_input("resnet", o.input_shape.as_deref(), data_shape)?;
    let ctx = Ctx { eps: o.bn_eps, momentum: o.bn_momentum };
    let mut x = ctx.conv_bn(&mut g, "conv1", "bn1", x, o.width, 3, 1).map_err(e)?;
    x = g.activation("relu", x, Activation::Relu);
    let blocks = (o.depth - 2) / 6;
    for stage in 0..3 {
        let width = o.width << stage;
        for b in 0..blocks {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            x = ctx.basic_block(&mut g, &format!("layer{}.{b}", stage + 1), x, width, stride).map_err(e)?;
        }
    }
    let x = g.global_avg_pool("avgpool", x).map_err(e)?;
    let out = g.linear("fc", x, o.output_size, true).map_err(e)?;
    Ok(BuiltModel { builder: g, output: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn count(depth: usize) -> usize {
        build(&json!({"depth": depth, "output_size": 10}), &[3, 32, 32]).unwrap().builder.num_params()
    }

    #[test]
    fn parameter_counts_match_the_paper() {
        // He et al. table 6: ResNet-20 0.27M, ResNet-32 0.46M, ResNet-56 0.85M parameters (CIFAR-10, option
        // A shortcuts; projections add the two 1x1 convolutions and their batch norms' weights and biases).
        let projections = 16 * 32 + 32 * 64 + 2 * (32 + 64);
        assert_eq!(count(20) - projections, 269_722);
        assert_eq!(count(32) - projections, 464_154);
        assert_eq!(count(56) - projections, 853_018);
    }

    #[test]
    fn names_follow_torchvision_and_bad_depth_is_rejected() {
        let m = build(&json!({"depth": 8, "width": 4, "output_size": 3, "input_shape": [1, 8, 8]}), &[64]).unwrap();
        let mut world = bevy_ecs::world::World::new();
        let graph = m.builder.finish(&mut world, m.output, 0);
        assert_eq!(graph.output_shape(), &[3]);
        let names: Vec<String> =
            world.query::<&ecstrain_components::ParamInfo>().iter(&world).map(|p| p.name.clone()).collect();
        for n in ["conv1.weight", "bn1.bias", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight", "fc.bias"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let buffers = &world.resource::<ecstrain_components::Buffers>().entries;
        assert!(buffers.iter().any(|b| b.name == "layer3.0.downsample.1.running_var"));
        let e = build(&json!({"depth": 10, "output_size": 3}), &[3, 8, 8]).err().unwrap();
        assert!(e.contains("6n + 2"), "{e}");
    }
}
