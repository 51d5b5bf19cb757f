//! Adam (coupled L2 weight decay by default, `decoupled_weight_decay` for the AdamW form, optional AMSGrad)
//! as a system; AdamW's system shares [`adam_family_update`]. beta1 is `LearningRate.momentum`.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params, StateLayout};
use ecstrain_kernels::optim::adam::{adam_step, AdamConfig};

use super::parallel::{par_update, Job};
use super::{buffers_by_name, required, OptimizerSettings, TrainableParam};

/// Names of Adam's state arenas (PyTorch's state keys) without AMSGrad.
pub const STATE: &[&str] = &["exp_avg", "exp_avg_sq"];

/// Adam's state: [`STATE`], plus `max_exp_avg_sq` with `amsgrad` (torch keeps it only then).
pub fn layout(settings: &OptimizerSettings) -> StateLayout {
    let l = StateLayout::zeros(STATE);
    if settings.amsgrad {
        l.with_buffer("max_exp_avg_sq")
    } else {
        l
    }
}

/// One Adam-family step over every trainable parameter; `decoupled` forces AdamW's decay (otherwise
/// `settings.decoupled_weight_decay` decides, as torch's `Adam(decoupled_weight_decay=...)`).
#[allow(clippy::too_many_arguments)]
pub(super) fn adam_family_update(
    name: &str,
    decoupled: bool,
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    jobs: &mut Vec<Job<AdamConfig>>,
) {
    let state = &mut *state;
    state.step += 1;
    let step = state.step;
    let [m, v, vmax] = buffers_by_name(&mut state.buffers, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]);
    let (m, v) = (required(name, "exp_avg", m), required(name, "exp_avg_sq", v));
    // AMSGrad's buffer exists exactly when `amsgrad` is set (see `layout`).
    let vmax: &mut [f32] = match settings.amsgrad {
        true => &mut required(name, "max_exp_avg_sq", vmax).data,
        false => &mut [],
    };
    jobs.clear();
    for (slice, no_decay, bias, scale) in &query {
        let cfg = AdamConfig {
            lr: lr.for_param(bias, scale),
            beta1: lr.momentum,
            beta2: settings.beta2,
            eps: settings.eps,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
            decoupled_weight_decay: decoupled || settings.decoupled_weight_decay,
            amsgrad: settings.amsgrad,
        };
        jobs.push((slice.range(), cfg));
    }
    let state = [&mut m.data[..], &mut v.data, vmax];
    par_update(&mut params.0.data, &grads.0.data, state, jobs, |p, g, [m, v, vm], cfg| {
        adam_step(p, g, m, v, vm, cfg, step)
    });
}

/// Optimize: one Adam step over every trainable parameter.
pub fn adam_update(
    query: Query<TrainableParam, Without<Frozen>>,
    params: ResMut<Params>,
    grads: Res<Grads>,
    state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut jobs: Local<Vec<Job<AdamConfig>>>,
) {
    adam_family_update("adam", false, query, params, grads, state, lr, settings, &mut jobs);
}
