//! Mixed precision, the part that does not need a GPU: dynamic loss scaling (`run.amp: f16`), active when the
//! assembly inserted a [`LossScaler`]. The loss gradient is scaled before the backward; the gradients are
//! unscaled and checked before clipping and the optimizer, which skips windows with inf / NaN gradients.

use bevy_ecs::prelude::*;
use ecstrain_components::LossScaler;
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
                scale_loss_gradient.run_if(on).in_set(StepSet::Backward).before(backward_system),
                unscale_gradients
                    .run_if(on.and_then(at_accumulation_boundary))
                    .in_set(StepSet::Reduce)
                    .before(clip_gradients),
            ),
        );
    }
}
