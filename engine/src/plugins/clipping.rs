//! Gradient clipping (`run.clip_grad_value`, `run.clip_grad_norm`): a Reduce-stage system that runs when the
//! assembly inserted a [`GradClip`] resource, on accumulation boundaries (on a device, the norm comes down only
//! for the log records).

use bevy_ecs::prelude::*;
use ecstrain_systems::device::systems::{gpu_clip_gradients, gpu_read_grad_norm};
use ecstrain_systems::device::{on_cpu, on_cuda};
use ecstrain_systems::logging::emit::{at_log_interval, emit_train_record};
use ecstrain_systems::optim::at_accumulation_boundary;
use ecstrain_systems::optim::clip::{clip_gradients, GradClip};
use ecstrain_systems::sets::*;

use crate::app::{App, Plugin};

/// See the module docs.
pub struct GradClipPlugin;

impl Plugin for GradClipPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(
            TrainStep,
            clip_gradients
                .run_if(resource_exists::<GradClip>.and_then(at_accumulation_boundary))
                .run_if(on_cpu)
                .in_set(StepSet::Reduce),
        );
        app.add_systems(
            TrainStep,
            gpu_clip_gradients
                .run_if(resource_exists::<GradClip>.and_then(at_accumulation_boundary))
                .run_if(on_cuda)
                .in_set(StepSet::Reduce),
        );
        // On the device the norm is read only for the records that log it.
        app.add_systems(
            TrainStep,
            gpu_read_grad_norm
                .run_if(resource_exists::<GradClip>.and_then(on_cuda))
                .run_if(at_log_interval)
                .in_set(StepSet::Log)
                .before(emit_train_record),
        );
    }
}
