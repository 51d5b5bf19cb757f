//! The model EMA on the device (`run.ema` with `run.device: cuda`): the CUDA twins of
//! [`update_ema`](crate::optim::ema::update_ema) and [`swap_ema`](crate::optim::ema::swap_ema).
//!
//! The averages live in [`GpuEma`](super::state::GpuEma) next to the training arenas. The update is one
//! launch per arena (`ema_update_tracked`: tracked parameters and floating-point buffers averaged with the
//! CPU's arithmetic, the rest copied). For validation the device arenas trade places, as the host ones do:
//! the host [`swap_ema`](crate::optim::ema::swap_ema) still runs, on arrays that may be stale, so that the
//! copy down before the checkpoints lands every device arena in its host twin.

use bevy_ecs::prelude::*;
use ecstrain_components::{EmaShadow, EmaWeights, ParamSlice, RunFailure};
use ecstrain_kernels::cuda::{GpuError, Segment};
use ecstrain_kernels::optim::ema::cuda::ema_update_tracked;

use super::state::GpuState;
use super::systems::fail;

/// Schedule (CUDA, on accumulation boundaries, after the optimizer): one EMA update of the device averages,
/// with the decay of the host [`EmaWeights`]' update count (which it advances, as the CPU system does).
pub fn gpu_update_ema(
    query: Query<(&ParamSlice, Has<EmaShadow>)>,
    mut gpu: ResMut<GpuState>,
    mut ema: ResMut<EmaWeights>,
    mut failure: ResMut<RunFailure>,
) {
    debug_assert!(!ema.swapped, "EMA update while the averages are swapped in");
    ema.updates += 1;
    let d = ema.decay_at(ema.updates);
    let g = &mut *gpu;
    let Some(e) = g.ema.as_mut() else { return };
    let mut run = || -> Result<(), GpuError> {
        if !e.tracked_ready {
            // The tracked set is fixed once training starts (markers are set at assembly or by plugins).
            let mut tracked: Vec<_> = query.iter().filter(|(_, t)| *t).map(|(s, _)| s.range()).collect();
            tracked.sort_unstable_by_key(|r| r.start);
            e.tracked.host.clear();
            e.tracked.host.extend(tracked.iter().map(|r| Segment {
                start: r.start as u64,
                end: r.end as u64,
                ..Segment::default()
            }));
            e.tracked.upload(&g.gpu)?;
            e.tracked_ready = true;
        }
        let n = ema.params.len();
        ema_update_tracked(&g.gpu, &mut e.params.slice_mut(..n), &g.params.slice(..n), d, &e.tracked)?;
        let nb = ema.buffers.len();
        if nb > 0 {
            ema_update_tracked(&g.gpu, &mut e.buffers.slice_mut(..nb), &g.buffers.slice(..nb), d, &e.float_buffers)?;
        }
        Ok(())
    };
    if let Err(err) = run() {
        fail(&mut failure, "EMA update", err);
    }
    g.host_stale = true;
}

/// ValidationStart and ValidationEnd (CUDA, beside the host swap): the device averages and training
/// arenas trade places. O(1): the handles move, not the data.
pub fn gpu_swap_ema(mut gpu: ResMut<GpuState>) {
    let g = &mut *gpu;
    if let Some(e) = g.ema.as_mut() {
        std::mem::swap(&mut g.params, &mut e.params);
        std::mem::swap(&mut g.buffers, &mut e.buffers);
    }
}
