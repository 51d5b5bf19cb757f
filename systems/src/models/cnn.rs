//! `cnn`: a configurable convolution stack — per entry of `channels`: `Conv2d -> activation [-> MaxPool2d]`
//! (executed as `Conv2d -> MaxPool2d -> activation` when that is exact) —
//! then flatten and an MLP head. The W2 benchmark network is `channels: [32, 64], kernel: 3, pool: 2,
//! hidden_sizes: [128]` on `[1, 28, 28]` (421,642 parameters).
//!
//! Parameter names follow a PyTorch module with two `nn.Sequential`s, `features` (conv, act, pool, ...) and
//! `classifier` (linear, act, [dropout], ..., linear), flattened in between: `features.0.weight`,
//! `classifier.2.bias`.

use ecstrain_components::{Activation, Conv2dSpec, Pool2dSpec};
use serde::Deserialize;

use super::{parse_options, BuiltModel};

/// Options of the `cnn` model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CnnOptions {
    /// Per-sample input shape `[C, H, W]`; flat data with the same element count is viewed in this shape.
    /// Taken from the data when absent (which must then be `[C, H, W]`).
    #[serde(default)]
    pub input_shape: Option<Vec<usize>>,
    /// Output channels of each convolution.
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    /// Square kernel size of every convolution.
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// Convolution stride.
    #[serde(default = "default_one")]
    pub stride: usize,
    /// Convolution padding (default kernel / 2: "same" for odd kernels at stride 1).
    #[serde(default)]
    pub padding: Option<usize>,
    /// Max-pool window (and stride) after each convolution; 0 or 1 = no pooling.
    #[serde(default = "default_pool")]
    pub pool: usize,
    /// Activation after each convolution and hidden linear layer.
    #[serde(default = "default_activation")]
    pub activation: String,
    /// Widths of the hidden linear layers of the head.
    #[serde(default = "default_hidden")]
    pub hidden_sizes: Vec<usize>,
    /// Output features (classes).
    pub output_size: usize,
    /// Dropout after each hidden linear activation.
    #[serde(default)]
    pub dropout: f64,
    /// Whether convolutions and linear layers have biases.
    #[serde(default = "default_true")]
    pub bias: bool,
}

fn default_channels() -> Vec<usize> {
    vec![32, 64]
}
fn default_kernel() -> usize {
    3
}
fn default_one() -> usize {
    1
}
fn default_pool() -> usize {
    2
}
fn default_activation() -> String {
    "relu".into()
}
fn default_hidden() -> Vec<usize> {
    vec![128]
}
fn default_true() -> bool {
    true
}

/// Presets selectable with `model.type`.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "w2",
        r#"{"input_shape": [1, 28, 28], "channels": [32, 64], "kernel": 3, "pool": 2, "hidden_sizes": [128], "output_size": 10}"#,
    ),
    (
        "digits",
        r#"{"input_shape": [1, 8, 8], "channels": [16, 32], "kernel": 3, "pool": 2, "hidden_sizes": [64], "output_size": 10}"#,
    ),
];

/// Builds the CNN graph for samples of `data_shape`.
pub fn build(options: &serde_json::Value, data_shape: &[usize]) -> Result<BuiltModel, String> {
    let o: CnnOptions = parse_options("model", options)?;
    let act = super::parse_activation(&o.activation)?;
    if o.kernel == 0 || o.stride == 0 || o.channels.contains(&0) || o.hidden_sizes.contains(&0) || o.output_size == 0 {
        return Err("model: kernel, stride, channels, hidden_sizes and output_size must all be at least 1".into());
    }
    if !(0.0..1.0).contains(&o.dropout) {
        return Err(format!("model.dropout must be in [0, 1), got {}", o.dropout));
    }
    let e = |e: crate::graph::GraphError| format!("model: {e}");
    let (mut g, mut x, _) = super::image_input("cnn", o.input_shape.as_deref(), data_shape)?;
    let padding = o.padding.unwrap_or(o.kernel / 2);
    let mut idx = 0;
    for &oc in &o.channels {
        let c = g.shape(x)[0];
        let spec = Conv2dSpec {
            in_channels: c,
            out_channels: oc,
            kernel: (o.kernel, o.kernel),
            stride: (o.stride, o.stride),
            padding: (padding, padding),
            dilation: (1, 1),
            groups: 1,
        };
        x = g.conv2d(&format!("features.{idx}"), x, spec, o.bias).map_err(e)?;
        let (act_name, pool_name) = (format!("features.{}", idx + 1), format!("features.{}", idx + 2));
        let pool = Pool2dSpec { kernel: (o.pool, o.pool), stride: (o.pool, o.pool), padding: (0, 0) };
        // A max pool commutes with a non-decreasing activation (ReLU, tanh, sigmoid), values and gradients
        // alike, so pool first: the activation then runs on a quarter of the elements, and the pool scans raw
        // convolution outputs instead of ReLU's runs of exact zeros. Names keep the PyTorch module order.
        let monotonic = matches!(act, Activation::Relu | Activation::Tanh | Activation::Sigmoid);
        if o.pool > 1 && monotonic {
            x = g.max_pool2d(&pool_name, x, pool).map_err(e)?;
            x = g.activation(&act_name, x, act);
        } else {
            x = g.activation(&act_name, x, act);
            if o.pool > 1 {
                x = g.max_pool2d(&pool_name, x, pool).map_err(e)?;
            }
        }
        idx += if o.pool > 1 { 3 } else { 2 };
    }
    x = g.flatten("flatten", x);
    let out = super::linear_stack(&mut g, x, "classifier", &o.hidden_sizes, o.output_size, act, o.dropout, o.bias)?;
    Ok(BuiltModel { builder: g, output: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn w2_preset_has_the_benchmark_parameter_count_and_names() {
        let opts: serde_json::Value = serde_json::from_str(PRESETS[0].1).unwrap();
        let m = build(&opts, &[1, 28, 28]).unwrap();
        assert_eq!(m.builder.num_params(), 421_642);
        let mut world = bevy_ecs::world::World::new();
        let graph = m.builder.finish(&mut world, m.output, 0);
        assert_eq!(graph.output_shape(), &[10]);
        let mut names: Vec<String> =
            world.query::<&ecstrain_components::ParamInfo>().iter(&world).map(|p| p.name.clone()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "classifier.0.bias",
                "classifier.0.weight",
                "classifier.2.bias",
                "classifier.2.weight",
                "features.0.bias",
                "features.0.weight",
                "features.3.bias",
                "features.3.weight"
            ]
        );
    }

    #[test]
    fn views_flat_data_and_rejects_mismatches() {
        let m = build(&json!({"input_shape": [1, 8, 8], "channels": [4], "output_size": 10}), &[64]).unwrap();
        assert!(m.builder.num_params() > 0);
        let e = build(&json!({"input_shape": [1, 28, 28], "output_size": 10}), &[64]).err().unwrap();
        assert!(e.contains("784 elements") && e.contains("64"), "{e}");
        let e = build(&json!({"output_size": 10}), &[64]).err().unwrap();
        assert!(e.contains("[C, H, W]"), "{e}");
        let e = build(&json!({"input_shape": [1, 2, 2], "kernel": 5, "padding": 0, "output_size": 10}), &[4])
            .err()
            .unwrap();
        assert!(e.contains("does not fit"), "{e}");
    }
}
