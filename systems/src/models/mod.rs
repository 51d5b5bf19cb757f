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

/// Deserialises builder options, turning serde's message into one that names the section.
pub fn parse_options<T: serde::de::DeserializeOwned>(section: &str, v: &serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| format!("{section}: {e}"))
}
