//! SGD (momentum, dampening, Nesterov, coupled weight decay) as a system.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params, StateLayout};
use ecstrain_kernels::optim::sgd::{sgd_step, SgdConfig};

use super::parallel::{par_update, Job};
use super::{buffers_by_name, required, OptimizerSettings, TrainableParam};

/// Names of SGD's state arenas (PyTorch's state keys). The buffer exists even without momentum, so a
/// schedule may switch momentum on and checkpoints keep one layout.
pub const STATE: &[&str] = &["momentum_buffer"];

/// SGD's state: [`STATE`], zero-initialised.
pub fn layout(_: &OptimizerSettings) -> StateLayout {
    StateLayout::zeros(STATE)
}

/// Optimize: one SGD step over every trainable parameter.
pub fn sgd_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut jobs: Local<Vec<Job<SgdConfig>>>,
) {
    let state = &mut *state;
    state.step += 1;
    let step = state.step;
    let [buf] = buffers_by_name(&mut state.buffers, ["momentum_buffer"]);
    let buf = required("sgd", "momentum_buffer", buf);
    jobs.clear();
    for (slice, no_decay, bias, scale) in &query {
        let cfg = SgdConfig {
            lr: lr.for_param(bias, scale),
            momentum: lr.momentum,
            dampening: settings.dampening,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
            nesterov: settings.nesterov,
        };
        jobs.push((slice.range(), cfg));
    }
    par_update(&mut params.0.data, &grads.0.data, [&mut buf.data], &mut jobs, |p, g, [b], cfg| {
        sgd_step(p, g, b, cfg, step)
    });
}
