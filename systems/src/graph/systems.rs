//! The Forward and Backward systems: run the graph on the current batch.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Buffers, Clock, Grads, Graph, Mode, Params, RunSettings};
use ecstrain_kernels::rng::Rng;

use super::{backward, backward_releasing, forward, Activations};
use crate::parallel::{OverlapReducer, ReduceTiming};

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

/// Backward: parameter gradients of the current batch, accumulated into [`Grads`]. In a data-parallel CPU run
/// with an [`OverlapReducer`], the micro-batch that ends an accumulation window also averages the gradients over
/// the ranks, bucket by bucket while the backward goes on (PyTorch DDP's overlap), so they leave this system
/// averaged and the Reduce set's [`all_reduce_gradients`](crate::parallel::all_reduce_gradients) does not run.
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
    reducer: Option<ResMut<OverlapReducer>>,
    timing: Option<ResMut<ReduceTiming>>,
) {
    let (n, seed) = (batch.size, step_seed(&settings, &clock));
    let (params, grads) = (&params.0.data, &mut grads.0.data);
    match reducer {
        Some(mut reducer) if clock.at_accumulation_boundary() => {
            let ((), stats) = reducer.reduce_during(|release| {
                backward_releasing(&graph, params, grads, &mut acts, &batch.inputs, n, *mode, seed, Some(release))
            });
            if let Some(mut t) = timing {
                t.record(stats.comm_seconds, stats.wait_seconds);
            }
        }
        _ => backward(&graph, params, grads, &mut acts, &batch.inputs, n, *mode, seed),
    }
}
