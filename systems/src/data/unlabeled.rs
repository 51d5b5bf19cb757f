//! Inputs without targets, for prediction (`engine predict --source`): the rows of one `.npy` array, or a list
//! of image files, read as the training data is read. The targets are placeholders of the trained task's kind
//! (class 0, or zeros) so that the task's evaluation systems run unchanged; nothing reports what they compute.

use std::path::{Path, PathBuf};

use ecstrain_components::Targets;

use super::dataset::{DataError, Dataset, TargetSpec};
use super::image_set::{ImageReadOptions, ImageSet, Skipped};
use super::npy::NpyArray;
use super::sample::Sample;

/// Where the inputs come from.
enum Inputs {
    /// Rows of one array: sample `i` is `x[i]`.
    Npy(NpyArray),
    /// One image per sample.
    Images(ImageSet),
}

/// A dataset of inputs only; see the module docs.
pub struct Unlabeled {
    inputs: Inputs,
    sample_shape: Vec<usize>,
    targets: TargetSpec,
    origin: String,
}

impl Unlabeled {
    /// The rows of the `.npy` file at `path` (any dtype the `npy` dataset reads); `targets` is the trained
    /// model's kind of target.
    pub fn npy(path: &Path, targets: TargetSpec) -> Result<Unlabeled, DataError> {
        let x = NpyArray::open(path).map_err(|e| e.to_string())?;
        if x.shape().is_empty() {
            return Err(format!("{}: a 0-dimensional array holds no samples; expected [samples, ...]", path.display()));
        }
        let sample_shape = match &x.shape()[1..] {
            [] => vec![1],
            s => s.to_vec(),
        };
        Ok(Unlabeled { inputs: Inputs::Npy(x), sample_shape, targets, origin: path.display().to_string() })
    }

    /// The image files `paths`, in that order, decoded with `options` (the channels of the training data); a
    /// corrupt file is an error naming it unless `options.skip_corrupt`.
    pub fn images(
        paths: Vec<PathBuf>,
        options: &ImageReadOptions,
        targets: TargetSpec,
        origin: &Path,
    ) -> Result<(Unlabeled, Skipped), DataError> {
        let (set, skipped) = ImageSet::open(paths, options)?;
        let sample_shape = set.first_shape().to_vec();
        Ok((
            Unlabeled { inputs: Inputs::Images(set), sample_shape, targets, origin: origin.display().to_string() },
            skipped,
        ))
    }
}

impl Dataset for Unlabeled {
    fn describe(&self) -> String {
        self.origin.clone()
    }
    fn len(&self) -> usize {
        match &self.inputs {
            Inputs::Npy(x) => x.rows(),
            Inputs::Images(set) => set.len(),
        }
    }
    fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }
    fn fixed_shape(&self) -> bool {
        match &self.inputs {
            Inputs::Npy(_) => true,
            Inputs::Images(set) => set.fixed(),
        }
    }
    fn target_spec(&self) -> TargetSpec {
        self.targets.clone()
    }
    fn sample_name(&self, index: usize) -> Option<String> {
        match &self.inputs {
            Inputs::Npy(_) => None,
            Inputs::Images(set) => Some(set.path(index).display().to_string()),
        }
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        match &self.inputs {
            Inputs::Npy(x) => x.read_row_f32(index, out.reset(&self.sample_shape)).map_err(|e| e.to_string()),
            Inputs::Images(set) => set.read(index, out),
        }
    }
    fn read_inputs(&self, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        match &self.inputs {
            Inputs::Npy(x) => x.read_rows_f32(indices, out).map_err(|e| e.to_string()),
            Inputs::Images(set) => set.read_rows(indices, out),
        }
    }
    fn read_targets(&self, indices: &[usize], out: &mut Targets) {
        match out {
            Targets::Classes(v) => {
                v.clear();
                v.resize(indices.len(), 0);
            }
            Targets::Dense { values, target_len } => {
                values.clear();
                values.resize(indices.len() * *target_len, 0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::npy::write_npy;

    #[test]
    fn npy_rows_read_with_placeholder_targets() {
        let d = std::env::temp_dir().join(format!("ecstrain-unlabeled-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("x.npy");
        write_npy(&p, &[3, 2, 2], &(0..12).map(|v| v as f64).collect::<Vec<_>>()).unwrap();
        let ds = Unlabeled::npy(&p, TargetSpec::Dense { len: 3 }).unwrap();
        assert_eq!((ds.len(), ds.sample_shape()), (3, &[2usize, 2][..]));
        let mut rows = vec![0.0f32; 8];
        ds.read_inputs(&[2, 0], &mut rows).unwrap();
        assert_eq!(rows, [8., 9., 10., 11., 0., 1., 2., 3.]);
        let mut t = ds.empty_targets(2);
        ds.read_targets(&[2, 0], &mut t);
        assert!(matches!(t, Targets::Dense { ref values, target_len: 3 } if values == &[0.0; 6]));
        assert_eq!(ds.sample_name(1), None, "rows are named by their index");
        // A vector of scalars is one value per sample.
        write_npy(&p, &[4], &[1.0f32, 2., 3., 4.]).unwrap();
        let ds = Unlabeled::npy(&p, TargetSpec::Classes { num_classes: 2 }).unwrap();
        assert_eq!(ds.sample_shape(), &[1]);
        let mut t = ds.empty_targets(4);
        ds.read_targets(&[0, 1, 3], &mut t);
        assert!(matches!(t, Targets::Classes(ref v) if v == &[0, 0, 0]));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
