//! The Schedule stage: advance the clock after a micro-batch, then set the learning rate for the next step.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Clock, LearningRate};

use super::lr::LrScheduler;

/// The run's learning-rate schedule.
#[derive(Resource, Clone, Debug)]
pub struct Scheduler(pub LrScheduler);

/// Schedule: counts the micro-batch (and the optimizer step when it ended a window).
pub fn advance_clock(mut clock: ResMut<Clock>, batch: Res<Batch>) {
    if clock.at_accumulation_boundary() {
        clock.step += 1;
    }
    clock.micro_step += 1;
    clock.batch_in_epoch += 1;
    clock.samples_seen += batch.size as u64;
}

/// Schedule (and run start): the learning rate for optimizer step `clock.step`.
pub fn update_lr(clock: Res<Clock>, scheduler: Res<Scheduler>, mut lr: ResMut<LearningRate>) {
    lr.lr = scheduler.0.lr_at(clock.step);
    lr.bias_lr = lr.lr;
}
