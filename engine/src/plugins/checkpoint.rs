//! Checkpointing: last after every epoch, best when the fitness improves, numbered every `save_period`.

use bevy_ecs::prelude::*;
use ecstrain_components::RunInfo;
use ecstrain_systems::checkpoint::{save_best, save_last, save_periodic};
use ecstrain_systems::logging::emit::emit_epoch_record;
use ecstrain_systems::sets::*;

use crate::app::{App, Plugin};

/// See the module docs.
pub struct CheckpointPlugin;

impl Plugin for CheckpointPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(ValidationEnd, save_best.in_set(ValidationEndSet::Checkpoint));
        // Only a process with a run directory (rank 0 of a data-parallel run) writes.
        app.add_systems(
            EpochEnd,
            (save_last, save_periodic).run_if(resource_exists::<RunInfo>).after(emit_epoch_record),
        );
    }
}
