//! Registry entries of the built-in datasets: `npy`, `synthetic`.

use std::path::Path;
use std::sync::Arc;

use ecstrain_systems::data::{NpyDataset, NpySplitFiles, SyntheticDataset, SyntheticOptions};
use serde::Deserialize;

use crate::app::{App, Plugin};
use crate::registry::*;

/// The built-in dataset builders.
pub struct BuiltinDatasets;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NpyOptions {
    train: NpySplitFiles,
    #[serde(default)]
    val: Option<NpySplitFiles>,
}

fn build_npy(options: &serde_json::Map<String, serde_json::Value>, root: &Path) -> Result<DatasetSplits, String> {
    let o: NpyOptions =
        serde_json::from_value(serde_json::Value::Object(options.clone())).map_err(|e| e.to_string())?;
    let train = NpyDataset::open(&o.train, root)?;
    let val = o.val.as_ref().map(|v| NpyDataset::open(v, root)).transpose()?;
    if let Some(v) = &val {
        use ecstrain_systems::data::Dataset;
        if v.sample_shape() != train.sample_shape() {
            return Err(format!(
                "val samples have shape {:?} ({}) but train samples have shape {:?} ({})",
                v.sample_shape(),
                v.describe(),
                train.sample_shape(),
                train.describe()
            ));
        }
    }
    Ok(DatasetSplits { train: Arc::new(train), val: val.map(|v| Arc::new(v) as _) })
}

fn build_synthetic(
    options: &serde_json::Map<String, serde_json::Value>,
    _root: &Path,
) -> Result<DatasetSplits, String> {
    let o: SyntheticOptions =
        serde_json::from_value(serde_json::Value::Object(options.clone())).map_err(|e| e.to_string())?;
    let train = SyntheticDataset::generate(&o, o.train_samples, 0)?;
    let val = (o.val_samples > 0).then(|| SyntheticDataset::generate(&o, o.val_samples, 1)).transpose()?;
    Ok(DatasetSplits { train: Arc::new(train), val: val.map(|v| Arc::new(v) as _) })
}

impl Plugin for BuiltinDatasets {
    fn build(&self, app: &mut App) {
        app.registry.register_dataset(
            "synthetic",
            DatasetEntry {
                build: build_synthetic,
                doc: "random normal inputs and uniform labels in memory: shape, classes, train_samples, val_samples, seed",
            },
        );
        app.registry.register_dataset(
            "npy",
            DatasetEntry {
                build: build_npy,
                doc: "memory-mapped .npy arrays: train/val splits, each {x: inputs.npy, y: labels.npy}",
            },
        );
    }
}
