//! The iteration loop (`run.max_iters`, as LAVIS's RunnerIters): inner epochs of `iters_per_inner_epoch`
//! optimizer steps (the last one shorter when they do not divide `max_iters`), each followed by what follows an
//! epoch (validation, checkpoints, early stopping, the epoch record). The training data wraps on its own: every
//! pass over it gets a fresh seeded order (`Clock::data_epoch`). A pass's last micro-batch still closes the
//! accumulation window, as in an epoch run, so with `iters_per_inner_epoch` equal to the steps of one pass the
//! two loops train identically. A stop (signal, time limit) between optimizer steps checkpoints the place
//! in the inner epoch; resuming continues there.

use ecstrain_components::{Clock, IterPlan, RunTimer};
use ecstrain_systems::sets::*;

use super::stop::{at_step_boundary, requested_stop, stop_run};
use super::{begin, finish, finish_epoch, step};
use crate::app::App;
use crate::error::EngineError;

/// Drives the schedules until `plan.max_iters` optimizer steps are done or a stop is requested.
pub fn run_iters(app: &mut App, plan: IterPlan) -> Result<(), EngineError> {
    let settings = begin(app);
    // The loop resumes mid inner epoch from the clock alone.
    app.world.remove_resource::<crate::resume::MidEpochResume>();
    // A fresh run draws the order of its first pass; a resumed one redraws the order of the pass it stopped in
    // (unless it stopped at the end of one: the wrap below starts the next).
    if !data_pass_done(app) {
        app.run(DataEpochStart);
    }
    let first = app.world.resource::<Clock>().epoch;
    for epoch in first..plan.inner_epochs() {
        app.world.resource_mut::<Clock>().epoch = epoch;
        app.run(EpochStart);
        let end = plan.end_step(epoch);
        let t0 = std::time::Instant::now();
        while app.world.resource::<Clock>().step < end {
            if data_pass_done(app) {
                let mut c = app.world.resource_mut::<Clock>();
                c.data_epoch += 1;
                c.batch_in_epoch = 0;
                app.run(DataEpochStart);
            }
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
        if epoch + 1 < plan.inner_epochs() {
            if let Some(stop) = requested_stop(app) {
                return stop_run(app, stop, false);
            }
        }
    }
    finish(app)
}

/// True when every micro-batch of the current pass over the data has been trained on.
fn data_pass_done(app: &App) -> bool {
    let c = app.world.resource::<Clock>();
    c.batch_in_epoch >= c.batches_per_epoch
}
