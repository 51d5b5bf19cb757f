//! Int8 inference: with an `Int8Model` in the world (inserted by `engine quantize`), validation runs the
//! quantized nodes with the int8 kernels; without one the plugin does nothing.

use bevy_ecs::prelude::*;
use ecstrain_deploy::quant::systems::int8_forward_system;
use ecstrain_deploy::quant::Int8Model;
use ecstrain_systems::sets::{StepSet, ValidationStep};

use crate::app::{App, Plugin};

/// Adds the int8 forward to the validation step, gated on the model being present.
pub struct Int8Plugin;

impl Plugin for Int8Plugin {
    fn build(&self, app: &mut App) {
        app.add_systems(
            ValidationStep,
            int8_forward_system.run_if(resource_exists::<Int8Model>).in_set(StepSet::Forward),
        );
    }
}
