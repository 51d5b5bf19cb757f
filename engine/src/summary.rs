//! The model summary printed by `engine check` and at the start of a run: layers with output shapes and
//! parameter counts, totals, and the memory the run needs.

use bevy_ecs::prelude::*;
use ecstrain_components::{Buffers, Frozen, Graph, OptimizerState, ParamInfo, ParamSlice, Params};
use ecstrain_systems::graph::Activations;

fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Renders the summary table for `graph` (parameters and memory read from `world`).
pub fn model_summary(world: &mut World, graph: &Graph) -> String {
    let mut out = String::new();
    out.push_str(&format!("{:<14} {:<22} {:<14} {:>12}\n", "layer", "op", "output", "params"));
    for node in &graph.nodes {
        let (op, params) = (node.op.label(), node.op.params().iter().map(|p| p.slice.len).sum::<usize>());
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
    let buffers = world.get_resource::<Buffers>().map_or(0, |b| b.arena.len());
    out.push_str(&format!("total params {total}, trainable {trainable}, buffers {buffers}\n"));
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
