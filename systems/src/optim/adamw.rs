//! AdamW (decoupled weight decay, optional AMSGrad) as a system. beta1 is `LearningRate.momentum` so schedules
//! that drive momentum (Ultralytics warm-up, one-cycle) drive Adam's beta1 as Ultralytics does.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params, StateLayout};

use ecstrain_kernels::optim::adam::AdamConfig;

use super::adam::adam_family_update;
use super::parallel::Job;
use super::{OptimizerSettings, TrainableParam};

/// Names of AdamW's state arenas (PyTorch's state keys) without AMSGrad.
pub const STATE: &[&str] = &["exp_avg", "exp_avg_sq"];

/// AdamW's state: [`STATE`], plus `max_exp_avg_sq` with `amsgrad`.
pub fn layout(settings: &OptimizerSettings) -> StateLayout {
    super::adam::layout(settings)
}

/// Optimize: one AdamW step over every trainable parameter.
pub fn adamw_update(
    query: Query<TrainableParam, Without<Frozen>>,
    params: ResMut<Params>,
    grads: Res<Grads>,
    state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut jobs: Local<Vec<Job<AdamConfig>>>,
) {
    adam_family_update("adamw", true, query, params, grads, state, lr, settings, &mut jobs);
}
