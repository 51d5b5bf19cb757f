//! Learning-rate schedules: closed-form formulas for the lr in effect at each optimizer step.
//!
//! Plain functions of the step number (no ECS, no state), so the lr of any step can be computed directly,
//! e.g. after resuming from a checkpoint, instead of replaying torch's recursive `scheduler.step()` updates.

pub mod lr;

pub use lr::{LrSchedule, LrScheduler, Warmup};

pub mod systems;
