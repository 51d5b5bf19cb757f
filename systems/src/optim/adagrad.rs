//! Adagrad (lr decay, coupled weight decay, initial accumulator) as a system.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params, StateLayout};
use ecstrain_kernels::optim::adagrad::{adagrad_step, AdagradConfig};

use super::parallel::{par_update, Job};
use super::{buffers_by_name, required, OptimizerSettings, TrainableParam};

/// Adagrad's state: `sum` (PyTorch's state key), filled with `initial_accumulator_value` as torch does.
pub fn layout(settings: &OptimizerSettings) -> StateLayout {
    StateLayout { buffers: vec![("sum", settings.initial_accumulator_value as f32)], scalars: Vec::new() }
}

/// Optimize: one Adagrad step over every trainable parameter.
pub fn adagrad_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut jobs: Local<Vec<Job<AdagradConfig>>>,
) {
    let state = &mut *state;
    state.step += 1;
    let step = state.step;
    let [sum] = buffers_by_name(&mut state.buffers, ["sum"]);
    let sum = required("adagrad", "sum", sum);
    jobs.clear();
    for (slice, no_decay, bias, scale) in &query {
        let cfg = AdagradConfig {
            lr: lr.for_param(bias, scale),
            lr_decay: settings.lr_decay,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
            initial_accumulator_value: settings.initial_accumulator_value,
            eps: settings.eps,
        };
        jobs.push((slice.range(), cfg));
    }
    par_update(&mut params.0.data, &grads.0.data, [&mut sum.data], &mut jobs, |p, g, [s], cfg| {
        adagrad_step(p, g, s, cfg, step)
    });
}
