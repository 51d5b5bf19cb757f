//! f16 mixed precision's dynamic loss scaling on the device, with no host wait per step: the CUDA twin of
//! [`crate::optim::loss_scale`], the way torch's fused optimizers take GradScaler's `found_inf` and scale
//! as device tensors.
//!
//! The scale lives in [`GpuState::loss_scale`] (`[scale, growth tracker]`, f64), and every decision of a
//! window is taken on the device, in stream order:
//! - backward: the loss gradient is multiplied by the scale, as the host's `scale_loss_gradient` multiplies
//!   the host one, in f32 before a half output's gradient is rounded (inside the device loss kernels,
//!   [`super::loss`]; for a host task's gradient, as it goes up in `gpu_backward`,
//!   [`super::acts::upload_output_gradient`]), and so is the VQ layers' auxiliary weight (inside their
//!   kernels);
//! - reduce ([`gpu_unscale_gradients`]): the gradient arena is unscaled and checked into the `found_inf`
//!   flag, then one launch zeroes the arena if the flag is set and moves the scale (torch's
//!   `_amp_update_scale_`); the flag is copied into page-locked memory;
//! - optimize: after the segment table goes up, a window that overflowed empties it on the device, so the
//!   fused update changes nothing (`gpu_optimizer_update`).
//!
//! The host keeps [`LossScaler`] and the optimizer's step count as the checkpoint and the logs read them,
//! one window behind: the next window's unscale (a step later, long after the device wrote the flag) reads
//! the flag and applies it with the host's own arithmetic ([`DeviceScaler::settle`]): the scaler's update,
//! and for a skipped step the step count and scalars (NAdam's `mu_product`) put back as they were before
//! it. So the coefficients of every step the device takes are computed from the count of the steps it took.
//! Before anything else reads them (a log record, validation's checkpoints, the epoch's end, the run's end,
//! a stop) [`gpu_settle_loss_scale`] brings them up to date.

use bevy_ecs::prelude::*;
use ecstrain_components::{LossScaler, OptimizerState, RunFailure};
use ecstrain_kernels::cuda::cudarc::driver::{CudaEvent, PinnedHostSlice};
use ecstrain_kernels::cuda::{Gpu, GpuError};
use ecstrain_kernels::optim::loss_scale::cuda::{unscale_and_check, update_scale};

use super::state::GpuState;
use super::systems::fail;

/// The host's side of device loss scaling: where the last window's flag lands, and what its optimizer step
/// changed on the host (see the module docs).
#[derive(Resource)]
pub struct DeviceScaler {
    /// Page-locked landing place of the last window's `found_inf` flag.
    flag: PinnedHostSlice<f32>,
    /// Recorded after the flag's copy: the read waits for it. (The slice's own event orders nothing here:
    /// the engine turns cudarc's event tracking off, so a copy into it records no event, and reading it
    /// without this one could see the window before's flag, or a half-written one.)
    copied: CudaEvent,
    /// The last window's flag was copied down and is not applied to the host state yet.
    pending: bool,
    /// The optimizer ran in the pending window (from the step count and scalars below).
    stepped: bool,
    /// The optimizer's step count before the pending window's step.
    step_before: u64,
    /// The optimizer's scalars before the pending window's step (same length as `OptimizerState::scalars`,
    /// so remembering them allocates nothing).
    scalars_before: Vec<f64>,
}

impl std::fmt::Debug for DeviceScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("DeviceScaler");
        d.field("pending", &self.pending).field("stepped", &self.stepped).finish_non_exhaustive()
    }
}

impl DeviceScaler {
    /// The landing place for the flag; `scalars` is the number of optimizer scalars.
    pub fn new(gpu: &Gpu, scalars: usize) -> Result<DeviceScaler, GpuError> {
        Ok(DeviceScaler {
            // SAFETY: the host reads the flag only through `as_slice`, which waits for the copy's event.
            flag: unsafe { gpu.context().alloc_pinned::<f32>(1)? },
            copied: gpu.context().new_event(None)?,
            pending: false,
            stepped: false,
            step_before: 0,
            scalars_before: vec![0.0; scalars],
        })
    }

    /// Whether a window's flag is still to be applied to the host state.
    pub fn pending(&self) -> bool {
        self.pending
    }

    /// Called by the optimizer before it advances the step count: what to put back if the device skips this
    /// window's step.
    pub fn remember(&mut self, opt: &OptimizerState) {
        self.step_before = opt.step;
        for (slot, (_, v)) in self.scalars_before.iter_mut().zip(&opt.scalars) {
            *slot = *v;
        }
        self.stepped = true;
    }

    /// Applies the pending window's flag to the host state (waits for its copy, which the device finished
    /// long ago unless the host ran more than a window ahead): the scaler's update and, for a skipped step,
    /// the optimizer's step count and scalars put back.
    pub fn settle(&mut self, scaler: &mut LossScaler, opt: &mut OptimizerState) -> Result<(), GpuError> {
        if !self.pending {
            return Ok(());
        }
        self.copied.synchronize()?;
        let found = self.flag.as_slice()?[0] != 0.0;
        scaler.update(!found);
        // The device, not this flag, decides whether a step runs (the flag describes a window already past).
        scaler.skip_step = false;
        if found && self.stepped {
            opt.step = self.step_before;
            for ((_, v), before) in opt.scalars.iter_mut().zip(&self.scalars_before) {
                *v = *before;
            }
        }
        self.pending = false;
        self.stepped = false;
        Ok(())
    }
}

