//! Extending ecstrain from a crate of your own, without touching the engine: this crate registers
//!
//! - a dataset builder, `spirals` ([`dataset`]): points on interleaved spiral arms, one class per arm;
//! - a processor, `polar_features` ([`processor`]): appends each point's radius and angle to its features;
//! - a model, `residual_mlp` ([`model`]): a linear stem, residual `x + W2 relu(W1 x)` blocks and a head;
//! - a task, `margin_classification` ([`task`]): torch's `MultiMarginLoss`, with accuracy;
//! - an optimizer, `signsgd` ([`optimizer`]): sign-SGD with decoupled weight decay;
//! - a plugin with a component and systems, [`grad_stats::GradStatsPlugin`]: per-layer gradient norms kept
//!   on the parameter entities and logged as `grads` records (metrics.jsonl, TensorBoard).
//!
//! [`ExamplesPlugin`] installs all of them; `configs/spirals.yaml` uses every one, and `tests/train.rs` trains
//! it. docs/extending.md walks through the code.

pub mod dataset;
pub mod grad_stats;
pub mod model;
pub mod optimizer;
pub mod processor;
pub mod task;

use ecstrain::engine::{App, Plugin};

/// Everything this crate adds, as one plugin: `default_app().add_plugin(ExamplesPlugin)`.
pub struct ExamplesPlugin;

impl Plugin for ExamplesPlugin {
    fn build(&self, app: &mut App) {
        dataset::register(app);
        processor::register(app);
        model::register(app);
        task::register(app);
        optimizer::register(app);
        app.add_plugin(grad_stats::GradStatsPlugin);
    }
}
