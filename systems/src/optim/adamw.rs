//! AdamW (decoupled weight decay) as a system. beta1 is `LearningRate.momentum` so schedules that drive
//! momentum (Ultralytics warm-up, one-cycle) drive Adam's beta1 as Ultralytics does.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params};
use ecstrain_kernels::optim::adamw::{adamw_step, AdamWConfig};

use super::{OptimizerSettings, TrainableParam};

/// Names of AdamW's state arenas (PyTorch's state keys).
pub const STATE: &[&str] = &["exp_avg", "exp_avg_sq"];

/// Optimize: one AdamW step over every trainable parameter.
pub fn adamw_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
) {
    state.step += 1;
    let step = state.step;
    let (m, rest) = state.buffers.split_at_mut(1);
    let (m, v) = (&mut m[0].1, &mut rest[0].1);
    for (slice, no_decay, bias, scale) in &query {
        let cfg = AdamWConfig {
            lr: lr.for_param(bias, scale),
            beta1: lr.momentum,
            beta2: settings.beta2,
            eps: settings.eps,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
        };
        adamw_step(params.0.get_mut(*slice), grads.0.get(*slice), m.get_mut(*slice), v.get_mut(*slice), &cfg, step);
    }
}
