//! Dynamic loss scaling (mixed precision with f16): the loss gradient is scaled up before the backward so
//! small gradients survive f16, and the parameter gradients are scaled back before clipping and the optimizer;
//! a window with an inf / NaN gradient skips its optimizer step and backs the scale off (torch's GradScaler).

use bevy_ecs::prelude::*;
use ecstrain_components::{Clock, Frozen, Grads, Graph, LossScaler, ParamSlice};

use crate::graph::Activations;

/// Backward (before the graph's backward): multiplies the loss gradient (and the weight of auxiliary losses)
/// by the scale.
pub fn scale_loss_gradient(graph: Res<Graph>, scaler: Res<LossScaler>, mut acts: ResMut<Activations>) {
    let s = scaler.scale as f32;
    let out = graph.output.0;
    acts.grads[out].iter_mut().for_each(|g| *g *= s);
    acts.aux_weight *= s;
}

/// Reduce (on accumulation boundaries, before clipping): divides the trainable gradients by the scale, checks
/// them, and updates the scaler; with a non-finite gradient the window's gradients are dropped and its
/// optimizer step is skipped.
pub fn unscale_gradients(
    query: Query<&ParamSlice, Without<Frozen>>,
    mut grads: ResMut<Grads>,
    mut scaler: ResMut<LossScaler>,
) {
    let inv = (1.0 / scaler.scale) as f32;
    let mut finite = true;
    for s in &query {
        for g in grads.0.get_mut(*s) {
            *g *= inv;
            finite &= g.is_finite();
        }
    }
    if !finite {
        grads.0.data.fill(0.0);
    }
    scaler.update(finite);
}

/// Run condition of the optimizer systems: an accumulation window just ended and its gradients are usable
/// (no loss scaler, or one that did not skip this step).
pub fn optimizer_step_due(clock: Res<Clock>, scaler: Option<Res<LossScaler>>) -> bool {
    clock.at_accumulation_boundary() && !scaler.is_some_and(|s| s.skip_step)
}
