//! The dataset abstraction the loader reads from, and the built-in `npy` dataset.

use std::path::{Path, PathBuf};

use ecstrain_components::Targets;
use serde::Deserialize;

use super::npy::NpyArray;
use super::sample::Sample;

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

/// Files of one split of an `npy` dataset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NpySplitFiles {
    /// Inputs: an array `[N, ...]` (float32, float64, uint8 or int64).
    pub x: PathBuf,
    /// Targets: `[N]` integer class labels, or `[N, ...]` floats for dense targets.
    pub y: PathBuf,
}

/// The `npy` dataset: inputs and targets in two memory-mapped .npy files.
pub struct NpyDataset {
    x: NpyArray,
    sample_shape: Vec<usize>,
    labels: Option<Vec<i64>>,
    num_classes: usize,
    dense: Option<NpyArray>,
}

/// Failure to open an `npy` split, with the file named.
pub type DataError = String;

impl NpyDataset {
    /// Opens a split, checking that x and y agree on the number of samples and that labels are valid.
    pub fn open(files: &NpySplitFiles, root: &Path) -> Result<NpyDataset, DataError> {
        let xp = root.join(&files.x);
        let yp = root.join(&files.y);
        let x = NpyArray::open(&xp).map_err(|e| e.to_string())?;
        let y = NpyArray::open(&yp).map_err(|e| e.to_string())?;
        if x.shape().is_empty() {
            return Err(format!("{}: inputs must have a leading sample dimension, got a scalar", xp.display()));
        }
        if y.shape().first() != x.shape().first() {
            return Err(format!(
                "{} has {} samples but {} has {}: x and y must have the same first dimension",
                xp.display(),
                x.rows(),
                yp.display(),
                y.shape().first().copied().unwrap_or(0)
            ));
        }
        let sample_shape = x.shape()[1..].to_vec();
        let integer = matches!(y.dtype(), ecstrain_kernels::DType::I64 | ecstrain_kernels::DType::U8);
        if y.shape().len() == 1 && integer {
            let labels = y.to_i64_vec().map_err(|e| e.to_string())?;
            if let Some((row, &bad)) = labels.iter().enumerate().find(|(_, &l)| l < 0) {
                return Err(format!("{}: label {bad} at row {row} is negative", yp.display()));
            }
            let num_classes = labels.iter().copied().max().map(|m| m as usize + 1).unwrap_or(0);
            Ok(NpyDataset { x, sample_shape, labels: Some(labels), num_classes, dense: None })
        } else {
            Ok(NpyDataset { x, sample_shape, labels: None, num_classes: 0, dense: Some(y) })
        }
    }
}

impl Dataset for NpyDataset {
    fn describe(&self) -> String {
        self.x.path().display().to_string()
    }
    fn len(&self) -> usize {
        self.x.rows()
    }
    fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }
    fn target_spec(&self) -> TargetSpec {
        match &self.dense {
            None => TargetSpec::Classes { num_classes: self.num_classes },
            Some(y) => TargetSpec::Dense { len: y.row_len() },
        }
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        let row = out.reset(&self.sample_shape);
        self.x.read_row_f32(index, row).map_err(|e| e.to_string())
    }
    fn read_inputs(&self, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        self.x.read_rows_f32(indices, out).map_err(|e| e.to_string())
    }
    fn read_targets(&self, indices: &[usize], out: &mut Targets) {
        match (out, &self.labels, &self.dense) {
            (Targets::Classes(v), Some(labels), _) => {
                v.clear();
                v.extend(indices.iter().map(|&i| labels[i]));
            }
            (Targets::Dense { values, target_len }, _, Some(y)) => {
                values.resize(indices.len() * *target_len, 0.0);
                y.read_rows_f32(indices, values).expect("loader indices are in range");
            }
            _ => unreachable!("target buffer kind comes from empty_targets"),
        }
    }
}
