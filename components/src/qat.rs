//! State of quantization-aware training (`run.qat`): the float master weights while the fake-quantized
//! copies are in the parameter arena.

use bevy_ecs::prelude::*;

use crate::ParamSlice;

/// The weights QAT fake-quantizes per output channel and the float masters behind them. While `swapped`,
/// [`Params`](crate::Params) holds the fake-quantized weights (forward, backward and validation see them) and
/// `master` the float parameters, which the optimizer updates with the straight-through gradient.
#[derive(Resource, Debug, Clone)]
pub struct QatWeights {
    /// The float values of the fake-quantized weights, at their arena offsets (an arena-sized buffer; only
    /// the weights' ranges are used).
    pub master: Vec<f32>,
    /// Each fake-quantized weight (linear `[out, in]`, conv2d `[oc, ic / groups, kh, kw]`) and its number of
    /// output channels.
    pub weights: Vec<(ParamSlice, usize)>,
    /// Per-channel scale scratch, as long as the widest weight's channel count.
    pub scales: Vec<f32>,
    /// Whether `Params` holds the fake-quantized weights now.
    pub swapped: bool,
}
