//! SGD (momentum, dampening, Nesterov, coupled weight decay) as a system.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params};
use ecstrain_kernels::optim::sgd::{sgd_step, SgdConfig};

use super::{OptimizerSettings, TrainableParam};

/// Names of SGD's state arenas (PyTorch's state keys).
pub const STATE: &[&str] = &["momentum_buffer"];

/// Optimize: one SGD step over every trainable parameter.
pub fn sgd_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
) {
    state.step += 1;
    let step = state.step;
    let buf = &mut state.buffers[0].1;
    for (slice, no_decay, bias, scale) in &query {
        let cfg = SgdConfig {
            lr: lr.for_param(bias, scale),
            momentum: lr.momentum,
            dampening: settings.dampening,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
            nesterov: settings.nesterov,
        };
        sgd_step(params.0.get_mut(*slice), grads.0.get(*slice), buf.get_mut(*slice), &cfg, step);
    }
}
