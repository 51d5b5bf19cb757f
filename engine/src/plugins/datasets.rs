//! Registry entries of the built-in datasets: `npy`, `image_folder`, `annotations`, `csv`, `synthetic`. Each
//! builder reads its options (train / val / test splits and dataset-level settings), resolves relative paths
//! against the dataset's `root`, opens every split and checks that val and test agree with train.

use std::path::Path;
use std::sync::Arc;

use ecstrain_systems::data::annotations::{AnnotationDataset, AnnotationOptions, AnnotationSplit};
use ecstrain_systems::data::csv_table::{CsvOptions, CsvSplit, CsvTable};
use ecstrain_systems::data::image_folder::{check_same_classes, FolderSplit, ImageFolderDataset, ImageFolderOptions};
use ecstrain_systems::data::npy_dataset::read_class_map;
use ecstrain_systems::data::processors::options::parse_map;
use ecstrain_systems::data::{
    Dataset, NpyDataset, NpyOptions, NpySplitFiles, SyntheticDataset, SyntheticOptions, TargetSpec,
};
use serde::de::DeserializeOwned;

use crate::app::{App, Plugin};
use crate::registry::*;

/// The built-in dataset builders.
pub struct BuiltinDatasets;

type Options = serde_json::Map<String, serde_json::Value>;

/// The split keys every builder accepts.
const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Parses the builder options, each split on its own first so that a malformed split's message names its
/// key (serde's message for an untagged form does not).
fn parse<T: DeserializeOwned, S: DeserializeOwned>(options: &Options) -> Result<T, String> {
    for key in SPLITS {
        if let Some(v) = options.get(key) {
            serde_json::from_value::<S>(v.clone()).map_err(|e| format!("{key}: {e}"))?;
        }
    }
    parse_options(options)
}

/// Parses a builder's options; a wrong value's message names its key (`seed: invalid value: integer `-1`,
/// expected u64`), which serde_json's alone does not.
fn parse_options<T: DeserializeOwned>(options: &Options) -> Result<T, String> {
    parse_map(options, |key, m| format!("{key}: {m}"))
}

/// Checks what the loaders and the shared batch need a val / test split to share with train: the kind of
/// target and the extra arrays (shapes are checked after the processors, by the pipelines).
fn check_agrees(train: &dyn Dataset, other: &dyn Dataset, key: &str) -> Result<(), String> {
    let kind = |t: TargetSpec| match t {
        TargetSpec::Classes { .. } => "class labels".to_string(),
        TargetSpec::Dense { len } => format!("dense targets of {len} values"),
    };
    let (a, b) = (kind(train.target_spec()), kind(other.target_spec()));
    if a != b {
        return Err(format!(
            "{key} ({}) has {b} but train ({}) has {a}",
            other.describe_targets(),
            train.describe_targets()
        ));
    }
    if train.extra_specs() != other.extra_specs() {
        return Err(format!(
            "{key} ({}) has extra arrays {:?} but train ({}) has {:?} (names and values per sample must match)",
            other.describe(),
            other.extra_specs(),
            train.describe(),
            train.extra_specs()
        ));
    }
    Ok(())
}

/// Assembles the splits after checking val and test against train.
fn splits<D: Dataset + 'static>(
    train: D,
    val: Option<D>,
    test: Option<D>,
    notices: Vec<String>,
) -> Result<DatasetSplits, String> {
    for (key, d) in [("val", &val), ("test", &test)] {
        if let Some(d) = d {
            check_agrees(&train, d, key)?;
        }
    }
    let arc = |d: D| Arc::new(d) as Arc<dyn Dataset>;
    Ok(DatasetSplits { train: arc(train), val: val.map(arc), test: test.map(arc), notices })
}

fn build_npy(options: &Options, root: &Path) -> Result<DatasetSplits, String> {
    let o: NpyOptions = parse::<_, NpySplitFiles>(options)?;
    let bf16 = o.bf16_inputs()?;
    let names =
        o.classes.as_ref().map(|p| read_class_map(&root.join(p))).transpose().map_err(|m| format!("classes: {m}"))?;
    let open = |files: &NpySplitFiles, key: &str| -> Result<NpyDataset, String> {
        let d = NpyDataset::open(files, root, bf16).map_err(|m| format!("{key}: {m}"))?;
        match &names {
            Some(n) => d.with_class_names(n.clone()).map_err(|m| format!("{key}: {m}")),
            None => Ok(d),
        }
    };
    let train = open(&o.train, "train")?;
    let val = o.val.as_ref().map(|v| open(v, "val")).transpose()?;
    let test = o.test.as_ref().map(|v| open(v, "test")).transpose()?;
    for (key, d) in [("val", &val), ("test", &test)] {
        if let Some(d) = d {
            if d.sample_shape() != train.sample_shape() {
                return Err(format!(
                    "{key} samples have shape {:?} ({}) but train samples have shape {:?} ({})",
                    d.sample_shape(),
                    d.describe(),
                    train.sample_shape(),
                    train.describe()
                ));
            }
        }
    }
    splits(train, val, test, Vec::new())
}

