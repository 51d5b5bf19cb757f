//! The model summary printed by `engine check` and at the start of a run: layers with output shapes and
//! parameter counts, totals, and the memory the run needs.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Graph, OpKind, OptimizerState, ParamInfo, ParamSlice, Params};
use ecstrain_systems::graph::Activations;

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Renders the summary table for `graph` (parameters and memory read from `world`).
pub fn model_summary(world: &mut World, graph: &Graph) -> String {
    let mut out = String::new();
    out.push_str(&format!("{:<14} {:<22} {:<14} {:>12}\n", "layer", "op", "output", "params"));
    for node in &graph.nodes {
        let (op, params) = match &node.op {
            OpKind::Linear { in_features, out_features, weight, bias } => {
                (format!("Linear({in_features}, {out_features})"), weight.slice.len + bias.map_or(0, |b| b.slice.len))
            }
            OpKind::Conv2d { spec, weight, bias, .. } => (
                format!("Conv2d({}, {}, {:?})", spec.in_channels, spec.out_channels, spec.kernel),
                weight.slice.len + bias.map_or(0, |b| b.slice.len),
            ),
            OpKind::MaxPool2d { spec, .. } => (format!("MaxPool2d({:?})", spec.kernel), 0),
            OpKind::AvgPool2d { spec, .. } => (format!("AvgPool2d({:?})", spec.kernel), 0),
            OpKind::GlobalAvgPool { .. } => ("GlobalAvgPool".to_string(), 0),
            OpKind::Reshape => ("Reshape".to_string(), 0),
            OpKind::Activation(a) => (format!("{a:?}"), 0),
            OpKind::Dropout { p } => (format!("Dropout({p})"), 0),
        };
        let shape = format!("{:?}", graph.values[node.output.0].shape);
        out.push_str(&format!("{:<14} {:<22} {:<14} {:>12}\n", node.name, op, shape, params));
    }
    let mut q = world.query::<(&ParamInfo, &ParamSlice, Has<Frozen>)>();
    let (mut total, mut trainable) = (0usize, 0usize);
    for (_, s, frozen) in q.iter(world) {
        total += s.len;
        if !frozen {
            trainable += s.len;
        }
    }
    let param_bytes = world.resource::<Params>().0.len() * 4;
    let state_bytes = world.get_resource::<OptimizerState>().map_or(0, |s| s.buffers.len() * param_bytes);
    let act_bytes = world.get_resource::<Activations>().map_or(0, Activations::bytes);
    out.push_str(&format!("total params {total}, trainable {trainable}\n"));
    out.push_str(&format!(
        "memory: params {}, grads {}, optimizer state {}, activations {} (batch {}), total {}\n",
        mib(param_bytes),
        mib(param_bytes),
        mib(state_bytes),
        mib(act_bytes),
        world.get_resource::<Activations>().map_or(0, |a| a.capacity),
        mib(2 * param_bytes + state_bytes + act_bytes)
    ));
    out
}
