//! The current batch and the train/eval mode.

use bevy_ecs::prelude::*;

/// Targets of the current batch, as the task needs them.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Class indices, one per sample.
    Classes(Vec<i64>),
    /// Dense targets, `target_len` values per sample (regression, reconstruction, embeddings).
    Dense {
        /// Values, `[batch, target_len]` row-major.
        values: Vec<f32>,
        /// Values per sample.
        target_len: usize,
    },
}

/// One extra per-sample array of a batch (a dataset's `extra` files: auxiliary targets, weights, masks), as
/// f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtraArray {
    /// The name the dataset gave it (`datasets.<name>.train.extra.<name>`).
    pub name: String,
    /// Values per sample.
    pub len: usize,
    /// Values, `[capacity, len]` row-major; the batch's first `size` rows are valid.
    pub values: Vec<f32>,
}

/// The extra per-sample arrays of a batch, in the order of the dataset's `extra_specs`. Empty for datasets
/// without any; allocated once for the batch capacity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extras(pub Vec<ExtraArray>);

impl Extras {
    /// Buffers for `specs` (`(name, values per sample)`) with room for `capacity` samples.
    pub fn with_capacity(specs: &[(String, usize)], capacity: usize) -> Extras {
        Extras(
            specs
                .iter()
                .map(|(name, len)| ExtraArray { name: name.clone(), len: *len, values: vec![0.0; capacity * len] })
                .collect(),
        )
    }

    /// The array called `name`, if the dataset has one.
    pub fn get(&self, name: &str) -> Option<&ExtraArray> {
        self.0.iter().find(|a| a.name == name)
    }
}

/// The batch being processed. Buffers are allocated once for the largest batch and reused: `size` says how
/// many rows are valid (the last batch of an epoch may be smaller).
#[derive(Resource, Clone, Debug)]
pub struct Batch {
    /// Inputs, `[capacity, input_len]` row-major; the first `size` rows are valid.
    pub inputs: Vec<f32>,
    /// Elements per sample of the input.
    pub input_len: usize,
    /// Targets for the valid rows.
    pub targets: Targets,
    /// Valid rows.
    pub size: usize,
    /// Dataset indices of the valid rows (for debugging, augmentation seeds and data-order checks).
    pub indices: Vec<usize>,
    /// Extra per-sample arrays, gathered for the valid rows (empty unless the dataset has some).
    pub extras: Extras,
}

impl Batch {
    /// An empty batch with room for `capacity` samples of `input_len` elements.
    pub fn with_capacity(capacity: usize, input_len: usize, targets: Targets) -> Batch {
        Batch {
            inputs: vec![0.0; capacity * input_len],
            input_len,
            targets,
            size: 0,
            indices: Vec::with_capacity(capacity),
            extras: Extras::default(),
        }
    }

    /// The valid input rows.
    pub fn valid_inputs(&self) -> &[f32] {
        &self.inputs[..self.size * self.input_len]
    }
}

/// Whether the graph runs in training mode (dropout active, gradients computed) or evaluation mode.
#[derive(Resource, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Training.
    #[default]
    Train,
    /// Evaluation (validation, test).
    Eval,
}
