//! The Schedule stage: advance the clock after a micro-batch, then set the learning rate for the next step.

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Clock, LearningRate};

use super::Schedule;

/// The run's schedule.
#[derive(Resource, Clone, Debug)]
pub struct Scheduler(pub Schedule);

/// Schedule: counts the micro-batch (and the optimizer step when it ended a window).
pub fn advance_clock(mut clock: ResMut<Clock>, batch: Res<Batch>) {
    if clock.at_accumulation_boundary() {
        clock.step += 1;
    }
    clock.micro_step += 1;
    clock.batch_in_epoch += 1;
    clock.samples_seen += batch.size as u64;
}

/// Schedule (and run start): the lr, bias lr and (if the schedule drives it) momentum for optimizer step
/// `clock.step`. A schedule that leaves momentum alone keeps the configured one.
pub fn update_lr(clock: Res<Clock>, scheduler: Res<Scheduler>, mut lr: ResMut<LearningRate>) {
    let v = scheduler.0.at(clock.step);
    lr.lr = v.lr;
    lr.bias_lr = v.bias_lr;
    if let Some(m) = v.momentum {
        lr.momentum = m;
    }
}
