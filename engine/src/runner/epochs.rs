//! The epoch loop, the default: every epoch is one pass over the training data, in a fresh seeded order. A
//! run resumed from a mid-epoch checkpoint continues its epoch at the saved batch.

use ecstrain_components::{Clock, RunTimer};
use ecstrain_systems::sets::*;

use super::stop::{at_step_boundary, requested_stop, stop_run};
use super::{begin, finish, finish_epoch, step};
use crate::app::App;
use crate::error::EngineError;
use crate::resume::MidEpochResume;

/// Drives the schedules until the epochs are done or a stop is requested.
pub fn run_epochs(app: &mut App) -> Result<(), EngineError> {
    let settings = begin(app);
    let first = app.world.resource::<Clock>().epoch;
    let mut resume_at = app.world.remove_resource::<MidEpochResume>().map(|m| m.0);
    for epoch in first..settings.epochs {
        let start = resume_at.take().unwrap_or(0);
        {
            let mut c = app.world.resource_mut::<Clock>();
            c.epoch = epoch;
            c.data_epoch = epoch;
            c.batch_in_epoch = start;
        }
        app.run(DataEpochStart);
        app.run(EpochStart);
        let batches = app.world.resource::<Clock>().batches_per_epoch;
        let t0 = std::time::Instant::now();
        for _ in start..batches {
            step(app)?;
            if at_step_boundary(app) {
                if let Some(stop) = requested_stop(app) {
                    app.world.resource_mut::<RunTimer>().train_seconds += t0.elapsed().as_secs_f64();
                    return stop_run(app, stop, true);
                }
            }
        }
        app.world.resource_mut::<RunTimer>().train_seconds += t0.elapsed().as_secs_f64();
        if finish_epoch(app, epoch, &settings)? {
            break;
        }
        // A stop that came during validation: EpochEnd has just written last.safetensors.
        if epoch + 1 < settings.epochs {
            if let Some(stop) = requested_stop(app) {
                return stop_run(app, stop, false);
            }
        }
    }
    finish(app)
}