fn build_image_folder(options: &Options, root: &Path) -> Result<DatasetSplits, String> {
    let o: ImageFolderOptions = parse::<_, FolderSplit>(options)?;
    let read = o.read_options();
    read.check()?;
    let mut notices = Vec::new();
    let mut open = |s: &FolderSplit, key: &str| -> Result<ImageFolderDataset, String> {
        let (d, notice) = ImageFolderDataset::open(&root.join(s.path()), &read).map_err(|m| format!("{key}: {m}"))?;
        notices.extend(notice);
        Ok(d)
    };
    let train = open(&o.train, "train")?;
    let val = o.val.as_ref().map(|v| open(v, "val")).transpose()?;
    let test = o.test.as_ref().map(|v| open(v, "test")).transpose()?;
    let classes = train.class_names().expect("an image folder names its classes");
    for (key, d) in [("val", &val), ("test", &test)] {
        if let Some(d) = d {
            let other = d.class_names().expect("an image folder names its classes");
            check_same_classes(key, &classes, &train.describe(), &other, &d.describe())?;
        }
    }
    splits(train, val, test, notices)
}

fn build_annotations(options: &Options, root: &Path) -> Result<DatasetSplits, String> {
    let o: AnnotationOptions = parse::<_, AnnotationSplit>(options)?;
    let read = o.read_options();
    read.check()?;
    let mut notices = Vec::new();
    let mut open = |s: &AnnotationSplit, key: &str, classes: Option<&[String]>| {
        let (d, notice) = AnnotationDataset::open(s, root, &read, classes).map_err(|m| format!("{key}: {m}"))?;
        notices.extend(notice);
        Ok::<_, String>(d)
    };
    let train = open(&o.train, "train", None)?;
    let classes = train.class_names();
    let val = o.val.as_ref().map(|v| open(v, "val", classes.as_deref())).transpose()?;
    let test = o.test.as_ref().map(|v| open(v, "test", classes.as_deref())).transpose()?;
    splits(train, val, test, notices)
}

fn build_csv(options: &Options, root: &Path) -> Result<DatasetSplits, String> {
    let o: CsvOptions = parse::<_, CsvSplit>(options)?;
    let open = |s: &CsvSplit, key: &str, reference: Option<&CsvTable>| -> Result<CsvTable, String> {
        CsvTable::open(&o.spec(s, key)?, root, reference).map_err(|m| format!("{key}: {m}"))
    };
    let train = open(&o.train, "train", None)?;
    let val = o.val.as_ref().map(|v| open(v, "val", Some(&train))).transpose()?;
    let test = o.test.as_ref().map(|v| open(v, "test", Some(&train))).transpose()?;
    splits(train, val, test, Vec::new())
}

fn build_synthetic(options: &Options, _root: &Path) -> Result<DatasetSplits, String> {
    let o: SyntheticOptions = parse_options(options)?;
    for (key, n) in
        [("train_samples", o.train_samples), ("val_samples", o.val_samples), ("test_samples", o.test_samples)]
    {
        SyntheticDataset::check_size(&o, n).map_err(|e| format!("{key}: {e}"))?;
    }
    let train = SyntheticDataset::generate(&o, o.train_samples, 0)?;
    let val = (o.val_samples > 0).then(|| SyntheticDataset::generate(&o, o.val_samples, 1)).transpose()?;
    let test = (o.test_samples > 0).then(|| SyntheticDataset::generate(&o, o.test_samples, 2)).transpose()?;
    splits(train, val, test, Vec::new())
}

impl Plugin for BuiltinDatasets {
    fn build(&self, app: &mut App) {
        app.registry.register_dataset(
            "synthetic",
            DatasetEntry {
                build: build_synthetic,
                doc: "random normal inputs in memory: shape, targets (classes | dense), classes, target_len, train_samples, val_samples, test_samples, seed",
            },
        );
        app.registry.register_dataset(
            "npy",
            DatasetEntry {
                build: build_npy,
                doc: "memory-mapped .npy arrays: train/val/test splits, each {x, y, extra: {name: file}} (a file or a list of shards); dtype: bfloat16; classes: classes.json",
            },
        );
        app.registry.register_dataset(
            "image_folder",
            DatasetEntry {
                build: build_image_folder,
                doc: "one subfolder per class of JPEG/PNG/BMP images: train/val/test: dir; channels (1|3), cache, skip_corrupt",
            },
        );
        app.registry.register_dataset(
            "annotations",
            DatasetEntry {
                build: build_annotations,
                doc: "LAVIS-style JSON records {image, label | target | caption}: train/val/test: {file, images}; channels, cache, skip_corrupt",
            },
        );
        app.registry.register_dataset(
            "csv",
            DatasetEntry {
                build: build_csv,
                doc: "a CSV table with a header row: train/val/test: file or {file, target, features, classification}; target, features, classification",
            },
        );
    }
}
