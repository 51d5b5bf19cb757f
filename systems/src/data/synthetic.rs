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
    /// What the targets are: `classes` (uniform labels in `0..classes`, the default) or `dense`
    /// (`target_len` standard-normal values per sample).
    #[serde(default = "default_targets")]
    pub targets: String,
    /// Number of classes (`targets: classes`).
    #[serde(default)]
    pub classes: usize,
    /// Values per dense target (`targets: dense`).
    #[serde(default)]
    pub target_len: usize,
    /// Samples in the training split.
    pub train_samples: usize,
    /// Samples in the validation split (0 = no validation split).
    #[serde(default)]
    pub val_samples: usize,
    /// Samples in the test split (0 = none; read by `engine eval / predict --split test`, never by training).
    #[serde(default)]
    pub test_samples: usize,
    /// Seed of the generator (independent of `run.seed`).
    #[serde(default)]
    pub seed: u64,
}

fn default_targets() -> String {
    "classes".into()
}

/// Standard-normal inputs; uniform labels or standard-normal dense targets.
pub struct SyntheticDataset {
    shape: Vec<usize>,
    samples: usize,
    inputs: Vec<f32>,
    targets: SyntheticTargets,
}

enum SyntheticTargets {
    Classes { classes: usize, labels: Vec<i64> },
    Dense { len: usize, values: Vec<f32> },
}

/// The most f32 values (inputs and targets) one synthetic split generates: 8 GiB.
pub const MAX_VALUES: usize = 1 << 31;

impl SyntheticDataset {
    /// Every value is generated into memory: `samples` samples of `o`'s shape and targets must stay within
    /// [`MAX_VALUES`] (sizes that overflow included).
    pub fn check_size(o: &SyntheticOptions, samples: usize) -> Result<(), String> {
        let per_sample = o.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let targets_len = if o.targets == "dense" { o.target_len } else { 1 };
        let total = per_sample.and_then(|p| p.checked_add(targets_len)).and_then(|p| p.checked_mul(samples));
        if total.is_none_or(|t| t > MAX_VALUES) {
            return Err(format!(
                "{samples} samples of shape {:?} are more than the synthetic dataset generates in memory ({MAX_VALUES} \
                 values, 8 GiB); use fewer samples or a smaller shape",
                o.shape
            ));
        }
        Ok(())
    }

    /// Generates `samples` samples; `stream` separates the train and val splits.
    pub fn generate(o: &SyntheticOptions, samples: usize, stream: u64) -> Result<SyntheticDataset, String> {
        if o.shape.is_empty() || o.shape.contains(&0) {
            return Err(format!("shape: must be non-empty with sizes >= 1, got {:?}", o.shape));
        }
        Self::check_size(o, samples)?;
        let len: usize = o.shape.iter().product();
        let mut rng = Rng::derive(o.seed, &[0x5E7, stream]);
        let inputs = (0..samples * len).map(|_| rng.normal() as f32).collect();
        let targets = match o.targets.as_str() {
            "classes" if o.classes >= 1 => SyntheticTargets::Classes {
                classes: o.classes,
                labels: (0..samples).map(|_| rng.below(o.classes as u64) as i64).collect(),
            },
            "classes" => return Err("classes: must be >= 1 with targets: classes".into()),
            "dense" if o.target_len >= 1 => SyntheticTargets::Dense {
                len: o.target_len,
                values: (0..samples * o.target_len).map(|_| rng.normal() as f32).collect(),
            },
            "dense" => return Err("target_len: must be >= 1 with targets: dense".into()),
            other => return Err(format!("targets: unknown kind `{other}`; valid choices: classes, dense")),
        };
        Ok(SyntheticDataset { shape: o.shape.clone(), samples, inputs, targets })
    }
}

