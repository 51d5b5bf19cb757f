//! Gradient clipping as a Reduce-stage system: after gradients are complete (and, in data-parallel runs,
//! averaged), before the optimizer reads them. Runs on accumulation boundaries only, so it clips the
//! accumulated gradient of the whole window, as Ultralytics and Lightning do.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, ParamSlice};
use ecstrain_kernels::optim::clip;

/// The clipping the run asked for (inserted only when one of them is on).
#[derive(Resource, Clone, Copy, Debug, PartialEq)]
pub struct GradClip {
    /// Clamp every gradient element to `[-max_value, max_value]` first (0 = off; torch `clip_grad_value_`).
    pub max_value: f64,
    /// Then scale all trainable gradients so their joint L2 norm is at most `max_norm` (0 = off; torch
    /// `clip_grad_norm_`).
    pub max_norm: f64,
}

/// The joint L2 norm of the trainable gradients at the last clipped step, before scaling (logged as
/// `grad_norm`).
#[derive(Resource, Clone, Copy, Debug, Default, PartialEq)]
pub struct GradNorm(pub Option<f64>);

/// Reduce: clips the gradients of every trainable (not [`Frozen`]) parameter.
pub fn clip_gradients(
    query: Query<&ParamSlice, Without<Frozen>>,
    mut grads: ResMut<Grads>,
    settings: Res<GradClip>,
    mut norm: ResMut<GradNorm>,
) {
    if settings.max_value > 0.0 {
        for s in &query {
            clip::clamp(grads.0.get_mut(*s), settings.max_value);
        }
    }
    let total = query.iter().map(|s| clip::sum_of_squares(grads.0.get(*s))).sum::<f64>().sqrt();
    norm.0 = Some(total);
    if settings.max_norm > 0.0 {
        let coef = clip::clip_coefficient(total, settings.max_norm);
        for s in &query {
            clip::scale(grads.0.get_mut(*s), coef);
        }
    }
}
