//! Model `residual_mlp`: `stem` (Linear to `width`), `blocks` residual blocks `x + fc2(relu(fc1(x)))`, a
//! ReLU and a `head` Linear to `output_size`, built with the engine's graph builder (which checks shapes,
//! initialises as PyTorch does and names the parameters `blocks.0.fc1.weight`, ...).

use ecstrain::components::Activation;
use ecstrain::engine::registry::ModelEntry;
use ecstrain::engine::App;
use ecstrain::systems::graph::GraphBuilder;
use ecstrain::systems::models::BuiltModel;
use serde::Deserialize;

/// Options of `model:` with `arch: residual_mlp`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Width of the stem and of every block.
    #[serde(default = "default_width")]
    width: usize,
    /// Residual blocks.
    #[serde(default = "default_blocks")]
    blocks: usize,
    /// Outputs (classes).
    output_size: usize,
}

fn default_width() -> usize {
    64
}
fn default_blocks() -> usize {
    2
}

fn build(options: &serde_json::Value, input_shape: &[usize]) -> Result<BuiltModel, String> {
    let o: Options = serde_json::from_value(options.clone()).map_err(|e| format!("model: {e}"))?;
    if input_shape.len() != 1 {
        return Err(format!("residual_mlp takes flat samples, got shape {input_shape:?}"));
    }
    if o.width == 0 || o.output_size == 0 {
        return Err("model.width and model.output_size must be at least 1".into());
    }
    let e = |e: ecstrain::systems::graph::GraphError| e.to_string();
    let mut g = GraphBuilder::new("residual_mlp", input_shape);
    let mut x = g.linear("stem", g.input(), o.width, true).map_err(e)?;
    for b in 0..o.blocks {
        let h = g.linear(&format!("blocks.{b}.fc1"), x, o.width, true).map_err(e)?;
        let h = g.activation(&format!("blocks.{b}.act"), h, Activation::Relu);
        let h = g.linear(&format!("blocks.{b}.fc2"), h, o.width, true).map_err(e)?;
        x = g.add(&format!("blocks.{b}.add"), x, h).map_err(e)?;
    }
    let x = g.activation("act", x, Activation::Relu);
    let out = g.linear("head", x, o.output_size, true).map_err(e)?;
    Ok(BuiltModel { builder: g, output: out })
}

/// Registers `residual_mlp` with a `small` preset.
pub fn register(app: &mut App) {
    app.registry.register_model(
        "residual_mlp",
        ModelEntry {
            build,
            presets: &[("small", r#"{"width": 32, "blocks": 1}"#)],
            doc: "stem + residual MLP blocks + head: width, blocks, output_size (ecstrain-examples)",
        },
    );
}
