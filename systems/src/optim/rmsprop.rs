//! RMSprop (centered, momentum, coupled weight decay) as a system. Its momentum is `LearningRate.momentum`,
//! i.e. `run.momentum` (default 0.9) as Ultralytics passes it, not torch's default of 0.

use bevy_ecs::prelude::*;
use ecstrain_components::{Frozen, Grads, LearningRate, OptimizerState, Params, StateLayout};
use ecstrain_kernels::optim::rmsprop::{rmsprop_step, RmspropConfig};

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
) {
    let state = &mut *state;
    state.step += 1;
    let [sq, ga, buf] = buffers_by_name(&mut state.buffers, ["square_avg", "grad_avg", "momentum_buffer"]);
    let sq = required("rmsprop", "square_avg", sq);
    let mut ga = settings.centered.then(|| required("rmsprop", "grad_avg", ga));
    // Without a buffer (run.momentum 0) there is no momentum, whatever a schedule sets.
    let momentum = if buf.is_some() { lr.momentum } else { 0.0 };
    let mut buf = buf;
    for (slice, no_decay, bias, scale) in &query {
        let cfg = RmspropConfig {
            lr: lr.for_param(bias, scale),
            alpha: settings.alpha,
            eps: settings.eps,
            weight_decay: if no_decay { 0.0 } else { settings.weight_decay },
            momentum,
            centered: settings.centered,
        };
        let ga: &mut [f32] = match &mut ga {
            Some(a) => a.get_mut(*slice),
            None => &mut [],
        };
        let b: &mut [f32] = match &mut buf {
            Some(a) => a.get_mut(*slice),
            None => &mut [],
        };
        rmsprop_step(params.0.get_mut(*slice), grads.0.get(*slice), sq.get_mut(*slice), ga, b, &cfg);
    }
}
