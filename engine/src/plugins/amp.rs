//! Mixed precision's dynamic loss scaling (`run.amp: f16`), active when the assembly inserted a
//! [`LossScaler`]. The loss gradient is scaled before the backward; the gradients are unscaled and checked
//! before clipping and the optimizer, which skips windows with inf / NaN gradients. On the CPU all of it
//! runs on the host arenas; on CUDA the scale and every decision stay on the device and the host state
//! follows a window behind (`ecstrain_systems::device::amp`), read up to date before anything reports or
//! saves it. The autocast itself (half-precision products) is a property of the device, set at assembly
//! (`cuda_run::install`).

use bevy_ecs::prelude::*;
use ecstrain_components::LossScaler;
use ecstrain_systems::device::amp::{gpu_settle_loss_scale, gpu_unscale_gradients, DeviceScaler};
use ecstrain_systems::device::systems::{gpu_clip_gradients, gpu_sync_down};
use ecstrain_systems::device::{on_cpu, on_cuda};
use ecstrain_systems::graph::systems::backward_system;
use ecstrain_systems::logging::emit::{at_log_interval, emit_epoch_record, emit_train_record};
use ecstrain_systems::optim::at_accumulation_boundary;
use ecstrain_systems::optim::clip::clip_gradients;
use ecstrain_systems::optim::loss_scale::{scale_loss_gradient, unscale_gradients};
use ecstrain_systems::sets::*;

use crate::app::{App, Plugin};

/// See the module docs.
pub struct AmpPlugin;

impl Plugin for AmpPlugin {
    fn build(&self, app: &mut App) {
        let on = resource_exists::<LossScaler>;
        app.add_systems(
            TrainStep,
            (
                // On CUDA `gpu_backward` multiplies the output gradient by the device's scale.
                scale_loss_gradient.run_if(on.and_then(on_cpu)).in_set(StepSet::Backward).before(backward_system),
                unscale_gradients
                    .run_if(on.and_then(at_accumulation_boundary).and_then(on_cpu))
                    .in_set(StepSet::Reduce)
                    .before(clip_gradients),
                // After the device gradient average (first in Reduce), before device clipping.
                gpu_unscale_gradients
                    .run_if(on.and_then(at_accumulation_boundary).and_then(on_cuda))
                    .in_set(StepSet::Reduce)
                    .after(ecstrain_systems::device::reduce::gpu_all_reduce_gradients)
                    .before(gpu_clip_gradients),
            ),
        );
        // CUDA: the host's scaler and step count brought up to date before they are logged or saved (the
        // stop path settles too, runner/stop.rs).
        let settle = || gpu_settle_loss_scale.run_if(resource_exists::<DeviceScaler>);
        app.add_systems(TrainStep, settle().run_if(at_log_interval).in_set(StepSet::Log).before(emit_train_record));
        app.add_systems(ValidationEnd, settle().before(ValidationEndSet::Summarize).after(gpu_sync_down));
        app.add_systems(EpochEnd, settle().before(emit_epoch_record));
        app.add_systems(RunEnd, settle());
    }
}
