//! Metric meters and the metric events systems emit for loggers.

use std::collections::BTreeMap;

use bevy_ecs::prelude::*;

/// A running mean weighted by sample count.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Meter {
    /// Weighted sum of values.
    pub sum: f64,
    /// Total weight (samples).
    pub count: f64,
}

impl Meter {
    /// Adds a value observed over `weight` samples.
    pub fn add(&mut self, value: f64, weight: f64) {
        self.sum += value * weight;
        self.count += weight;
    }

    /// The mean so far (NaN when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0.0 {
            f64::NAN
        } else {
            self.sum / self.count
        }
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        *self = Meter::default();
    }
}

/// Meters of the run: `train` accumulates over the current epoch, `val` over the current validation pass.
/// Keys are metric names (`loss`, `accuracy`, `top5_accuracy`, ...).
#[derive(Resource, Clone, Debug, Default)]
pub struct Metrics {
    /// Training meters for the current epoch.
    pub train: BTreeMap<String, Meter>,
    /// Validation meters for the current pass.
    pub val: BTreeMap<String, Meter>,
    /// Loss of the last training micro-batch.
    pub last_loss: f64,
    /// Latest completed validation results (metric -> value).
    pub last_val: BTreeMap<String, f64>,
}

impl Metrics {
    /// Adds to a training meter, creating it the first time.
    pub fn add_train(&mut self, name: &str, value: f64, weight: f64) {
        match self.train.get_mut(name) {
            Some(m) => m.add(value, weight),
            None => {
                let mut m = Meter::default();
                m.add(value, weight);
                self.train.insert(name.to_string(), m);
            }
        }
    }

    /// Adds to a validation meter, creating it the first time.
    pub fn add_val(&mut self, name: &str, value: f64, weight: f64) {
        match self.val.get_mut(name) {
            Some(m) => m.add(value, weight),
            None => {
                let mut m = Meter::default();
                m.add(value, weight);
                self.val.insert(name.to_string(), m);
            }
        }
    }
}

/// One record for loggers (metrics.jsonl, the progress bar, later TensorBoard): written by the systems
/// that produce numbers, read by every logger plugin.
#[derive(Message, Clone, Debug, PartialEq)]
pub struct MetricEvent {
    /// `train`, `val`, `test` or `epoch`.
    pub split: String,
    /// Optimizer step at the time.
    pub step: u64,
    /// Epoch (0-based) at the time.
    pub epoch: u64,
    /// Name -> value.
    pub values: BTreeMap<String, f64>,
}
