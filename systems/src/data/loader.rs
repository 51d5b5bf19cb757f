//! Seeded per-epoch shuffling and batching over a [`Dataset`], and the systems that fill the batch.

use std::sync::Arc;

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Clock, RunFailure};
use ecstrain_kernels::rng::Rng;

use super::{DataError, Dataset, Pipeline};

/// Walks a dataset in batches; the order of an epoch is a pure function of (seed, epoch), so a resumed or
/// repeated run sees the same order.
pub struct Loader {
    pipeline: Arc<Pipeline>,
    epoch: u64,
    order: Vec<usize>,
    batch: usize,
    shuffle: bool,
    drop_last: bool,
    seed: u64,
}

impl Loader {
    /// A loader over `dataset` with batches of `batch` samples.
    pub fn new(pipeline: Arc<Pipeline>, batch: usize, shuffle: bool, drop_last: bool, seed: u64) -> Loader {
        let order = (0..pipeline.len()).collect();
        Loader { pipeline, epoch: 0, order, batch: batch.max(1), shuffle, drop_last, seed }
    }

    /// The pipeline (dataset and processors).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.order.len();
        if self.drop_last {
            n / self.batch
        } else {
            n.div_ceil(self.batch)
        }
    }

    /// Sets the sample order for `epoch` (a fresh permutation when shuffling; identity otherwise).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        for (i, o) in self.order.iter_mut().enumerate() {
            *o = i;
        }
        if self.shuffle {
            Rng::derive(self.seed, &[0x5A4F, epoch]).shuffle(&mut self.order);
        }
    }

    /// The sample order of the current epoch.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Fills `out` with batch `b` of the current epoch.
    pub fn fill(&self, b: usize, out: &mut Batch) -> Result<(), DataError> {
        let start = b * self.batch;
        let end = (start + self.batch).min(self.order.len());
        let idx = &self.order[start..end];
        out.indices.clear();
        out.indices.extend_from_slice(idx);
        out.size = idx.len();
        let len = out.input_len;
        self.pipeline.fill_rows(idx, self.epoch, &mut out.inputs[..idx.len() * len])?;
        self.pipeline.read_targets(idx, &mut out.targets);
        self.pipeline.read_extras(idx, &mut out.extras)
    }
}

/// The training split's loader.
#[derive(Resource)]
pub struct TrainLoader(pub Loader);

/// The validation split's loader and its position in the current pass.
#[derive(Resource)]
pub struct ValLoader {
    /// The loader (never shuffled).
    pub loader: Loader,
    /// Next batch of the current pass.
    pub cursor: usize,
}

/// DataEpochStart: draws the order of this pass over the data.
pub fn shuffle_train(clock: Res<Clock>, mut loader: ResMut<TrainLoader>) {
    loader.0.set_epoch(clock.data_epoch);
}

/// Load (training): assembles the clock's current batch.
pub fn load_train_batch(
    clock: Res<Clock>,
    loader: Res<TrainLoader>,
    mut batch: ResMut<Batch>,
    mut failure: ResMut<RunFailure>,
) {
    if let Err(m) = loader.0.fill(clock.batch_in_epoch as usize, &mut batch) {
        failure.0.get_or_insert(m);
    }
}

/// Load (validation): assembles the next validation batch.
pub fn load_val_batch(mut val: ResMut<ValLoader>, mut batch: ResMut<Batch>, mut failure: ResMut<RunFailure>) {
    let b = val.cursor;
    if let Err(m) = val.loader.fill(b, &mut batch) {
        failure.0.get_or_insert(m);
    }
    val.cursor += 1;
}
