//! Optimizer systems: each runs its fused kernel from `ecstrain_kernels::optim` over the parameter entities,
//! reading the slices they own in the parameter, gradient and state arenas.
//!
//! A parameter's effective learning rate is `LearningRate.lr * LrScale`; its weight decay is zero with
//! [`NoDecay`](ecstrain_components::NoDecay); [`Frozen`](ecstrain_components::Frozen) parameters are skipped.

pub mod adamw;
pub mod clip;
pub mod ema;
pub mod sgd;

use bevy_ecs::prelude::*;
use ecstrain_components::{Clock, Grads};

/// What an optimizer reads of each trainable parameter entity: its slice, whether it is exempt from weight
/// decay, whether it is a bias (its lr is [`LearningRate::bias_lr`](ecstrain_components::LearningRate)), and its
/// learning-rate scale.
pub type TrainableParam = (
    &'static ecstrain_components::ParamSlice,
    Has<ecstrain_components::NoDecay>,
    Has<ecstrain_components::Bias>,
    Option<&'static ecstrain_components::LrScale>,
);

/// Hyper-parameters shared by the optimizers that the schedule does not drive.
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct OptimizerSettings {
    /// Weight decay after the `nbs` scaling (coupled L2 for SGD, decoupled for AdamW).
    pub weight_decay: f64,
    /// SGD: Nesterov momentum.
    pub nesterov: bool,
    /// SGD: dampening.
    pub dampening: f64,
    /// Adam family: beta2.
    pub beta2: f64,
    /// Adam family: epsilon.
    pub eps: f64,
}

/// Run condition: the micro-batch just processed ends an accumulation window.
pub fn at_accumulation_boundary(clock: Res<Clock>) -> bool {
    clock.at_accumulation_boundary()
}

/// Optimize (after the update): clears the gradient arena for the next accumulation window.
pub fn zero_grads(mut grads: ResMut<Grads>) {
    grads.0.data.fill(0.0);
}
