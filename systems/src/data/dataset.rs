//! The dataset abstraction the loader reads from.

use super::sample::Sample;
use ecstrain_components::{Extras, Targets};

/// What a dataset's targets are.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetSpec {
    /// Integer class labels in `0..num_classes` (num_classes = largest label + 1 in this split).
    Classes {
        /// Largest label + 1.
        num_classes: usize,
    },
    /// Dense float targets of `len` values per sample.
    Dense {
        /// Values per sample.
        len: usize,
    },
}

/// One split of a dataset: random access to samples by index.
///
/// A dataset implements [`Dataset::read_sample`] (one sample, any shape its files hold) and may override
/// [`Dataset::read_inputs`] with a faster bulk gather when its samples have a fixed shape (the `npy` memmap
/// converts whole batches in parallel). Reads fail only on data that changed or broke after the dataset was
/// opened and checked; the message names the file.
pub trait Dataset: Send + Sync {
    /// Human-readable origin for messages (a file path, a dataset name).
    fn describe(&self) -> String;
    /// The origin of the targets, for messages about them: the labels' own file where it is not the inputs'
    /// (the `npy` dataset's `y`); [`Dataset::describe`] by default.
    fn describe_targets(&self) -> String {
        self.describe()
    }
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Per-sample input shape: of every sample when [`Dataset::fixed_shape`], else of the first one.
    fn sample_shape(&self) -> &[usize];
    /// Whether every sample has [`Dataset::sample_shape`] (an image folder of mixed sizes does not).
    fn fixed_shape(&self) -> bool {
        true
    }
    /// What the targets are.
    fn target_spec(&self) -> TargetSpec;
    /// Class names by index, when the dataset has them (an image folder's sorted subfolders); the run
    /// directory records them.
    fn class_names(&self) -> Option<Vec<String>> {
        None
    }
    /// Reads sample `index`'s input into `out` (its values and shape), reusing `out`'s buffers.
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError>;
    /// Writes the inputs of `indices` into `out` (`[indices.len(), numel(sample_shape)]`), as f32. Only for
    /// fixed-shape datasets; the default reads sample by sample.
    fn read_inputs(&self, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        let len: usize = self.sample_shape().iter().product();
        let mut sample = Sample::default();
        for (row, &i) in out.chunks_exact_mut(len.max(1)).zip(indices) {
            self.read_sample(i, &mut sample)?;
            if sample.data.len() != len {
                return Err(format!(
                    "{}: sample {i} has shape {:?}, expected {:?}",
                    self.describe(),
                    sample.shape,
                    self.sample_shape()
                ));
            }
            row.copy_from_slice(&sample.data);
        }
        Ok(())
    }
    /// Extra per-sample arrays beside inputs and targets (`(name, values per sample)`), in the order
    /// [`Dataset::read_extras`] fills them. None by default.
    fn extra_specs(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
    /// Writes the extra arrays of `indices` into `out` (buffers made by `Extras::with_capacity` from
    /// [`Dataset::extra_specs`]; the first `indices.len()` rows of each). No-op by default.
    fn read_extras(&self, indices: &[usize], out: &mut Extras) -> Result<(), DataError> {
        let _ = (indices, out);
        Ok(())
    }
    /// What names sample `index` for a person (its image file), when the dataset knows more than the index;
    /// `engine predict` writes it beside the sample's prediction.
    fn sample_name(&self, index: usize) -> Option<String> {
        let _ = index;
        None
    }
    /// The caption of sample `index`, when the dataset has captions (annotation records with `caption`).
    /// Captions are kept for tasks that want them; no built-in task reads them.
    fn caption(&self, index: usize) -> Option<&str> {
        let _ = index;
        None
    }
    /// Writes the targets of `indices` into `out`, reusing its buffers.
    fn read_targets(&self, indices: &[usize], out: &mut Targets);
    /// A target buffer of the right kind with room for `capacity` samples.
    fn empty_targets(&self, capacity: usize) -> Targets {
        match self.target_spec() {
            TargetSpec::Classes { .. } => Targets::Classes(Vec::with_capacity(capacity)),
            TargetSpec::Dense { len } => Targets::Dense { values: Vec::with_capacity(capacity * len), target_len: len },
        }
    }
}

/// Failure to open or read a dataset, with the file named.
pub type DataError = String;
