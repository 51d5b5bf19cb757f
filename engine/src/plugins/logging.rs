//! Logger plugins: `metrics.jsonl`, the terminal, and `summary.json`.

use bevy_ecs::prelude::*;
use ecstrain_components::RunInfo;
use ecstrain_systems::logging::console::{console_epoch_start, console_print, console_tick, Console};
use ecstrain_systems::logging::jsonl::{write_jsonl, JsonlLog};
use ecstrain_systems::logging::summary::write_summary;
use ecstrain_systems::parallel::is_writer;
use ecstrain_systems::sets::*;

use crate::app::{App, Plugin};

/// Appends every metric record to `metrics.jsonl` in the run directory (rank 0 only: other ranks of a
/// data-parallel run have no run directory and no log file).
pub struct JsonlLogPlugin;

impl Plugin for JsonlLogPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(Flush, write_jsonl.run_if(resource_exists::<JsonlLog>));
    }
}

/// Progress bar on a terminal, plain lines when headless; rank 0 only.
pub struct ConsolePlugin;

impl Plugin for ConsolePlugin {
    fn build(&self, app: &mut App) {
        app.world.init_resource::<Console>();
        app.add_systems(EpochStart, console_epoch_start.run_if(is_writer));
        app.add_systems(TrainStep, console_tick.in_set(StepSet::Log));
        app.add_systems(Flush, console_print.run_if(is_writer));
    }
}

/// `summary.json` and the final terminal lines.
pub struct SummaryPlugin;

impl Plugin for SummaryPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(RunEnd, write_summary.run_if(resource_exists::<RunInfo>));
    }
}
