//! The `synthetic` dataset: random inputs and labels held in memory, generated from a seed. For benchmarks
//! (the W1-W3 workloads of the PyTorch side-by-side) and tests; no files needed.

use ecstrain_components::Targets;
use ecstrain_kernels::rng::Rng;
use serde::Deserialize;

use super::{Dataset, Sample, TargetSpec};

/// Options of one `synthetic` split.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyntheticOptions {
    /// Per-sample input shape, e.g. `[784]` or `[1, 28, 28]`.
    pub shape: Vec<usize>,
    /// Number of classes; labels are uniform in `0..classes`.
    pub classes: usize,
    /// Samples in the training split.
    pub train_samples: usize,
    /// Samples in the validation split (0 = no validation split).
    #[serde(default)]
    pub val_samples: usize,
    /// Seed of the generator (independent of `run.seed`).
    #[serde(default)]
    pub seed: u64,
}

/// Standard-normal inputs and uniform labels.
pub struct SyntheticDataset {
    shape: Vec<usize>,
    classes: usize,
    inputs: Vec<f32>,
    labels: Vec<i64>,
}

impl SyntheticDataset {
    /// Generates `samples` samples; `stream` separates the train and val splits.
    pub fn generate(o: &SyntheticOptions, samples: usize, stream: u64) -> Result<SyntheticDataset, String> {
        if o.classes == 0 || o.shape.is_empty() || o.shape.contains(&0) {
            return Err(format!(
                "synthetic: classes must be >= 1 and shape non-empty with sizes >= 1, got classes {} shape {:?}",
                o.classes, o.shape
            ));
        }
        let len: usize = o.shape.iter().product();
        let mut rng = Rng::derive(o.seed, &[0x5E7, stream]);
        let inputs = (0..samples * len).map(|_| rng.normal() as f32).collect();
        let labels = (0..samples).map(|_| rng.below(o.classes as u64) as i64).collect();
        Ok(SyntheticDataset { shape: o.shape.clone(), classes: o.classes, inputs, labels })
    }
}

impl Dataset for SyntheticDataset {
    fn describe(&self) -> String {
        format!("synthetic {:?} x {}", self.shape, self.labels.len())
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn sample_shape(&self) -> &[usize] {
        &self.shape
    }
    fn target_spec(&self) -> TargetSpec {
        TargetSpec::Classes { num_classes: self.classes }
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), String> {
        let len: usize = self.shape.iter().product();
        out.reset(&self.shape).copy_from_slice(&self.inputs[index * len..(index + 1) * len]);
        Ok(())
    }
    fn read_inputs(&self, indices: &[usize], out: &mut [f32]) -> Result<(), String> {
        let len: usize = self.shape.iter().product();
        for (row, &i) in out.chunks_exact_mut(len).zip(indices) {
            row.copy_from_slice(&self.inputs[i * len..(i + 1) * len]);
        }
        Ok(())
    }
    fn read_targets(&self, indices: &[usize], out: &mut Targets) {
        if let Targets::Classes(v) = out {
            v.clear();
            v.extend(indices.iter().map(|&i| self.labels[i]));
        }
    }
}
