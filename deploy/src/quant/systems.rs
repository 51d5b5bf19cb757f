//! The int8 forward as a system: with an [`Int8Model`] in the world (and the [`ForwardReplaced`] marker that
//! turns the float forward off) the Forward set runs the graph with the quantized nodes computed in int8.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Buffers, Graph, Mode, Params};
use ecstrain_systems::graph::{forward_with, Activations, NodeOverride};

use super::Int8Model;

pub use ecstrain_systems::graph::systems::ForwardReplaced;

/// Forward with the int8 model's nodes (evaluation: `Mode::Eval`, so no batch-norm statistics move).
pub fn int8_forward_system(
    graph: Res<Graph>,
    params: Res<Params>,
    mut buffers: ResMut<Buffers>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    mode: Res<Mode>,
    mut model: ResMut<Int8Model>,
) {
    let hook: &mut dyn NodeOverride = &mut *model;
    forward_with(
        &graph,
        &params.0.data,
        &mut buffers.arena.data,
        &mut acts,
        &batch.inputs,
        batch.size,
        *mode,
        0,
        Some(hook),
    );
}
