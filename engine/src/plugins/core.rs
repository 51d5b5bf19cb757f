//! The step pipeline itself: data loading, forward, backward, clock and learning rate, validation plumbing
//! and the training log records.

use bevy_ecs::prelude::*;
use ecstrain_components::{DataWait, MetricEvent, RunTimer};
use ecstrain_systems::data::loader::{load_train_batch, load_val_batch, shuffle_train};
use ecstrain_systems::device::on_cpu;
use ecstrain_systems::graph::systems::{backward_system, forward_system, ForwardReplaced};
use ecstrain_systems::logging::emit::{
    at_log_interval, emit_epoch_record, emit_train_record, summarize_validation, update_fitness,
};
use ecstrain_systems::optim::{at_accumulation_boundary, zero_grads};
use ecstrain_systems::schedule::systems::{advance_clock, update_lr};
use ecstrain_systems::sets::*;
use ecstrain_systems::tasks::outputs::{collect_outputs, CollectedOutputs};

use crate::app::{App, Plugin};

/// Load -> Forward -> Backward -> Schedule for training; Load -> Forward for validation (and the outputs kept
/// when [`CollectedOutputs`] is present); fitness tracking.
/// Tasks add the Loss stage, optimizers the Optimize stage.
pub struct CorePlugin;

fn start_epoch_timer(mut timer: ResMut<RunTimer>) {
    timer.epoch_start = std::time::Instant::now();
}

impl Plugin for CorePlugin {
    fn build(&self, app: &mut App) {
        app.world.init_resource::<Messages<MetricEvent>>();
        app.world.init_resource::<DataWait>();
        app.add_systems(RunStart, update_lr);
        app.add_systems(DataEpochStart, shuffle_train);
        app.add_systems(EpochStart, start_epoch_timer);
        app.add_systems(
            TrainStep,
            (
                load_train_batch.in_set(StepSet::Load),
                forward_system.run_if(on_cpu).in_set(StepSet::Forward),
                backward_system.run_if(on_cpu).in_set(StepSet::Backward),
                (zero_grads.run_if(at_accumulation_boundary).run_if(on_cpu), advance_clock, update_lr)
                    .chain()
                    .in_set(StepSet::Schedule),
                emit_train_record.run_if(at_log_interval).in_set(StepSet::Log),
            ),
        );
        app.add_systems(
            ValidationStep,
            (
                load_val_batch.in_set(StepSet::Load),
                forward_system.run_if(on_cpu).run_if(not(resource_exists::<ForwardReplaced>)).in_set(StepSet::Forward),
                // `engine predict` keeps the outputs (after the forward of either device).
                collect_outputs.run_if(resource_exists::<CollectedOutputs>).in_set(StepSet::Loss),
            ),
        );
        app.add_systems(
            ValidationEnd,
            (
                summarize_validation.in_set(ValidationEndSet::Summarize),
                update_fitness.in_set(ValidationEndSet::Fitness),
            ),
        );
        app.add_systems(EpochEnd, emit_epoch_record);
    }
}
