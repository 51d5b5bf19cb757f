//! RAdam (coupled or decoupled weight decay) as a system; beta1 is `LearningRate.momentum`.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params, StateLayout};
use ecstrain_kernels::optim::radam::{radam_step, RadamConfig};

use super::parallel::{par_update, Job};
use super::{buffers_by_name, required, OptimizerSettings, TrainableParam};

/// Names of RAdam's state arenas (PyTorch's state keys).
pub const STATE: &[&str] = &["exp_avg", "exp_avg_sq"];

/// RAdam's state: [`STATE`], zero-initialised.
pub fn layout(_: &OptimizerSettings) -> StateLayout {
    StateLayout::zeros(STATE)
}

/// Optimize: one RAdam step over every trainable parameter.
pub fn radam_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut jobs: Local<Vec<Job<RadamConfig>>>,
) {
    let state = &mut *state;
    state.step += 1;
    let step = state.step;
    let [m, v] = buffers_by_name(&mut state.buffers, ["exp_avg", "exp_avg_sq"]);
    let (m, v) = (required("radam", "exp_avg", m), required("radam", "exp_avg_sq", v));
    jobs.clear();
    for (slice, no_decay, bias, scale) in &query {
        let cfg = RadamConfig {
            lr: lr.for_param(bias, scale),
            beta1: lr.momentum,
            beta2: settings.beta2,
            eps: settings.eps,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
            decoupled_weight_decay: settings.decoupled_weight_decay,
        };
        jobs.push((slice.range(), cfg));
    }
    par_update(&mut params.0.data, &grads.0.data, [&mut m.data, &mut v.data], &mut jobs, |p, g, [m, v], cfg| {
        radam_step(p, g, m, v, cfg, step)
    });
}
