//! Exponential moving average of the model weights (Ultralytics' ModelEMA), as ECS data: a marker on the
//! parameter entities it tracks and one resource holding the averages in arenas laid out like the model's.

use bevy_ecs::prelude::*;

use crate::Arena;

/// Marker: this parameter's moving average is kept in [`EmaWeights::params`] (at its [`ParamSlice`]
/// (crate::ParamSlice)). Parameters without it are copied as they are (remove it to exclude one).
#[derive(Component, Clone, Copy, Debug, Default)]
pub struct EmaShadow;

/// The moving averages. After each optimizer step `ema = d * ema + (1 - d) * value` with
/// `d = decay * (1 - exp(-updates / tau))`, over the parameters and the floating-point buffers (batch-norm
/// running statistics; counters are copied), exactly as Ultralytics' ModelEMA updates its `state_dict`.
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct EmaWeights {
    /// Averaged parameters, laid out as [`Params`](crate::Params).
    pub params: Arena,
    /// Averaged buffers, laid out as [`Buffers::arena`](crate::Buffers).
    pub buffers: Arena,
    /// Updates so far (drives the decay ramp; saved in checkpoints).
    pub updates: u64,
    /// Asymptotic decay (Ultralytics: 0.9999).
    pub decay: f64,
    /// Ramp length in updates (Ultralytics: 2000).
    pub tau: f64,
    /// True while the averages are swapped into [`Params`](crate::Params) / [`Buffers`](crate::Buffers)
    /// for a validation pass; [`params`](Self::params) then holds the training weights.
    pub swapped: bool,
}

impl EmaWeights {
    /// The decay of update number `updates` (1-based).
    pub fn decay_at(&self, updates: u64) -> f64 {
        self.decay * (1.0 - (-(updates as f64) / self.tau).exp())
    }
}
