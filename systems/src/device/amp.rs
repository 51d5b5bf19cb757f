//! f16 mixed precision's dynamic loss scaling on the device: the CUDA twin of
//! [`unscale_gradients`](crate::optim::loss_scale::unscale_gradients).
//!
//! The loss gradient is scaled on the host before it goes up (the host system serves both devices); the
//! device gradient arena is unscaled and checked in one launch, the flag copied down (one float: the step
//! must know whether to skip), and on an overflow the arena is zeroed and the optimizer step skipped, as
//! torch's GradScaler does.

use bevy_ecs::prelude::*;
use ecstrain_components::{LossScaler, RunFailure};
use ecstrain_kernels::cuda::GpuError;
use ecstrain_kernels::ops::cast::cuda::unscale_and_check;

use super::state::GpuState;
use super::systems::fail;

/// Reduce (CUDA, at accumulation boundaries, after the gradient average and before clipping): unscales the
/// device gradients, zeroes them when any was inf / NaN, and updates the scaler (which decides whether the
/// optimizer steps). The whole arena is scanned in one launch, frozen parameters' gradients included (the
/// CPU twin checks only the trainable ones; a frozen parameter's gradient overflows only when the gradients
/// flowing through it do, which reach trainable ones too).
pub fn gpu_unscale_gradients(
    mut gpu: ResMut<GpuState>,
    mut scaler: ResMut<LossScaler>,
    mut failure: ResMut<RunFailure>,
) {
    let inv = (1.0 / scaler.scale) as f32;
    let g = &mut *gpu;
    let s = g.gpu.stream().clone();
    let mut run = || -> Result<bool, GpuError> {
        s.memset_zeros(&mut g.found_inf)?;
        unscale_and_check(&g.gpu, &mut g.grads.as_view_mut(), inv, &mut g.found_inf.as_view_mut())?;
        let mut flag = [0f32; 1];
        s.memcpy_dtoh(&g.found_inf, &mut flag[..])?;
        s.synchronize()?;
        let found = flag[0] != 0.0;
        if found {
            s.memset_zeros(&mut g.grads)?;
        }
        Ok(found)
    };
    match run() {
        Ok(found) => scaler.update(!found),
        Err(e) => fail(&mut failure, "gradient unscale", e),
    }
}
