//! The EMA systems: the update after each optimizer step, and the swap that makes a validation pass (and the
//! best checkpoint written during it) use the averaged weights.

use bevy_ecs::prelude::*;
use ecstrain_components::{Buffers, EmaShadow, EmaWeights, ParamSlice, Params};
use ecstrain_kernels::optim::ema::ema_update;

use super::parallel::{par_update, Job};

/// Schedule (on accumulation boundaries, after the optimizer): one EMA update of every tracked parameter and
/// floating-point buffer; untracked parameters and integer buffers (batch counters) are copied.
pub fn update_ema(
    query: Query<(&ParamSlice, Has<EmaShadow>)>,
    params: Res<Params>,
    buffers: Res<Buffers>,
    mut ema: ResMut<EmaWeights>,
    mut jobs: Local<Vec<Job<bool>>>,
) {
    debug_assert!(!ema.swapped, "EMA update while the averages are swapped in");
    ema.updates += 1;
    let d = ema.decay_at(ema.updates);
    let ema = &mut *ema;
    // Every parameter in one parallel pass over the arenas (see `parallel`): the shadow arena is updated in
    // place from the parameter arena, each parameter's range averaged or, untracked, copied.
    jobs.clear();
    jobs.extend(query.iter().map(|(s, tracked)| (s.range(), tracked)));
    par_update(&mut ema.params.data, &params.0.data, [], &mut jobs, |shadow, value, [], &tracked| {
        if tracked {
            ema_update(shadow, value, d);
        } else {
            shadow.copy_from_slice(value);
        }
    });
    for e in &buffers.entries {
        let (shadow, value) = (ema.buffers.get_mut(e.slice), buffers.arena.get(e.slice));
        if e.integer {
            shadow.copy_from_slice(value);
        } else {
            ema_update(shadow, value, d);
        }
    }
}

/// Swaps the averages with the training weights (parameters and buffers): O(1), the arenas trade places.
/// Run once before a validation pass and once after its checkpoint.
pub fn swap_ema(mut params: ResMut<Params>, mut buffers: ResMut<Buffers>, mut ema: ResMut<EmaWeights>) {
    let ema = &mut *ema;
    std::mem::swap(&mut params.0, &mut ema.params);
    std::mem::swap(&mut buffers.arena, &mut ema.buffers);
    ema.swapped = !ema.swapped;
}
