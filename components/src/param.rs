//! Components of parameter entities.
//!
//! Each trainable tensor is one entity: a [`ParamInfo`] (its PyTorch-style dotted name and shape), a
//! [`ParamSlice`] (where its numbers live in the parameter, gradient and optimizer-state arenas: the same
//! offset in each), and optional markers a plugin or the config can add ([`NoDecay`], [`Bias`], [`Frozen`], [`LrScale`]).

use bevy_ecs::prelude::*;

/// Name and shape of a parameter, e.g. `layers.0.weight` with shape `[256, 64]`.
#[derive(Component, Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Dotted path as PyTorch's `named_parameters()` would print it.
    pub name: String,
    /// Shape in PyTorch layout (a linear weight is `[out_features, in_features]`).
    pub shape: Vec<usize>,
}

/// Where a parameter lives: `offset..offset + len` in every arena (parameters, gradients, each optimizer state).
#[derive(Component, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSlice {
    /// First element in the arena.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl ParamSlice {
    /// The element range in an arena.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// Marker: no weight decay for this parameter (biases, norm weights and other 1-d parameters).
#[derive(Component, Clone, Copy, Debug, Default)]
pub struct NoDecay;

/// Marker: a bias vector (a parameter whose name ends in `bias`). Ultralytics' warm-up ramps biases from
/// `warmup_bias_lr` rather than from 0, so the optimizers give these [`LearningRate::bias_lr`](crate::LearningRate).
#[derive(Component, Clone, Copy, Debug, Default)]
pub struct Bias;

/// Marker: the optimizer leaves this parameter untouched.
#[derive(Component, Clone, Copy, Debug, Default)]
pub struct Frozen;

/// Multiplies the learning rate for this parameter (layer-wise decay, lower lr for a backbone, ...).
#[derive(Component, Clone, Copy, Debug)]
pub struct LrScale(pub f64);
