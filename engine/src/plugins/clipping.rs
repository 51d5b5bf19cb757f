//! Gradient clipping (`run.clip_grad_value`, `run.clip_grad_norm`): a Reduce-stage system that runs when the
//! assembly inserted a [`GradClip`] resource, on accumulation boundaries.

use bevy_ecs::prelude::*;
use ecstrain_systems::device::systems::gpu_clip_gradients;
use ecstrain_systems::device::{on_cpu, on_cuda};
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
    }
}
