//! Mixed precision's dynamic loss scaling (`run.amp: f16`), active when the assembly inserted a
//! [`LossScaler`]. The loss gradient is scaled before the backward (on the host, for both devices: on CUDA
//! it goes up after); the gradients are unscaled and checked before clipping and the optimizer, which skips
//! windows with inf / NaN gradients: on the host arena on the CPU, on the device arena on CUDA. The autocast
//! itself (half-precision products) is a property of the device, set at assembly (`cuda_run::install`).

use bevy_ecs::prelude::*;
use ecstrain_components::LossScaler;
use ecstrain_systems::device::amp::gpu_unscale_gradients;
use ecstrain_systems::device::loss::host_loss;
use ecstrain_systems::device::systems::{gpu_backward, gpu_clip_gradients};
use ecstrain_systems::device::{on_cpu, on_cuda};
use ecstrain_systems::graph::systems::backward_system;
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
                // A device-side loss applies the scale in its gradient kernel.
                scale_loss_gradient
                    .run_if(on.and_then(host_loss))
                    .in_set(StepSet::Backward)
                    .before(backward_system)
                    .before(gpu_backward),
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
    }
}
