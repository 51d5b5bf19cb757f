//! Model EMA (`run.ema`), as Ultralytics' ModelEMA: the averages are updated after every optimizer step;
//! validation, the best checkpoint and early stopping see the averaged weights. Active when the assembly
//! inserted an [`EmaWeights`] resource. On CUDA the update runs on the device (the averages live there) and
//! the device arenas trade places beside the host ones.

use bevy_ecs::prelude::*;
use ecstrain_components::EmaWeights;
use ecstrain_systems::device::ema::{gpu_swap_ema, gpu_update_ema};
use ecstrain_systems::device::{on_cpu, on_cuda};
use ecstrain_systems::optim::at_accumulation_boundary;
use ecstrain_systems::optim::ema::{swap_ema, update_ema};
use ecstrain_systems::schedule::systems::advance_clock;
use ecstrain_systems::sets::*;

use crate::app::{App, Plugin};

/// See the module docs.
pub struct EmaPlugin;

impl Plugin for EmaPlugin {
    fn build(&self, app: &mut App) {
        let on = resource_exists::<EmaWeights>;
        // After the optimizer, before the clock moves on (the boundary condition reads the clock).
        app.add_systems(
            TrainStep,
            (update_ema.run_if(on_cpu), gpu_update_ema.run_if(on_cuda))
                .run_if(on.and_then(at_accumulation_boundary))
                .in_set(StepSet::Schedule)
                .before(advance_clock),
        );
        app.add_systems(ValidationStart, (swap_ema, gpu_swap_ema.run_if(on_cuda)).run_if(on));
        // Back to the training weights once the pass has been scored and the best checkpoint written.
        app.add_systems(
            ValidationEnd,
            (swap_ema, gpu_swap_ema.run_if(on_cuda)).run_if(on).after(ValidationEndSet::Checkpoint),
        );
    }
}
