//! Ultralytics' (YOLOv5 / YOLOv8+) schedule: a per-epoch `LambdaLR` lambda (`lrf` linear or cosine) after a
//! per-iteration warm-up that ramps the weights' lr up from 0, the biases' lr down from `warmup_bias_lr`, and
//! SGD's momentum up from `warmup_momentum`, all with `np.interp` towards the epoch's target.
//!
//! Two versions exist, and they differ in more than the warm-up length (see [`YoloVariant`]). Ultralytics'
//! iteration index `ni` is the optimizer step here and `nb` the optimizer steps per epoch; with gradient
//! accumulation Ultralytics still counts micro-batches (and ramps the accumulation itself during warm-up),
//! which this engine, with a fixed accumulation, does not model: the warm-up keeps its length in epochs.

use std::f64::consts::PI;

use super::StepValues;

/// The lr lambda `lf(epoch)`, a factor of `lr0` reaching `lrf` at the last epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YoloLambda {
    /// `max(1 - x / epochs, 0) * (1 - lrf) + lrf` (Ultralytics' default).
    Linear,
    /// `max((1 - cos(x * pi / epochs)) / 2, 0) * (lrf - 1) + 1` (Ultralytics `cos_lr: true`, `one_cycle`).
    Cos,
}

/// Which Ultralytics trainer to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YoloVariant {
    /// YOLOv5 `train.py` / Ultralytics 8.0.x: `nw = max(round(warmup_epochs * nb), 100)` (at least 100
    /// iterations), warm-up while `ni <= nw`, scheduler stepped at the end of each epoch, so after the warm-up
    /// epoch `e` runs at `lr0 * lf(e - 1)`.
    Legacy,
    /// Ultralytics main (the default): `nw = round(min(warmup_epochs, epochs - 1) * nb)`, warm-up while
    /// `ni < nw`, scheduler stepped at the start of each epoch, so epoch `e` runs at `lr0 * lf(e)`; momentum
    /// keeps the `ni = nw - 1` warm-up value afterwards.
    Current,
}

/// The Ultralytics schedule of one run, indexed by optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YoloSchedule {
    /// Initial lr (every group's `initial_lr`).
    pub lr0: f64,
    /// Final lr factor of the lambda.
    pub lrf: f64,
    /// Epochs of the run (the lambda's length).
    pub epochs: u64,
    /// Optimizer steps per epoch (Ultralytics `nb`).
    pub steps_per_epoch: u64,
    /// Warm-up length in epochs (0: none).
    pub warmup_epochs: f64,
    /// Bias lr at step 0 of the warm-up.
    pub warmup_bias_lr: f64,
    /// Momentum at step 0 of the warm-up.
    pub warmup_momentum: f64,
    /// Momentum the warm-up ramps to (`run.momentum`).
    pub momentum: f64,
    /// Whether the warm-up drives momentum: Ultralytics ramps only param groups with a `momentum` key (SGD),
    /// so Adam's beta1 stays at `momentum`.
    pub ramp_momentum: bool,
    /// The lr lambda.
    pub lambda: YoloLambda,
    /// The trainer version.
    pub variant: YoloVariant,
}

/// `np.interp(x, [0, end], [start, stop])` for `0 <= x <= end`, with numpy's arithmetic (exact endpoints).
fn interp(x: u64, end: u64, start: f64, stop: f64) -> f64 {
    if x >= end {
        stop
    } else {
        (stop - start) / end as f64 * x as f64 + start
    }
}

/// Python's `round` (ties to even) of a non-negative number, as an iteration count.
fn py_round(x: f64) -> u64 {
    x.round_ties_even().max(0.0) as u64
}

impl YoloSchedule {
    /// `lf(x)`, the lambda's factor of `lr0` at epoch `x`.
    pub fn lf(&self, x: u64) -> f64 {
        let (x, epochs) = (x as f64, self.epochs as f64);
        match self.lambda {
            YoloLambda::Linear => (1.0 - x / epochs).max(0.0) * (1.0 - self.lrf) + self.lrf,
            YoloLambda::Cos => ((1.0 - (x * PI / epochs).cos()) / 2.0).max(0.0) * (self.lrf - 1.0) + 1.0,
        }
    }

    /// `(nw, last)`: the warm-up's interpolation length and its last iteration, or `None` without warm-up.
    pub fn warmup(&self) -> Option<(u64, u64)> {
        if self.warmup_epochs <= 0.0 {
            return None;
        }
        let nb = self.steps_per_epoch as f64;
        match self.variant {
            YoloVariant::Legacy => {
                let nw = py_round(self.warmup_epochs * nb).max(100);
                Some((nw, nw))
            }
            YoloVariant::Current => {
                let nw = py_round(self.warmup_epochs.min(self.epochs.saturating_sub(1) as f64) * nb);
                (nw > 0).then(|| (nw, nw - 1))
            }
        }
    }

