//! The Forward and Backward systems: run the graph on the current batch.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Buffers, Clock, Grads, Graph, Mode, Params, RunSettings};
use ecstrain_kernels::rng::Rng;

use super::{backward, forward, Activations};

/// Per-micro-batch seed for stochastic ops (dropout): a function of the run seed and the micro-step only.
fn step_seed(settings: &RunSettings, clock: &Clock) -> u64 {
    Rng::derive(settings.seed, &[0x57E9, clock.micro_step]).next_u64()
}

/// Marker resource: another plugin computes the Forward set (the int8 forward of a quantized model), so the
/// float [`forward_system`] does not run.
#[derive(Resource, Debug, Default)]
pub struct ForwardReplaced;

/// Forward: graph output for the current batch into [`Activations`] (batch-norm running statistics update
/// in training mode).
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn forward_system(
    graph: Res<Graph>,
    params: Res<Params>,
    mut buffers: ResMut<Buffers>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    mode: Res<Mode>,
    clock: Res<Clock>,
    settings: Res<RunSettings>,
) {
    forward(
        &graph,
        &params.0.data,
        &mut buffers.arena.data,
        &mut acts,
        &batch.inputs,
        batch.size,
        *mode,
        step_seed(&settings, &clock),
    );
}

/// Backward: parameter gradients of the current batch, accumulated into [`Grads`].
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn backward_system(
    graph: Res<Graph>,
    params: Res<Params>,
    mut grads: ResMut<Grads>,
    mut acts: ResMut<Activations>,
    batch: Res<Batch>,
    mode: Res<Mode>,
    clock: Res<Clock>,
    settings: Res<RunSettings>,
) {
    backward(
        &graph,
        &params.0.data,
        &mut grads.0.data,
        &mut acts,
        &batch.inputs,
        batch.size,
        *mode,
        step_seed(&settings, &clock),
    );
}
