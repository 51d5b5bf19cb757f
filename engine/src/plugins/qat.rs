//! Quantization-aware training (`run.qat`), as a plugin: with [`QatWeights`] in the world (inserted by
//! assembly, which also put the activations' `FakeQuantize` nodes into the graph), the fake-quantized
//! weights are swapped in before each training forward and for each validation pass, and the float masters
//! back before the optimizer step and before validation is summarized (so checkpoints hold float weights).

use bevy_ecs::prelude::*;
use ecstrain_components::QatWeights;
use ecstrain_systems::qat::{fake_quantize_weights, restore_float_weights};
use ecstrain_systems::sets::{StepSet, TrainStep, ValidationEnd, ValidationEndSet, ValidationStart};

use crate::app::{App, Plugin};

/// Registers the weight swaps, gated on [`QatWeights`].
pub struct QatPlugin;

impl Plugin for QatPlugin {
    fn build(&self, app: &mut App) {
        let on = resource_exists::<QatWeights>;
        app.add_systems(
            TrainStep,
            (
                fake_quantize_weights.run_if(on).in_set(StepSet::Preprocess),
                restore_float_weights.run_if(on).in_set(StepSet::Reduce),
            ),
        );
        app.add_systems(ValidationStart, fake_quantize_weights.run_if(on));
        app.add_systems(ValidationEnd, restore_float_weights.run_if(on).before(ValidationEndSet::Summarize));
    }
}
