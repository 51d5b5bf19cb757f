//! A split's input pipeline: a dataset followed by its processors, producing batch rows of one fixed shape.

use std::cell::RefCell;
use std::sync::Arc;

use ecstrain_components::{Extras, Targets};
use ecstrain_kernels::rng::Rng;
use rayon::prelude::*;

use super::dataset::DataError;
use super::processors::Processor;
use super::sample::{Sample, ShapeInfo};
use super::{Dataset, TargetSpec};

/// Key of the augmentation streams in [`Rng::derive`].
const AUGMENT_KEY: u64 = 0xA06;

/// Batches of at least this many input values are assembled in parallel; below it rayon's fork/join costs
/// more than it saves (the digits-sized batch).
const PARALLEL_MIN_VALUES: usize = 1 << 14;

thread_local! {
    /// Each thread's working sample and processor scratch, kept between batches so steady-state processing
    /// allocates nothing.
    static SCRATCH: RefCell<(Sample, Vec<f32>)> = RefCell::new(Default::default());
}

/// A dataset seen through its processors. Its [`Dataset`] implementation (used when the run is assembled:
/// shapes, targets, data checks) is the pipeline at data epoch 0; the loader calls [`Pipeline::fill_rows`]
/// with the real epoch.
pub struct Pipeline {
    dataset: Arc<dyn Dataset>,
    processors: Vec<Box<dyn Processor>>,
    shape: Vec<usize>,
    seed: u64,
    stream: u64,
    random: bool,
}

impl Pipeline {
    /// Chains `processors` after `dataset`, checking every shape on the way. The result must have a fixed
    /// shape (the model is built on it). `seed` and `stream` (the split: 0 train, 1 val, ...) key the
    /// augmentation randomness.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        processors: Vec<Box<dyn Processor>>,
        seed: u64,
        stream: u64,
    ) -> Result<Pipeline, String> {
        let mut shape = ShapeInfo { dims: dataset.sample_shape().to_vec(), fixed: dataset.fixed_shape() };
        for p in &processors {
            shape = p.output_shape(&shape).map_err(|m| format!("processor `{}`: {m}", p.name()))?;
        }
        if !shape.fixed {
            return Err(format!(
                "the samples of {} do not all have the same shape (the first is {:?}); add a processor that \
                 makes them one size (resize to [height, width], center_crop, random_resized_crop)",
                dataset.describe(),
                dataset.sample_shape()
            ));
        }
        let random = processors.iter().any(|p| p.is_random());
        Ok(Pipeline { dataset, processors, shape: shape.dims, seed, stream, random })
    }

    /// A pipeline without processors.
    pub fn plain(dataset: Arc<dyn Dataset>) -> Result<Pipeline, String> {
        Pipeline::new(dataset, Vec::new(), 0, 0)
    }

    /// The underlying dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The processors, in order.
    pub fn processors(&self) -> &[Box<dyn Processor>] {
        &self.processors
    }

    /// Whether any processor is random (the rows then depend on the epoch).
    pub fn is_random(&self) -> bool {
        self.random
    }

    /// Writes the processed inputs of `indices` into `out` (`[indices.len(), numel(sample_shape)]`) as they
    /// are in data epoch `epoch`. Rows are processed in parallel on the current rayon pool when the batch is
    /// large enough; the result does not depend on it.
    pub fn fill_rows(&self, indices: &[usize], epoch: u64, out: &mut [f32]) -> Result<(), DataError> {
        let len: usize = self.shape.iter().product();
        debug_assert_eq!(out.len(), indices.len() * len);
        if self.processors.is_empty() && self.dataset.fixed_shape() {
            return self.gather(indices, out, len);
        }
        let one = |(row, &index): (&mut [f32], &usize)| self.fill_row(index, epoch, row);
        if out.len() >= PARALLEL_MIN_VALUES {
            out.par_chunks_mut(len.max(1)).zip(indices.par_iter()).try_for_each(one)
        } else {
            out.chunks_mut(len.max(1)).zip(indices.iter()).try_for_each(one)
        }
    }

    /// The rows of a dataset without processors, read as they are: for a large batch, in about one run of
    /// rows per pool thread. A gather of rows scattered over the dataset is bound by memory latency and
    /// bandwidth, which one core does not saturate, and the pool is idle while the step waits for its batch.
    fn gather(&self, indices: &[usize], out: &mut [f32], len: usize) -> Result<(), DataError> {
        let threads = rayon::current_num_threads();
        if out.len() < PARALLEL_MIN_VALUES || threads < 2 || len == 0 {
            return self.dataset.read_inputs(indices, out);
        }
        let runs = threads.min(out.len() / (PARALLEL_MIN_VALUES / 2)).max(1);
        let rows = indices.len().div_ceil(runs);
        out.par_chunks_mut(rows * len)
            .zip(indices.par_chunks(rows))
            .try_for_each(|(o, ix)| self.dataset.read_inputs(ix, o))
    }

    /// Reads and processes one sample into its batch row.
    fn fill_row(&self, index: usize, epoch: u64, row: &mut [f32]) -> Result<(), DataError> {
        SCRATCH.with_borrow_mut(|(sample, scratch)| {
            self.dataset.read_sample(index, sample)?;
            let mut rng = Rng::derive(self.seed, &[AUGMENT_KEY, self.stream, epoch, index as u64]);
            for p in &self.processors {
                p.apply(sample, scratch, &mut rng).map_err(|m| {
                    format!("{} sample {index}: processor `{}`: {m}", self.dataset.describe(), p.name())
                })?;
            }
            if sample.shape != self.shape {
                return Err(format!(
                    "{} sample {index}: processed to shape {:?}, expected {:?}",
                    self.dataset.describe(),
                    sample.shape,
                    self.shape
                ));
            }
            row.copy_from_slice(&sample.data);
            Ok(())
        })
    }
}

impl Dataset for Pipeline {
    fn describe(&self) -> String {
        self.dataset.describe()
    }
    fn describe_targets(&self) -> String {
        self.dataset.describe_targets()
    }
    fn len(&self) -> usize {
        self.dataset.len()
    }
    fn sample_shape(&self) -> &[usize] {
        &self.shape
    }
    fn target_spec(&self) -> TargetSpec {
        self.dataset.target_spec()
    }
    fn class_names(&self) -> Option<Vec<String>> {
        self.dataset.class_names()
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        // Not on the loader's path (which fills batch rows directly): a plain copy is fine here.
        let mut row = vec![0.0; self.shape.iter().product()];
        self.fill_row(index, 0, &mut row)?;
        out.reset(&self.shape).copy_from_slice(&row);
        Ok(())
    }
    fn read_inputs(&self, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        self.fill_rows(indices, 0, out)
    }
    fn read_targets(&self, indices: &[usize], out: &mut Targets) {
        self.dataset.read_targets(indices, out)
    }
    fn empty_targets(&self, capacity: usize) -> Targets {
        self.dataset.empty_targets(capacity)
    }
    fn extra_specs(&self) -> Vec<(String, usize)> {
        self.dataset.extra_specs()
    }
    fn read_extras(&self, indices: &[usize], out: &mut Extras) -> Result<(), DataError> {
        self.dataset.read_extras(indices, out)
    }
    fn caption(&self, index: usize) -> Option<&str> {
        self.dataset.caption(index)
    }
    fn sample_name(&self, index: usize) -> Option<String> {
        self.dataset.sample_name(index)
    }
}
