//! Mixed-precision state: the dynamic loss scale (torch's `GradScaler`), as a resource saved in checkpoints.

use bevy_ecs::prelude::*;

/// Which reduced precision `run.amp` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AmpMode {
    /// Everything in f32.
    Off,
    /// bf16 autocast: f32's exponent range, so no loss scaling.
    Bf16,
    /// f16 autocast with dynamic loss scaling (its range is too narrow for small gradients).
    F16,
}

/// torch.cuda.amp.GradScaler's state machine: the loss gradient is multiplied by `scale`; at each optimizer
/// step the gradients are divided by it and checked; a non-finite one skips the step and multiplies `scale` by
/// `backoff`; `growth_interval` finite steps in a row multiply it by `growth`.
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct LossScaler {
    /// Current scale (torch default 2^16).
    pub scale: f64,
    /// Factor after `growth_interval` good steps (2).
    pub growth: f64,
    /// Factor after a step with inf / NaN gradients (0.5).
    pub backoff: f64,
    /// Good steps between two growths (2000).
    pub growth_interval: u64,
    /// Good steps since the last growth or backoff (torch's `_growth_tracker`).
    pub good_steps: u64,
    /// The current accumulation window produced a non-finite gradient: its optimizer step is skipped.
    pub skip_step: bool,
    /// Optimizer steps skipped so far.
    pub skipped: u64,
}

impl LossScaler {
    /// torch's update after one optimizer step whose unscaled gradients were all finite (or not).
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps == self.growth_interval {
                self.scale *= self.growth;
                self.good_steps = 0;
            }
        } else {
            self.scale *= self.backoff;
            self.good_steps = 0;
            self.skipped += 1;
        }
        self.skip_step = !finite;
    }
}
