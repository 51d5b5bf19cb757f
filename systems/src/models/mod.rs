//! Built-in model builders. Each turns the `model:` options of a config (everything but `arch` and `type`)
//! and the dataset's per-sample input shape into a graph; the engine registers them by name.

pub mod cnn;
pub mod mlp;
pub mod sequential;

use crate::graph::GraphBuilder;
use ecstrain_components::ValueId;

/// What a model builder returns: the builder holding its layers and parameters, and the output value.
pub struct BuiltModel {
    /// Layers and parameters, ready for [`GraphBuilder::finish`].
    pub builder: GraphBuilder,
    /// The value the task reads.
    pub output: ValueId,
}

/// A model builder: `(options, per-sample input shape) -> model`, or a message naming the offending key.
pub type ModelBuildFn = fn(&serde_json::Value, &[usize]) -> Result<BuiltModel, String>;

/// Appends an MLP as a PyTorch `nn.Sequential` named `prefix`: per hidden width `Linear -> act [-> Dropout]`,
/// then `Linear(.., output_size)`, named `prefix.0`, `prefix.1`, ... Returns the output value. Shared by the
/// `mlp` body and the `cnn` head so both name their parameters the same way.
#[allow(clippy::too_many_arguments)]
pub fn linear_stack(
    g: &mut GraphBuilder,
    mut x: ValueId,
    prefix: &str,
    hidden_sizes: &[usize],
    output_size: usize,
    act: ecstrain_components::Activation,
    dropout: f64,
    bias: bool,
) -> Result<ValueId, String> {
    let e = |e: crate::graph::GraphError| format!("model: {e}");
    let mut idx = 0;
    for &h in hidden_sizes {
        x = g.linear(&format!("{prefix}.{idx}"), x, h, bias).map_err(e)?;
        x = g.activation(&format!("{prefix}.{}", idx + 1), x, act);
        idx += 2;
        if dropout > 0.0 {
            x = g.dropout(&format!("{prefix}.{idx}"), x, dropout).map_err(e)?;
            idx += 1;
        }
    }
    g.linear(&format!("{prefix}.{idx}"), x, output_size, bias).map_err(e)
}

/// Deserialises builder options, turning serde's message into one that names the section.
pub fn parse_options<T: serde::de::DeserializeOwned>(section: &str, v: &serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("{section}: {e}"))
}
