//! Learning-rate schedules: closed-form formulas for what is in effect at each optimizer step.
//!
//! Plain functions of the step number (no ECS, no state), so any step's values can be computed directly,
//! e.g. after resuming from a checkpoint, instead of replaying torch's recursive `scheduler.step()` updates.
//! One file per family: `torch_like` (the `torch.optim.lr_scheduler` classes, with an optional linear
//! warm-up), `one_cycle` (torch `OneCycleLR`, which also cycles momentum), `lavis` (LAVIS's epoch-based
//! warm-up + cosine / step), `ultralytics` (the `lrf` lambdas with the bias-lr and momentum warm-up).

pub mod lavis;
pub mod one_cycle;
pub mod torch_like;
pub mod ultralytics;

pub mod systems;

#[cfg(test)]
mod reference_tests;

pub use lavis::{LavisDecay, LavisSchedule};
pub use one_cycle::OneCycle;
pub use torch_like::{LrSchedule, LrScheduler, Warmup};
pub use ultralytics::{YoloLambda, YoloSchedule, YoloVariant};

/// What a schedule sets for one optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepValues {
    /// Learning rate of every parameter but biases.
    pub lr: f64,
    /// Learning rate of bias parameters (differs from `lr` only during an Ultralytics warm-up).
    pub bias_lr: f64,
    /// Momentum (SGD) / beta1 (Adam family) for the step, or `None` to leave the configured one unchanged.
    pub momentum: Option<f64>,
}

impl StepValues {
    /// One lr for every parameter, momentum unchanged.
    pub fn uniform(lr: f64) -> Self {
        Self { lr, bias_lr: lr, momentum: None }
    }
}

/// A run's schedule: one of the families above.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// A torch-like factor schedule (constant, linear, cosine, exponential, polynomial, step, multistep,
    /// cosine with warm restarts), optionally after a linear warm-up.
    Torch(LrScheduler),
    /// torch `OneCycleLR`, lr and momentum.
    OneCycle(OneCycle),
    /// LAVIS `linear_warmup_cosine_lr` / `linear_warmup_step_lr`.
    Lavis(LavisSchedule),
    /// Ultralytics' lambda with its bias / momentum warm-up.
    Ultralytics(YoloSchedule),
}

impl Schedule {
    /// The values in effect for optimizer step `step` (0-based).
    pub fn at(&self, step: u64) -> StepValues {
        match self {
            Schedule::Torch(s) => StepValues::uniform(s.lr_at(step)),
            Schedule::OneCycle(s) => s.at(step),
            Schedule::Lavis(s) => StepValues::uniform(s.lr_at(step)),
            Schedule::Ultralytics(s) => s.at(step),
        }
    }

    /// Whether the schedule sets momentum (at some step), so it is worth logging.
    pub fn drives_momentum(&self) -> bool {
        match self {
            Schedule::OneCycle(_) => true,
            Schedule::Ultralytics(s) => s.ramp_momentum && s.warmup().is_some(),
            Schedule::Torch(_) | Schedule::Lavis(_) => false,
        }
    }

    /// Whether biases get their own lr (at some step), so it is worth logging.
    pub fn separate_bias_lr(&self) -> bool {
        matches!(self, Schedule::Ultralytics(s) if s.warmup().is_some())
    }
}

impl From<LrScheduler> for Schedule {
    fn from(s: LrScheduler) -> Self {
        Schedule::Torch(s)
    }
}
