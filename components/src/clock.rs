//! Training clock and learning rate resources.

use bevy_ecs::prelude::*;
use serde::{Deserialize, Serialize};

/// Where the run is. Advanced by the runner and the optimizer systems; saved in checkpoints.
#[derive(Resource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Clock {
    /// Current epoch, 0-based: the unit of validation, checkpoints and records (an inner epoch of an
    /// iteration-based run).
    pub epoch: u64,
    /// Current pass over the training data, 0-based; its number seeds the data order. Equal to `epoch` in
    /// epoch-based runs; an iteration-based run wraps the data independently of its inner epochs. (Absent
    /// from older checkpoints, hence the serde default.)
    #[serde(default)]
    pub data_epoch: u64,
    /// Micro-batch index inside the current pass over the data, 0-based.
    pub batch_in_epoch: u64,
    /// Micro-batches processed since the start of the run (forward + backward passes).
    pub micro_step: u64,
    /// Optimizer steps taken since the start of the run.
    pub step: u64,
    /// Training samples seen since the start of the run.
    pub samples_seen: u64,
    /// Micro-batches per pass over the training data (known once the loader is built).
    pub batches_per_epoch: u64,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub accumulate: u64,
}

impl Clock {
    /// True when the micro-batch just processed completes an accumulation window (or ends the pass over the
    /// data), so the optimizer should step.
    pub fn at_accumulation_boundary(&self) -> bool {
        let a = self.accumulate.max(1);
        (self.batch_in_epoch + 1).is_multiple_of(a) || self.batch_in_epoch + 1 == self.batches_per_epoch
    }
}

/// The learning rate in effect for the next optimizer step (before any per-parameter [`LrScale`](crate::LrScale)),
/// and the momentum / beta1 that schedules may drive.
#[derive(Resource, Clone, Copy, Debug, PartialEq)]
pub struct LearningRate {
    /// Base learning rate for this step.
    pub lr: f64,
    /// Learning rate of [`Bias`](crate::Bias) parameters: equal to `lr` except during an Ultralytics-style
    /// warm-up, which ramps biases down from `warmup_bias_lr` while the other groups ramp up from 0.
    pub bias_lr: f64,
    /// Momentum (SGD) or beta1 (Adam family) for this step.
    pub momentum: f64,
}

impl LearningRate {
    /// One learning rate for every group, and `momentum`.
    pub fn uniform(lr: f64, momentum: f64) -> Self {
        Self { lr, bias_lr: lr, momentum }
    }

    /// The learning rate of one parameter: `bias_lr` for biases, else `lr`, times its [`LrScale`](crate::LrScale).
    pub fn for_param(&self, bias: bool, scale: Option<&crate::LrScale>) -> f64 {
        (if bias { self.bias_lr } else { self.lr }) * scale.map_or(1.0, |s| s.0)
    }
}
