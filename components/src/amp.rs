//! Mixed-precision state: the dynamic loss scale (torch's `GradScaler`), as a resource saved in checkpoints.

use bevy_ecs::prelude::*;
use ecstrain_kernels::optim::loss_scale::{update_scale, ScaleState, ScaleUpdate};

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
    /// torch's update after one optimizer step whose unscaled gradients were all finite (or not): the
    /// state machine of [`update_scale`], which the device runs too.
    pub fn update(&mut self, finite: bool) {
        let mut state = self.state();
        update_scale(&mut state, !finite, &self.rule());
        self.scale = state[0];
        self.good_steps = state[1] as u64;
        if !finite {
            self.skipped += 1;
        }
        self.skip_step = !finite;
    }

    /// `[scale, good_steps]`, the state the device keeps.
    pub fn state(&self) -> ScaleState {
        [self.scale, self.good_steps as f64]
    }

    /// How the scale moves.
    pub fn rule(&self) -> ScaleUpdate {
        ScaleUpdate { growth: self.growth, backoff: self.backoff, interval: self.growth_interval }
    }
}
