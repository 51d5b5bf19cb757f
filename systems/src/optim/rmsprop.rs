//! RMSprop (centered, momentum, coupled weight decay) as a system. Its momentum is `LearningRate.momentum`,
//! i.e. `run.momentum` (default 0.9) as Ultralytics passes it, not torch's default of 0.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params, StateLayout};
use ecstrain_kernels::optim::rmsprop::{rmsprop_step, RmspropConfig};

use super::parallel::{par_update, Job};
use super::{buffers_by_name, required, OptimizerSettings, TrainableParam};

/// RMSprop's state: `square_avg`, plus `grad_avg` when centered and `momentum_buffer` when `run.momentum`
/// is > 0 (PyTorch's state keys; torch creates the same ones).
pub fn layout(settings: &OptimizerSettings) -> StateLayout {
    let mut l = StateLayout::zeros(&["square_avg"]);
    if settings.centered {
        l = l.with_buffer("grad_avg");
    }
    if settings.momentum > 0.0 {
        l = l.with_buffer("momentum_buffer");
    }
    l
}

/// Optimize: one RMSprop step over every trainable parameter.
pub fn rmsprop_update(
    query: Query<TrainableParam, Without<Frozen>>,
    mut params: ResMut<Params>,
    grads: Res<Grads>,
    mut state: ResMut<OptimizerState>,
    lr: Res<LearningRate>,
    settings: Res<OptimizerSettings>,
    mut jobs: Local<Vec<Job<RmspropConfig>>>,
) {
    let state = &mut *state;
    state.step += 1;
    let [sq, ga, buf] = buffers_by_name(&mut state.buffers, ["square_avg", "grad_avg", "momentum_buffer"]);
    let sq = required("rmsprop", "square_avg", sq);
    let ga: &mut [f32] = match settings.centered {
        true => &mut required("rmsprop", "grad_avg", ga).data,
        false => &mut [],
    };
    // Without a buffer (run.momentum 0) there is no momentum, whatever a schedule sets.
    let momentum = if buf.is_some() { lr.momentum } else { 0.0 };
    let buf: &mut [f32] = match buf {
        Some(b) => &mut b.data,
        None => &mut [],
    };
    jobs.clear();
    for (slice, no_decay, bias, scale) in &query {
        let cfg = RmspropConfig {
            lr: lr.for_param(bias, scale),
            alpha: settings.alpha,
            eps: settings.eps,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
            momentum,
            centered: settings.centered,
        };
        jobs.push((slice.range(), cfg));
    }
    par_update(&mut params.0.data, &grads.0.data, [&mut sq.data, ga, buf], &mut jobs, |p, g, [s, a, b], cfg| {
        rmsprop_step(p, g, s, a, b, cfg)
    });
}
