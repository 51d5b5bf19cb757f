//! Data parallelism across processes on the CPU (active when the assembly inserted a [`Comm`] of more than one
//! rank; the CUDA twins are in the CUDA plugin):
//! the gradient all-reduce on accumulation boundaries, before loss-scale unscaling and clipping: bucket by
//! bucket during the backward when the assembly inserted an [`OverlapReducer`] (`run.bucket_mb` > 0, the
//! default; the backward system drives it), otherwise in one call first in Reduce; rank 0's buffers broadcast
//! before each validation pass. The sampler's sharding is set by the
//! assembly, the metric reduction is done by the loggers, the agreement on stopping by the runner.

use bevy_ecs::prelude::*;
use ecstrain_systems::device::on_cpu;
use ecstrain_systems::optim::at_accumulation_boundary;
use ecstrain_systems::optim::clip::clip_gradients;
use ecstrain_systems::optim::ema::swap_ema;
use ecstrain_systems::optim::loss_scale::unscale_gradients;
use ecstrain_systems::parallel::{
    all_reduce_gradients, broadcast_buffers, is_data_parallel, OverlapReducer, ReduceTiming,
};
use ecstrain_systems::sets::*;

use crate::app::{App, Plugin};

/// See the module docs.
pub struct DataParallelPlugin;

impl Plugin for DataParallelPlugin {
    fn build(&self, app: &mut App) {
        app.world.init_resource::<ReduceTiming>();
        app.add_systems(
            TrainStep,
            all_reduce_gradients
                .run_if(is_data_parallel.and_then(at_accumulation_boundary))
                .run_if(on_cpu)
                // With an overlap reducer the backward system has averaged the gradients already.
                .run_if(not(resource_exists::<OverlapReducer>))
                .in_set(StepSet::Reduce)
                .before(unscale_gradients)
                .before(clip_gradients),
        );
        app.add_systems(ValidationStart, broadcast_buffers.run_if(is_data_parallel.and_then(on_cpu)).before(swap_ema));
    }
}
