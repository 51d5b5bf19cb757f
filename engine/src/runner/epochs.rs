//! The epoch loop, the default: every epoch is one pass over the training data, in a fresh seeded order.

use ecstrain_components::{Clock, RunTimer};
use ecstrain_systems::sets::*;

use super::{begin, finish, finish_epoch, step};
use crate::app::App;
use crate::error::EngineError;

/// Drives the schedules until the epochs are done or a stop is requested.
pub fn run_epochs(app: &mut App) -> Result<(), EngineError> {
    let settings = begin(app);
    let first = app.world.resource::<Clock>().epoch;
    for epoch in first..settings.epochs {
        {
            let mut c = app.world.resource_mut::<Clock>();
            c.epoch = epoch;
            c.data_epoch = epoch;
            c.batch_in_epoch = 0;
        }
        app.run(DataEpochStart);
        app.run(EpochStart);
        let batches = app.world.resource::<Clock>().batches_per_epoch;
        let t0 = std::time::Instant::now();
        for _ in 0..batches {
            step(app)?;
        }
        app.world.resource_mut::<RunTimer>().train_seconds += t0.elapsed().as_secs_f64();
        if finish_epoch(app, epoch, &settings)? {
            break;
        }
    }
    finish(app)
}
