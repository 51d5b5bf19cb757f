//! `mlp`: a multi-layer perceptron, `Linear -> act [-> Dropout]` per hidden size, then a final `Linear`.
//!
//! Parameter names follow a PyTorch `nn.Sequential` named `layers` (`layers.0.weight`, `layers.2.bias`, ...)
//! so a checkpoint loads into `nn.Sequential(nn.Linear(..), nn.ReLU(), ...)` wrapped in a module with a
//! `layers` attribute.

use ecstrain_components::Activation;
use serde::Deserialize;

use super::{parse_options, BuiltModel};
use crate::graph::GraphBuilder;

/// Options of the `mlp` model (the `model:` section without `arch` / `type`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlpOptions {
    /// Input features; must equal the elements of one data sample (checked). Taken from the data when absent.
    #[serde(default)]
    pub input_size: Option<usize>,
    /// Widths of the hidden layers, e.g. `[256, 256]`.
    #[serde(default = "default_hidden")]
    pub hidden_sizes: Vec<usize>,
    /// Output features (classes for classification).
    pub output_size: usize,
    /// Activation after each hidden layer: relu, gelu, gelu_tanh, tanh, sigmoid.
    #[serde(default = "default_activation")]
    pub activation: String,
    /// Dropout probability after each hidden activation (0 = none).
    #[serde(default)]
    pub dropout: f64,
    /// Whether the linear layers have biases.
    #[serde(default = "default_true")]
    pub bias: bool,
}

fn default_hidden() -> Vec<usize> {
    vec![256, 256]
}
fn default_activation() -> String {
    "relu".into()
}
fn default_true() -> bool {
    true
}

/// Named presets selectable with `model.type` (LAVIS's model_type); explicit options override them.
pub const PRESETS: &[(&str, &str)] = &[
    ("digits", r#"{"input_size": 64, "hidden_sizes": [256, 256], "output_size": 10, "activation": "relu"}"#),
    ("mnist", r#"{"input_size": 784, "hidden_sizes": [512, 512], "output_size": 10, "activation": "relu"}"#),
];

/// Builds the MLP graph for samples of `input_shape` (flattened).
pub fn build(options: &serde_json::Value, input_shape: &[usize]) -> Result<BuiltModel, String> {
    let o: MlpOptions = parse_options("model", options)?;
    let data_features: usize = input_shape.iter().product();
    if input_shape.len() != 1 {
        return Err(format!(
            "model.arch mlp takes flat samples, but the data has samples of shape {input_shape:?}; flatten the data"
        ));
    }
    if let Some(n) = o.input_size {
        if n != data_features {
            return Err(format!(
                "model.input_size is {n} but the training data has {data_features} features per sample (shape {input_shape:?})"
            ));
        }
    }
    let act = Activation::parse(&o.activation).ok_or_else(|| {
        format!(
            "model.activation: unknown activation `{}`; valid choices: {}",
            o.activation,
            Activation::NAMES.join(", ")
        )
    })?;
    if o.hidden_sizes.contains(&0) {
        return Err("model.hidden_sizes: every size must be at least 1".into());
    }
    if o.output_size == 0 {
        return Err("model.output_size must be at least 1".into());
    }
    if !(0.0..1.0).contains(&o.dropout) {
        return Err(format!("model.dropout must be in [0, 1), got {}", o.dropout));
    }
    let mut g = GraphBuilder::new("mlp", input_shape);
    let x = g.input();
    let out = super::linear_stack(&mut g, x, "layers", &o.hidden_sizes, o.output_size, act, o.dropout, o.bias)?;
    Ok(BuiltModel { builder: g, output: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_w1_shape_with_pytorch_names_and_count() {
        let m = build(&json!({"hidden_sizes": [512, 512], "output_size": 10}), &[784]).unwrap();
        assert_eq!(m.builder.num_params(), 669_706);
        let mut world = bevy_ecs::world::World::new();
        let g = m.builder.finish(&mut world, m.output, 0);
        assert_eq!(g.output_shape(), &[10]);
        let mut names: Vec<String> =
            world.query::<&ecstrain_components::ParamInfo>().iter(&world).map(|p| p.name.clone()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "layers.0.bias",
                "layers.0.weight",
                "layers.2.bias",
                "layers.2.weight",
                "layers.4.bias",
                "layers.4.weight"
            ]
        );
    }

    #[test]
    fn rejects_bad_options_with_the_key() {
        let e = build(&json!({"output_size": 10, "hiden_sizes": [3]}), &[64]).err().unwrap();
        assert!(e.contains("hiden_sizes") && e.contains("hidden_sizes"), "{e}");
        let e = build(&json!({"output_size": 10, "input_size": 784}), &[64]).err().unwrap();
        assert!(e.contains("input_size is 784") && e.contains("64"), "{e}");
        let e = build(&json!({"output_size": 10, "activation": "relux"}), &[64]).err().unwrap();
        assert!(e.contains("relux") && e.contains("gelu"), "{e}");
        let e = build(&json!({"output_size": "ten"}), &[64]).err().unwrap();
        assert!(e.contains("invalid type"), "{e}");
    }
}
