//! `builder: spirals`: a dataset generated in memory, `classes` spiral arms winding `turns` times around the
//! origin with Gaussian `noise`; sample = `[x, y]`, label = arm. Train and val draw different points from the
//! same distribution (seeded, so every run sees the same data).

use std::path::Path;
use std::sync::Arc;

use ecstrain::components::Targets;
use ecstrain::engine::registry::{DatasetEntry, DatasetSplits};
use ecstrain::engine::App;
use ecstrain::kernels::rng::Rng;
use ecstrain::systems::data::{DataError, Dataset, Sample, TargetSpec};
use serde::Deserialize;

/// Options of `datasets.<name>` with `builder: spirals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpiralOptions {
    /// Points per arm in the train split.
    #[serde(default = "default_train")]
    pub train_per_class: usize,
    /// Points per arm in the val split.
    #[serde(default = "default_val")]
    pub val_per_class: usize,
    /// Number of arms (classes), at least 2.
    #[serde(default = "default_classes")]
    pub classes: usize,
    /// Full turns of each arm.
    #[serde(default = "default_turns")]
    pub turns: f64,
    /// Standard deviation of the Gaussian noise added to each coordinate.
    #[serde(default = "default_noise")]
    pub noise: f64,
    /// Seed of the generator.
    #[serde(default)]
    pub seed: u64,
}

fn default_train() -> usize {
    300
}
fn default_val() -> usize {
    100
}
fn default_classes() -> usize {
    3
}
fn default_turns() -> f64 {
    1.0
}
fn default_noise() -> f64 {
    0.05
}

/// One split: points and labels in memory.
pub struct Spirals {
    name: String,
    points: Vec<f32>,
    labels: Vec<i64>,
    classes: usize,
}

impl Spirals {
    /// `per_class` points on each of `o.classes` arms, from the stream `(o.seed, split)`.
    pub fn generate(o: &SpiralOptions, per_class: usize, split: u64, name: &str) -> Spirals {
        let mut rng = Rng::derive(o.seed, &[split]);
        let (mut points, mut labels) = (Vec::new(), Vec::new());
        for i in 0..per_class * o.classes {
            let class = i % o.classes;
            // Radius grows along the arm; arm k starts rotated by 2*pi*k/classes.
            let t = rng.next_f64();
            let angle = t * o.turns * std::f64::consts::TAU + class as f64 * std::f64::consts::TAU / o.classes as f64;
            let r = 0.1 + 0.9 * t;
            points.push((r * angle.cos() + o.noise * rng.normal()) as f32);
            points.push((r * angle.sin() + o.noise * rng.normal()) as f32);
            labels.push(class as i64);
        }
        Spirals { name: name.into(), points, labels, classes: o.classes }
    }
}

impl Dataset for Spirals {
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn sample_shape(&self) -> &[usize] {
        &[2]
    }
    fn target_spec(&self) -> TargetSpec {
        TargetSpec::Classes { num_classes: self.classes }
    }
    fn class_names(&self) -> Option<Vec<String>> {
        Some((0..self.classes).map(|k| format!("arm{k}")).collect())
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        out.reset(&[2]).copy_from_slice(&self.points[2 * index..2 * index + 2]);
        Ok(())
    }
    fn read_inputs(&self, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        for (row, &i) in out.chunks_exact_mut(2).zip(indices) {
            row.copy_from_slice(&self.points[2 * i..2 * i + 2]);
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

/// The builder: options -> train and val splits, or a message naming the bad key.
fn build(options: &serde_json::Map<String, serde_json::Value>, _root: &Path) -> Result<DatasetSplits, String> {
    let o: SpiralOptions =
        serde_json::from_value(serde_json::Value::Object(options.clone())).map_err(|e| e.to_string())?;
    if o.classes < 2 {
        return Err(format!("classes must be at least 2, got {}", o.classes));
    }
    if o.train_per_class == 0 {
        return Err("train_per_class must be at least 1".into());
    }
    if !(o.noise >= 0.0 && o.noise.is_finite()) {
        return Err(format!("noise must be >= 0, got {}", o.noise));
    }
    let train = Arc::new(Spirals::generate(&o, o.train_per_class, 0, "spirals/train"));
    let val = (o.val_per_class > 0)
        .then(|| Arc::new(Spirals::generate(&o, o.val_per_class, 1, "spirals/val")) as Arc<dyn Dataset>);
    Ok(DatasetSplits::new(train, val))
}

/// Registers `spirals`.
pub fn register(app: &mut App) {
    app.registry.register_dataset(
        "spirals",
        DatasetEntry { build, doc: "interleaved 2-d spiral arms, one class per arm (ecstrain-examples)" },
    );
}