/// Reduce (CUDA, at accumulation boundaries, after the gradient average and before clipping): applies the
/// previous window's flag to the host state, then unscales and checks the device gradients, zeroes them on
/// an overflow and moves the device scale, and copies the new flag down without waiting for it.
pub fn gpu_unscale_gradients(
    mut gpu: ResMut<GpuState>,
    mut device: ResMut<DeviceScaler>,
    mut scaler: ResMut<LossScaler>,
    mut opt: ResMut<OptimizerState>,
    mut failure: ResMut<RunFailure>,
) {
    let (g, d) = (&mut *gpu, &mut *device);
    let rule = scaler.rule();
    let mut run = || -> Result<(), GpuError> {
        d.settle(&mut scaler, &mut opt)?;
        let s = g.gpu.stream().clone();
        s.memset_zeros(&mut g.found_inf)?;
        unscale_and_check(&g.gpu, &mut g.grads.as_view_mut(), &g.loss_scale, &mut g.found_inf.as_view_mut())?;
        update_scale(&g.gpu, &mut g.grads.as_view_mut(), &g.found_inf.as_view(), &mut g.loss_scale, &rule)?;
        s.memcpy_dtoh(&g.found_inf, &mut d.flag)?;
        d.copied.record(&s)?;
        d.pending = true;
        Ok(())
    };
    if let Err(e) = run() {
        fail(&mut failure, "gradient unscale", e);
    }
}

/// Before the host reads the scaler or the optimizer's step count (log records, validation's checkpoints,
/// the epoch's and the run's end, a stop): applies the last window's flag.
pub fn gpu_settle_loss_scale(
    mut device: ResMut<DeviceScaler>,
    mut scaler: ResMut<LossScaler>,
    mut opt: ResMut<OptimizerState>,
    mut failure: ResMut<RunFailure>,
) {
    if let Err(e) = device.settle(&mut scaler, &mut opt) {
        fail(&mut failure, "loss scale read", e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecstrain_kernels::cuda::testing::gpu_or_skip;

    fn scaler() -> LossScaler {
        LossScaler {
            scale: 1024.0,
            growth: 2.0,
            backoff: 0.5,
            growth_interval: 2,
            good_steps: 1,
            skip_step: false,
            skipped: 0,
        }
    }

    /// A window's flag as the unscale leaves it: copied down, its event recorded.
    fn flag_window(gpu: &Gpu, d: &mut DeviceScaler, found: f32) {
        let s = gpu.stream().clone();
        let dev = gpu.upload(&[found]).unwrap();
        s.memcpy_dtoh(&dev, &mut d.flag).unwrap();
        d.copied.record(&s).unwrap();
        d.pending = true;
    }

    /// Settling applies each window's flag once: an overflowed window's step is taken back (the count and
    /// NAdam's `mu_product` as they were before it) and the scale backs off; a finite one keeps the step and
    /// counts towards growth; with nothing pending, nothing changes.
    #[test]
    fn cuda_settle_applies_each_flag_once_and_takes_back_a_skipped_step() {
        let Some(gpu) = gpu_or_skip("cuda_settle_applies_each_flag_once_and_takes_back_a_skipped_step") else { return };
        let mut opt = OptimizerState {
            optimizer: "nadam".into(),
            buffers: Vec::new(),
            scalars: vec![("mu_product".into(), 0.75)],
            step: 4,
        };
        let (mut sc, mut d) = (scaler(), DeviceScaler::new(gpu, 1).unwrap());
        // An overflowed window whose step the optimizer launched (the device emptied its table).
        d.remember(&opt);
        (opt.step, opt.scalars[0].1) = (5, 0.5);
        flag_window(gpu, &mut d, 1.0);
        d.settle(&mut sc, &mut opt).unwrap();
        assert_eq!((opt.step, opt.scalars[0].1), (4, 0.75), "the skipped step is taken back");
        assert_eq!((sc.scale, sc.good_steps, sc.skipped, sc.skip_step), (512.0, 0, 1, false));
        d.settle(&mut sc, &mut opt).unwrap();
        assert_eq!((opt.step, sc.scale, sc.skipped), (4, 512.0, 1), "a flag is applied once");
        // Two finite windows: the steps stay and the scale grows after the second.
        for (step, mu) in [(5u64, 0.5), (6, 0.25)] {
            d.remember(&opt);
            (opt.step, opt.scalars[0].1) = (step, mu);
            flag_window(gpu, &mut d, 0.0);
            d.settle(&mut sc, &mut opt).unwrap();
            assert_eq!((opt.step, opt.scalars[0].1), (step, mu), "a finite window keeps its step");
        }
        assert_eq!((sc.scale, sc.good_steps, sc.skipped), (1024.0, 0, 1));
    }
}
