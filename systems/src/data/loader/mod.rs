//! The loader: seeded per-epoch order over a [`Pipeline`], sharded by (rank, world) ([`order`]), batches
//! assembled on the training thread or by a background producer that prefetches them ([`prefetch`]), and the
//! systems that fill the [`Batch`] resource and time how long each step waited for it.

pub mod order;
pub mod prefetch;

use std::sync::Arc;

use bevy_ecs::prelude::*;
use ecstrain_components::{Batch, Clock, DataWait, RunFailure, Shard};

use self::order::{EpochOrder, OrderSpec};
use self::prefetch::Prefetcher;
pub use self::prefetch::{loader_pool, LoaderPool};
use super::{DataError, Dataset, Pipeline};

/// How a loader walks its data: the order and batching, and whether the data epoch changes the batches at
/// all (a fixed order without random processors gives the same batches every pass, so all passes share the
/// key of epoch 0 and a prefetching validation loader runs straight into its next pass).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Walk {
    spec: OrderSpec,
    epoch_matters: bool,
    /// Whether batches carry their input rows (see [`Loader::without_inputs`]).
    inputs: bool,
}

impl Walk {
    /// The canonical data epoch of `epoch`.
    fn key(&self, epoch: u64) -> u64 {
        if self.epoch_matters {
            epoch
        } else {
            0
        }
    }

    /// The batch after (`epoch`, `b`), canonical.
    fn next(&self, epoch: u64, b: usize) -> (u64, usize) {
        let (e, b) = self.spec.next(epoch, b);
        (self.key(e), b)
    }
}

/// Fills `out` with batch `b` of `epoch` (`order` must be that epoch's): indices, rows (unless `inputs` is
/// false: then `out.inputs` is left as it is), targets.
pub(crate) fn fill_batch(
    pipeline: &Pipeline,
    order: &EpochOrder,
    spec: &OrderSpec,
    inputs: bool,
    epoch: u64,
    b: usize,
    out: &mut Batch,
) -> Result<(), DataError> {
    let idx = order.batch(spec, b);
    let len: usize = pipeline.sample_shape().iter().product();
    let need = idx.len() * len;
    if out.inputs.len() < need {
        // Only a buffer from outside (a `Batch` resource sized for another loader) can be short.
        out.inputs.resize(need, 0.0);
    }
    out.input_len = len;
    out.indices.clear();
    out.indices.extend_from_slice(idx);
    out.size = idx.len();
    if inputs {
        pipeline.fill_rows(idx, epoch, &mut out.inputs[..need])?;
    }
    pipeline.read_targets(idx, &mut out.targets);
    pipeline.read_extras(idx, &mut out.extras)
}

/// Walks a pipeline in batches. The order of an epoch is a pure function of (seed, epoch, shard), and every
/// batch of it a pure function of (seed, epoch, batch index), so a resumed, repeated or prefetched run sees
/// the same batches.
///
/// Without [`Loader::with_prefetch`] batches are assembled on the calling thread when asked for. With it a
/// background thread assembles them ahead into a bounded queue, on a dedicated rayon pool.
pub struct Loader {
    pipeline: Arc<Pipeline>,
    walk: Walk,
    /// The order of the epoch set last (the synchronous path and [`Loader::order`]).
    order: EpochOrder,
    prefetch: Option<Prefetcher>,
}

impl Loader {
    /// A loader over `pipeline` with batches of `batch` samples, rank 0 of 1, loading on the calling thread.
    pub fn new(pipeline: Arc<Pipeline>, batch: usize, shuffle: bool, drop_last: bool, seed: u64) -> Loader {
        let spec =
            OrderSpec { len: pipeline.len(), batch: batch.max(1), shuffle, drop_last, seed, shard: Shard::default() };
        let walk = Walk { spec, epoch_matters: shuffle || pipeline.is_random(), inputs: true };
        Loader { order: EpochOrder::new(&spec), pipeline, walk, prefetch: None }
    }

    /// This loader restricted to `shard`'s part of every epoch (DistributedSampler's split). Call before
    /// [`Loader::with_prefetch`], whose producer walks the order it finds.
    pub fn with_shard(mut self, shard: Shard) -> Loader {
        debug_assert!(self.prefetch.is_none(), "set the shard before starting the producer");
        self.walk.spec.shard = shard;
        self.order = EpochOrder::new(&self.walk.spec);
        self
    }

    /// This loader with batches that carry indices, targets and extras but no input rows: `Batch::inputs` is
    /// left as it is. For a device that keeps the split's processed inputs itself and gathers a batch's rows
    /// by index (`run.device_cache`). Call before [`Loader::with_prefetch`].
    pub fn without_inputs(mut self) -> Loader {
        debug_assert!(self.prefetch.is_none(), "choose the batches' contents before starting the producer");
        self.walk.inputs = false;
        self
    }