    /// The warm-up's `(bias lr, other lr, momentum)` at iteration `ni` of epoch `epoch`.
    fn warm(&self, ni: u64, nw: u64, epoch: u64) -> (f64, f64, f64) {
        let target = self.lr0 * self.lf(epoch);
        (
            interp(ni, nw, self.warmup_bias_lr, target),
            interp(ni, nw, 0.0, target),
            interp(ni, nw, self.warmup_momentum, self.momentum),
        )
    }

    /// The lr of every group, the bias lr and the momentum (when the warm-up drives it) in effect for
    /// optimizer step `ni` (0-based).
    pub fn at(&self, ni: u64) -> StepValues {
        let nb = self.steps_per_epoch.max(1);
        let epoch = ni / nb;
        let warmup = self.warmup();
        let (bias_lr, lr, momentum) = match warmup {
            Some((nw, last)) if ni <= last => self.warm(ni, nw, epoch),
            // The rest of the epoch in which the warm-up ended keeps its last values: the scheduler is not
            // stepped again before the next epoch.
            Some((nw, last)) if epoch == last / nb => self.warm(last, nw, epoch),
            _ => {
                let x = match self.variant {
                    // The scheduler is built (lf(0)), rewound to last_epoch = -1 and stepped at the end of each
                    // epoch: epochs 0 and 1 both run at lf(0).
                    YoloVariant::Legacy => epoch.max(1) - 1,
                    YoloVariant::Current => epoch,
                };
                let lr = self.lr0 * self.lf(x);
                // The scheduler never touches momentum: it keeps the last warm-up value.
                let m = warmup.map_or(self.momentum, |(nw, last)| self.warm(last, nw, last / nb).2);
                (lr, lr, m)
            }
        };
        let momentum = (self.ramp_momentum && warmup.is_some()).then_some(momentum);
        StepValues { lr, bias_lr, momentum }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(variant: YoloVariant, warmup_epochs: f64, nb: u64) -> YoloSchedule {
        YoloSchedule {
            lr0: 0.01,
            lrf: 0.01,
            epochs: 10,
            steps_per_epoch: nb,
            warmup_epochs,
            warmup_bias_lr: 0.1,
            warmup_momentum: 0.8,
            momentum: 0.937,
            ramp_momentum: true,
            lambda: YoloLambda::Linear,
            variant,
        }
    }

    #[test]
    fn warmup_lengths_follow_each_version() {
        assert_eq!(schedule(YoloVariant::Legacy, 3.0, 50).warmup(), Some((150, 150)));
        assert_eq!(schedule(YoloVariant::Legacy, 3.0, 20).warmup(), Some((100, 100)));
        assert_eq!(schedule(YoloVariant::Current, 3.0, 20).warmup(), Some((60, 59)));
        // Python rounds ties to even: 0.5 * 5 = 2.5 -> 2.
        assert_eq!(schedule(YoloVariant::Current, 0.5, 5).warmup(), Some((2, 1)));
        // Capped at epochs - 1.
        assert_eq!(schedule(YoloVariant::Current, 30.0, 10).warmup(), Some((90, 89)));
        assert_eq!(schedule(YoloVariant::Legacy, 0.0, 50).warmup(), None);
        assert_eq!(schedule(YoloVariant::Current, 0.0, 50).warmup(), None);
    }

    #[test]
    fn without_warmup_momentum_is_left_alone_and_epochs_follow_the_lambda() {
        let s = schedule(YoloVariant::Current, 0.0, 10);
        let v = s.at(25);
        assert_eq!(v.momentum, None);
        assert_eq!(v.lr, 0.01 * s.lf(2));
        assert_eq!(v.bias_lr, v.lr);
        let legacy = schedule(YoloVariant::Legacy, 0.0, 10);
        assert_eq!(legacy.at(5).lr, 0.01);
        assert_eq!(legacy.at(15).lr, 0.01);
        assert_eq!(legacy.at(25).lr, 0.01 * s.lf(1));
    }

    #[test]
    fn a_warmup_ending_mid_epoch_holds_its_last_value_until_the_epoch_ends() {
        // Current, 1.5 epochs of 10 steps: nw = 15, last warm-up step 14 in epoch 1.
        let s = schedule(YoloVariant::Current, 1.5, 10);
        let last = s.at(14);
        assert_eq!(s.at(19), last);
        assert!(last.bias_lr > last.lr && last.lr < 0.01 * s.lf(1));
        let next = s.at(20);
        assert_eq!((next.lr, next.bias_lr), (0.01 * s.lf(2), 0.01 * s.lf(2)));
        assert_eq!(next.momentum, last.momentum);
        // Adam: the lr warm-up still runs, beta1 is not driven.
        let adam = YoloSchedule { ramp_momentum: false, ..s };
        assert_eq!(adam.at(3).momentum, None);
        assert_eq!(adam.at(3).lr, s.at(3).lr);
    }
}
