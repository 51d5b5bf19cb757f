//! Schedule labels and system sets: the fixed, documented order of a run.
//!
//! A run executes these schedules (the runner in `ecstrain-engine` drives them):
//!
//! | schedule | when | what goes in |
//! |---|---|---|
//! | [`RunStart`] | once, before the first epoch | banners, initial logs |
//! | [`DataEpochStart`] | before each pass over the training data | data order (shuffle) |
//! | [`EpochStart`] | before each epoch | timers, progress bar |
//! | [`TrainStep`] | each micro-batch | the [`StepSet`] chain |
//! | [`EpochEnd`] | after each epoch's last step | epoch logs |
//! | [`ValidationStart`] | before a validation pass | swap in evaluation weights (EMA) |
//! | [`ValidationStep`] | each validation batch | load, forward, metrics |
//! | [`ValidationEnd`] | after a validation pass | metric summary, fitness, best/last checkpoints, early stop |
//! | [`RunEnd`] | once, at the end | summary, final checkpoint |
//! | [`Flush`] | after each of the above but the starts | loggers write what was emitted |
//!
//! Plugins put their systems into these sets; run conditions (accumulation boundary, log interval) gate them.

use bevy_ecs::schedule::{ScheduleLabel, SystemSet};

/// Runs once before training.
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunStart;
/// Runs before every pass over the training data: right before [`EpochStart`] in an epoch-based run, and
/// whenever the loader wraps in an iteration-based one (whose inner epochs are not passes over the data).
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct DataEpochStart;
/// Runs before every epoch (inner epoch of an iteration-based run).
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct EpochStart;
/// Runs once per training micro-batch.
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrainStep;
/// Runs after every epoch.
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct EpochEnd;
/// Runs before each validation pass (e.g. the EMA plugin swaps the averaged weights in).
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValidationStart;
/// Runs once per validation batch.
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValidationStep;
/// Runs after a validation pass.
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValidationEnd;
/// Runs once after training.
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RunEnd;
/// Runs after every [`TrainStep`], [`ValidationEnd`], [`EpochEnd`] and [`RunEnd`]: loggers consume the
/// [`MetricEvent`](ecstrain_components::MetricEvent)s written since the last flush (one reader per logger, so
/// no record is seen twice).
#[derive(ScheduleLabel, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flush;

/// The ordered stages of a training step (and, where they apply, of a validation step).
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepSet {
    /// Assemble the next batch into the [`Batch`](ecstrain_components::Batch) resource.
    Load,
    /// Transform the batch (augmentation, normalisation).
    Preprocess,
    /// Run the graph forward.
    Forward,
    /// Compute the task loss and the gradient of the graph output.
    Loss,
    /// Run the graph backward into the gradient arena.
    Backward,
    /// Combine gradients across processes (data parallelism); clipping goes after it.
    Reduce,
    /// Update parameters (only on accumulation boundaries).
    Optimize,
    /// Advance the clock and the learning rate.
    Schedule,
    /// Emit metric events and write logs.
    Log,
}

impl StepSet {
    /// Every stage in execution order.
    pub const ORDER: [StepSet; 9] = [
        StepSet::Load,
        StepSet::Preprocess,
        StepSet::Forward,
        StepSet::Loss,
        StepSet::Backward,
        StepSet::Reduce,
        StepSet::Optimize,
        StepSet::Schedule,
        StepSet::Log,
    ];
}

/// The stages of the end of a validation pass. `Checkpoint` and `Log` write into the run directory, so they run
/// only when there is one (a training run; not `engine eval`).
#[derive(SystemSet, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValidationEndSet {
    /// Turn meters into results (`Metrics::last_val`).
    Summarize,
    /// Compare with the best fitness; decide on early stopping.
    Fitness,
    /// Write checkpoints.
    Checkpoint,
    /// Emit logs.
    Log,
}