    /// Whether batches carry their input rows (false after [`Loader::without_inputs`]).
    pub fn fills_inputs(&self) -> bool {
        self.walk.inputs
    }

    /// This loader with a background producer that keeps up to `depth` (at least 1) batches ready,
    /// processing their rows on `pool`. The thread idles until the first batch is asked for and stops when
    /// the loader is dropped.
    pub fn with_prefetch(mut self, pool: LoaderPool, depth: usize) -> Result<Loader, String> {
        let targets = self.pipeline.empty_targets(self.walk.spec.batch);
        let len: usize = self.pipeline.sample_shape().iter().product();
        let mut template = Batch::with_capacity(self.walk.spec.batch, len, targets);
        template.extras =
            ecstrain_components::Extras::with_capacity(&self.pipeline.extra_specs(), self.walk.spec.batch);
        self.prefetch = Some(Prefetcher::start(self.pipeline.clone(), self.walk, pool, depth, &template)?);
        Ok(self)
    }

    /// The pipeline (dataset and processors).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Samples per batch.
    pub fn batch_size(&self) -> usize {
        self.walk.spec.batch
    }

    /// This loader's part of the data.
    pub fn shard(&self) -> Shard {
        self.walk.spec.shard
    }

    /// Samples this rank sees per epoch (padding included).
    pub fn samples_per_epoch(&self) -> usize {
        self.walk.spec.samples_per_epoch()
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.walk.spec.batches_per_epoch()
    }

    /// Threads of the background loader's pool (0: batches are assembled on the calling thread).
    pub fn workers(&self) -> usize {
        self.prefetch.as_ref().map_or(0, Prefetcher::workers)
    }

    /// Batches the background loader keeps ready (0 without one).
    pub fn prefetch_depth(&self) -> usize {
        self.prefetch.as_ref().map_or(0, Prefetcher::depth)
    }

    /// Sets the sample order for `epoch` (a fresh permutation when shuffling, the dataset order otherwise;
    /// then this rank's part), read by [`Loader::order`] and [`Loader::fill`].
    pub fn set_epoch(&mut self, epoch: u64) {
        self.order.set_epoch(&self.walk.spec, self.walk.key(epoch));
    }

    /// This rank's sample order in the epoch set last (empty before [`Loader::set_epoch`]).
    pub fn order(&self) -> &[usize] {
        self.order.samples()
    }

    /// Fills `out` with batch `b` of the epoch set last, on the calling thread.
    pub fn fill(&self, b: usize, out: &mut Batch) -> Result<(), DataError> {
        let epoch = self.order.epoch().unwrap_or(0);
        fill_batch(&self.pipeline, &self.order, &self.walk.spec, self.walk.inputs, epoch, b, out)
    }

    /// Puts batch `b` of data epoch `epoch` into `out`: assembled here, or (prefetching) taken from the
    /// producer's queue by swapping buffers with `out`, which must then be a batch of this loader's size.
    pub fn fetch(&mut self, epoch: u64, b: usize, out: &mut Batch) -> Result<(), DataError> {
        let epoch = self.walk.key(epoch);
        match &mut self.prefetch {
            Some(p) => p.fetch(epoch, b, out),
            None => {
                self.order.set_epoch(&self.walk.spec, epoch);
                fill_batch(&self.pipeline, &self.order, &self.walk.spec, self.walk.inputs, epoch, b, out)
            }
        }
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

/// Load (training): puts the clock's current batch into [`Batch`] and adds the time it took (the step's
/// wait for data) to [`DataWait`]. A read failure goes to [`RunFailure`], which stops the step.
pub fn load_train_batch(
    clock: Res<Clock>,
    mut loader: ResMut<TrainLoader>,
    mut batch: ResMut<Batch>,
    mut wait: ResMut<DataWait>,
    mut failure: ResMut<RunFailure>,
) {
    let t0 = std::time::Instant::now();
    let result = loader.0.fetch(clock.data_epoch, clock.batch_in_epoch as usize, &mut batch);
    wait.add(t0.elapsed().as_secs_f64());
    if let Err(m) = result {
        failure.0.get_or_insert(m);
    }
}

/// Load (validation): puts the next validation batch into [`Batch`].
pub fn load_val_batch(mut val: ResMut<ValLoader>, mut batch: ResMut<Batch>, mut failure: ResMut<RunFailure>) {
    let b = val.cursor;
    if let Err(m) = val.loader.fetch(0, b, &mut batch) {
        failure.0.get_or_insert(m);
    }
    val.cursor += 1;
}

#[cfg(test)]
mod tests;
