//! Stopping a run between optimizer steps: a stop signal (SIGTERM, SIGINT, SIGUSR1) or the wall-clock
//! budget (`run.time_limit`). Checked after every micro-batch that completes an optimizer step (so no
//! accumulated gradient is lost); in a data-parallel run the ranks agree with one small all-reduce, so all
//! stop after the same step. The stop writes `last.safetensors` for that step (rank 0), runs RunEnd
//! (`summary.json` with the stop reason) and ends the run: exit 130 for a signal, 0 for the time limit.

use bevy_ecs::prelude::*;
use ecstrain_components::{Clock, RunInfo, RunSettings, RunTimer, StopRequest};
use ecstrain_systems::checkpoint::save_resume_point;
use ecstrain_systems::device::amp::{gpu_settle_loss_scale, DeviceScaler};
use ecstrain_systems::device::loss::{gpu_flush_train_loss, DeviceLoss};
use ecstrain_systems::device::state::GpuState;
use ecstrain_systems::device::systems::gpu_sync_down;
use ecstrain_systems::parallel::Comm;

use super::{check_failure, finish};
use crate::app::App;
use crate::error::EngineError;

/// Why a run stops before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A stop signal (its name) reached at least one rank.
    Signal(&'static str),
    /// The wall-clock budget is spent on at least one rank.
    TimeLimit,
}

/// True right after a micro-batch that completed an optimizer step (or ended the pass over the data).
pub fn at_step_boundary(app: &App) -> bool {
    let c = app.world.resource::<Clock>();
    c.batch_in_epoch.is_multiple_of(c.accumulate.max(1)) || c.batch_in_epoch >= c.batches_per_epoch
}

/// The stop every rank agrees on, if any. Collective in a data-parallel run: every rank calls it at the same
/// points.
pub fn requested_stop(app: &App) -> Option<Stop> {
    let signal = crate::signals::pending();
    let limit = app.world.resource::<RunSettings>().time_limit_s;
    let over_time = limit.is_some_and(|l| app.world.resource::<RunTimer>().start.elapsed().as_secs_f64() >= l);
    let comm = app.world.resource::<Comm>();
    if comm.0.world() == 1 {
        return signal.map(Stop::Signal).or(over_time.then_some(Stop::TimeLimit));
    }
    let mut flags = [f64::from(u8::from(signal.is_some())), f64::from(u8::from(over_time))];
    comm.0.all_reduce_sum_f64(&mut flags);
    if flags[0] > 0.0 {
        // A rank that got no signal itself reports the usual one: SLURM and mpirun forward SIGTERM.
        Some(Stop::Signal(signal.unwrap_or("SIGTERM")))
    } else if flags[1] > 0.0 {
        Some(Stop::TimeLimit)
    } else {
        None
    }
}

/// Ends the run at `stop`. With `checkpoint` (a stop mid-epoch) the writer saves `last.safetensors` at this
/// step first; at an epoch's end EpochEnd has just written it.
pub fn stop_run(app: &mut App, stop: Stop, checkpoint: bool) -> Result<(), EngineError> {
    let reason = match stop {
        Stop::Signal(name) => format!("signal {name}"),
        Stop::TimeLimit => "time_limit".to_string(),
    };
    app.world.resource_mut::<StopRequest>().reason = Some(reason.clone());
    let writer = app.world.contains_resource::<RunInfo>();
    if checkpoint && writer {
        // On CUDA the host arenas trail the device's mid-epoch: copy them down before they are saved.
        if app.world.contains_resource::<GpuState>() {
            app.world
                .run_system_cached(gpu_sync_down)
                .map_err(|e| EngineError::Run(format!("cannot copy the model state down: {e}")))?;
            check_failure(app)?;
        }
        // The checkpoint keeps the training meters: a device-side loss adds its pending values first.
        if app.world.contains_resource::<DeviceLoss>() {
            app.world
                .run_system_cached(gpu_flush_train_loss)
                .map_err(|e| EngineError::Run(format!("cannot read the training loss: {e}")))?;
            check_failure(app)?;
        }
        // And the f16 loss scale and optimizer step count, which the host learns a window late.
        if app.world.contains_resource::<DeviceScaler>() {
            app.world
                .run_system_cached(gpu_settle_loss_scale)
                .map_err(|e| EngineError::Run(format!("cannot read the loss scale: {e}")))?;
            check_failure(app)?;
        }
        app.world
            .run_system_cached(save_resume_point)
            .map_err(|e| EngineError::Run(format!("cannot write the resume checkpoint: {e}")))?;
        check_failure(app)?;
    }
    finish(app)?;
    let step = app.world.resource::<Clock>().step;
    match stop {
        Stop::Signal(name) => {
            let at = match app.world.get_resource::<RunInfo>() {
                Some(info) => format!(
                    ": {} (run.resume: auto continues it)",
                    info.dir.join("checkpoints/last.safetensors").display()
                ),
                None => String::new(),
            };
            Err(EngineError::Interrupted(format!("stopped by {name} after step {step}, checkpoint written{at}")))
        }
        Stop::TimeLimit => Ok(()),
    }
}
