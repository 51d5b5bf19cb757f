//! Logger plugins: `metrics.jsonl`, the terminal, `summary.json`, `results.csv`, TensorBoard event files and
//! PNG plots. The last three are switched by `run.results_csv`, `run.tensorboard` and `run.plots` (the
//! [`OutputSettings`](ecstrain_components::OutputSettings) resource); without a run directory they do nothing.

use bevy_ecs::prelude::*;
use ecstrain_components::RunInfo;
use ecstrain_systems::logging::console::{console_epoch_start, console_print, console_tick, Console};
use ecstrain_systems::logging::jsonl::{write_jsonl, JsonlLog};
use ecstrain_systems::logging::plots::{plot_at_checkpoint, plot_at_run_end, plots_enabled};
use ecstrain_systems::logging::profile_report::{profiling, write_profile};
use ecstrain_systems::logging::results_csv::{results_csv_enabled, write_results_csv, ResultsCsv};
use ecstrain_systems::logging::summary::write_summary;
use ecstrain_systems::logging::tensorboard::{tensorboard_enabled, write_tensorboard, TensorBoardLog};
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

/// `profile.txt` and the per-op-kind table after the summary (`run.profile`).
pub struct ProfilePlugin;

impl Plugin for ProfilePlugin {
    fn build(&self, app: &mut App) {
        let on = resource_exists::<RunInfo>.and_then(profiling);
        app.add_systems(RunEnd, write_profile.after(write_summary).run_if(on));
    }
}

/// `results.csv`: one row per epoch (`run.results_csv`, on by default).
pub struct ResultsCsvPlugin;

impl Plugin for ResultsCsvPlugin {
    fn build(&self, app: &mut App) {
        app.world.init_resource::<ResultsCsv>();
        app.add_systems(Flush, write_results_csv.run_if(results_csv_enabled));
    }
}

/// A TensorBoard event file of every metric record (`run.tensorboard`, on by default).
pub struct TensorBoardPlugin;

impl Plugin for TensorBoardPlugin {
    fn build(&self, app: &mut App) {
        app.world.init_resource::<TensorBoardLog>();
        app.add_systems(Flush, write_tensorboard.run_if(tensorboard_enabled));
    }
}

/// PNG plots at the end of the run, and after every epoch's checkpoint with `run.plots: true`.
pub struct PlotsPlugin;

impl Plugin for PlotsPlugin {
    fn build(&self, app: &mut App) {
        // The epoch plots read metrics.jsonl, so they come after its writer in the same Flush.
        app.add_systems(Flush, plot_at_checkpoint.after(write_jsonl).run_if(plots_enabled));
        app.add_systems(RunEnd, plot_at_run_end.run_if(plots_enabled));
    }
}