impl Dataset for SyntheticDataset {
    fn describe(&self) -> String {
        format!("synthetic {:?} x {}", self.shape, self.samples)
    }
    fn len(&self) -> usize {
        self.samples
    }
    fn sample_shape(&self) -> &[usize] {
        &self.shape
    }
    fn target_spec(&self) -> TargetSpec {
        match &self.targets {
            SyntheticTargets::Classes { classes, .. } => TargetSpec::Classes { num_classes: *classes },
            SyntheticTargets::Dense { len, .. } => TargetSpec::Dense { len: *len },
        }
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
        match (&self.targets, out) {
            (SyntheticTargets::Classes { labels, .. }, Targets::Classes(v)) => {
                v.clear();
                v.extend(indices.iter().map(|&i| labels[i]));
            }
            (SyntheticTargets::Dense { len, values }, Targets::Dense { values: out, .. }) => {
                out.clear();
                for &i in indices {
                    out.extend_from_slice(&values[i * len..(i + 1) * len]);
                }
            }
            _ => unreachable!("target buffer kind comes from empty_targets"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(yaml_like: serde_json::Value) -> SyntheticOptions {
        serde_json::from_value(yaml_like).unwrap()
    }

    #[test]
    fn sizes_past_memory_are_refused_before_generating() {
        for (shape, samples) in [(serde_json::json!([usize::MAX]), 2usize), (serde_json::json!([64]), usize::MAX)] {
            let o = options(serde_json::json!({"shape": shape, "classes": 4, "train_samples": 1}));
            let e = SyntheticDataset::generate(&o, samples, 0).err().unwrap();
            assert!(e.contains("more than the synthetic dataset generates in memory"), "{e}");
        }
        let dense = serde_json::json!({"shape": [4], "targets": "dense", "target_len": usize::MAX, "train_samples": 1});
        assert!(SyntheticDataset::check_size(&options(dense), 1).is_err());
        let small = options(serde_json::json!({"shape": [4], "classes": 2, "train_samples": 1}));
        assert!(SyntheticDataset::check_size(&small, 1000).is_ok());
    }

    #[test]
    fn classes_and_dense_targets() {
        let o = options(serde_json::json!({"shape": [2, 3], "classes": 4, "train_samples": 5}));
        let ds = SyntheticDataset::generate(&o, 5, 0).unwrap();
        assert_eq!((ds.len(), ds.target_spec()), (5, TargetSpec::Classes { num_classes: 4 }));
        let mut t = ds.empty_targets(5);
        ds.read_targets(&[0, 1, 2, 3, 4], &mut t);
        assert!(matches!(&t, Targets::Classes(v) if v.iter().all(|l| (0..4).contains(l))));

        let o = options(serde_json::json!({"shape": [3], "targets": "dense", "target_len": 2, "train_samples": 4}));
        let ds = SyntheticDataset::generate(&o, 4, 0).unwrap();
        assert_eq!(ds.target_spec(), TargetSpec::Dense { len: 2 });
        let mut t = ds.empty_targets(4);
        ds.read_targets(&[3, 3], &mut t);
        let Targets::Dense { values, target_len: 2 } = &t else { panic!("{t:?}") };
        assert_eq!((values.len(), values[0..2] == values[2..4]), (4, true));
        // The same seed and stream give the same data; another stream differs.
        let again = SyntheticDataset::generate(&o, 4, 0).unwrap();
        let other = SyntheticDataset::generate(&o, 4, 1).unwrap();
        assert!(ds.inputs == again.inputs && ds.inputs != other.inputs);

        let e = SyntheticDataset::generate(&options(serde_json::json!({"shape": [3], "train_samples": 1})), 1, 0);
        assert!(e.err().unwrap().contains("classes: must be >= 1"));
        let o = options(serde_json::json!({"shape": [3], "targets": "boxes", "train_samples": 1}));
        assert!(SyntheticDataset::generate(&o, 1, 0).err().unwrap().contains("valid choices: classes, dense"));
    }

    /// A processor-free pipeline gathers a large batch over the pool in runs of rows: the rows must be the
    /// dataset's, in the batch's order, for any pool size and a batch that does not split evenly.
    #[test]
    fn pipeline_gathers_large_batches_in_parallel_exactly() {
        use crate::data::Pipeline;
        let o = options(serde_json::json!({"shape": [97], "classes": 3, "train_samples": 700}));
        let ds = std::sync::Arc::new(SyntheticDataset::generate(&o, 700, 0).unwrap());
        let pipe = Pipeline::new(ds.clone(), Vec::new(), 0, 0).unwrap();
        // 509 rows of 97 values: past the parallel threshold, prime so no run count divides it.
        let indices: Vec<usize> = (0..509).map(|i| (i * 379 + 11) % 700).collect();
        let mut serial = vec![0.0f32; indices.len() * 97];
        ds.read_inputs(&indices, &mut serial).unwrap();
        for threads in [1, 2, 3, 7] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![f32::NAN; serial.len()];
            pool.install(|| pipe.fill_rows(&indices, 0, &mut out)).unwrap();
            assert!(out.iter().zip(&serial).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
        }
    }
}
