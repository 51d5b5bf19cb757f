//! Adadelta (coupled weight decay) as a system.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params, StateLayout};
use ecstrain_kernels::optim::adadelta::{adadelta_step, AdadeltaConfig};

use super::parallel::{par_update, Job};
use super::{buffers_by_name, required, OptimizerSettings, TrainableParam};

/// Names of Adadelta's state arenas (PyTorch's state keys).
pub const STATE: &[&str] = &["square_avg", "acc_delta"];

/// Adadelta's state: [`STATE`], zero-initialised.
pub fn layout(_: &OptimizerSettings) -> StateLayout {
    StateLayout::zeros(STATE)
}

/// Optimize: one Adadelta step over every trainable parameter.
pub fn adadelta_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut jobs: Local<Vec<Job<AdadeltaConfig>>>,
) {
    let state = &mut *state;
    state.step += 1;
    let [sq, acc] = buffers_by_name(&mut state.buffers, ["square_avg", "acc_delta"]);
    let (sq, acc) = (required("adadelta", "square_avg", sq), required("adadelta", "acc_delta", acc));
    jobs.clear();
    for (slice, no_decay, bias, scale) in &query {
        let cfg = AdadeltaConfig {
            lr: lr.for_param(bias, scale),
            rho: settings.rho,
            eps: settings.eps,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
        };
        jobs.push((slice.range(), cfg));
    }
    par_update(&mut params.0.data, &grads.0.data, [&mut sq.data, &mut acc.data], &mut jobs, |p, g, [s, a], cfg| {
        adadelta_step(p, g, s, a, cfg)
    });
}
