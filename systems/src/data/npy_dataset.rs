//! The `npy` dataset: inputs, targets and optional extra per-sample arrays in memory-mapped `.npy` files,
//! each one file or a list of shards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ecstrain_components::{Extras, Targets};
use serde::Deserialize;

use super::npy_shards::{FileList, ShardedArray};
use super::sample::Sample;
use super::{DataError, Dataset, TargetSpec};

/// Options of the `npy` dataset (`datasets.<name>` minus `builder`, `root`, `processors`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NpyOptions {
    /// Training split.
    pub train: NpySplitFiles,
    /// Validation split.
    #[serde(default)]
    pub val: Option<NpySplitFiles>,
    /// Test split, through the eval processors: read by `engine eval --split test` and `engine predict --split test`, never by training.
    #[serde(default)]
    pub test: Option<NpySplitFiles>,
    /// Element type of the inputs when the file cannot name it: `bfloat16` reads `<u2` / `<i2` / `|V2`
    /// storage as bfloat16 bits. Absent: the dtype in each file's header.
    #[serde(default)]
    pub dtype: Option<String>,
    /// A `classes.json` (`{"name": index, ...}`, as `engine data pack` writes) naming the classes.
    #[serde(default)]
    pub classes: Option<PathBuf>,
}

impl NpyOptions {
    /// Whether the inputs are to be read as bfloat16 bits; an unknown `dtype` is an error naming the choices.
    pub fn bf16_inputs(&self) -> Result<bool, String> {
        match self.dtype.as_deref() {
            None => Ok(false),
            Some("bfloat16" | "bf16") => Ok(true),
            Some(other) => Err(format!(
                "dtype: unknown input dtype `{other}`; valid choices: bfloat16 (omit `dtype` to use the dtype \
                 each file's header names)"
            )),
        }
    }
}

/// Files of one split of an `npy` dataset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NpySplitFiles {
    /// Inputs: an array `[N, ...]` (float32, float64, float16, bfloat16, uint8 or int64), or shards of it.
    pub x: FileList,
    /// Targets: `[N]` integer class labels, or `[N, ...]` floats for dense targets; or shards of it.
    pub y: FileList,
    /// Extra per-sample arrays `[N, ...]` by name, gathered into `Batch::extras`.
    #[serde(default)]
    pub extra: BTreeMap<String, FileList>,
}

/// The `npy` dataset of one split.
pub struct NpyDataset {
    x: ShardedArray,
    sample_shape: Vec<usize>,
    labels: Option<Vec<i64>>,
    num_classes: usize,
    dense: Option<ShardedArray>,
    extras: Vec<(String, ShardedArray)>,
    class_names: Option<Vec<String>>,
    /// The `y` file(s), named by messages about the targets.
    targets_origin: String,
}

/// "x (a.npy) has 10 samples but y (b.npy) has 9": the message for arrays of different lengths.
fn length_mismatch(a_name: &str, a: &ShardedArray, b_name: &str, b: &ShardedArray) -> String {
    format!(
        "{a_name} ({}) has {} samples but {b_name} ({}) has {}: every array of a split must have the same first \
         dimension",
        a.describe(),
        a.rows(),
        b.describe(),
        b.rows()
    )
}

impl NpyDataset {
    /// Opens a split, checking that every array has the same number of samples and that labels are valid.
    /// `bf16_inputs` reads `x` as bfloat16 bits (the `dtype: bfloat16` option).
    pub fn open(files: &NpySplitFiles, root: &Path, bf16_inputs: bool) -> Result<NpyDataset, DataError> {
        let x = ShardedArray::open(&files.x, root, bf16_inputs)?;
        let y = ShardedArray::open(&files.y, root, false)?;
        if y.rows() != x.rows() {
            return Err(length_mismatch("x", &x, "y", &y));
        }
        let mut extras = Vec::with_capacity(files.extra.len());
        for (name, f) in &files.extra {
            let a = ShardedArray::open(f, root, false)?;
            if a.rows() != x.rows() {
                return Err(length_mismatch("x", &x, &format!("extra `{name}`"), &a));
            }
            extras.push((name.clone(), a));
        }
        let sample_shape = x.row_shape().to_vec();
        let targets_origin = y.describe();
        let (labels, num_classes, dense) = if y.row_shape().is_empty() && y.is_integer() {
            let labels = y.to_i64_vec()?;
            if let Some((row, &bad)) = labels.iter().enumerate().find(|(_, &l)| l < 0) {
                return Err(format!("{}: label {bad} at row {row} is negative", y.describe()));
            }
            let num_classes = labels.iter().copied().max().map(|m| m as usize + 1).unwrap_or(0);
            (Some(labels), num_classes, None)
        } else {
            (None, 0, Some(y))
        };
        Ok(NpyDataset { x, sample_shape, labels, num_classes, dense, extras, class_names: None, targets_origin })
    }

    /// Names the classes (from a `classes.json`); every label must have a name.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<NpyDataset, DataError> {
        if self.labels.is_none() {
            return Err(format!("{}: class names given but the targets are not class labels", self.targets_origin));
        }
        if self.num_classes > names.len() {
            return Err(format!(
                "{}: labels go up to {} but only {} class names are given",
                self.targets_origin,
                self.num_classes - 1,
                names.len()
            ));
        }
        self.num_classes = names.len();
        self.class_names = Some(names);
        Ok(self)
    }
}

/// Reads a `classes.json` of `{"name": index}` pairs into names by index (indices 0..n, each once).
pub fn read_class_map(path: &Path) -> Result<Vec<String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let map: BTreeMap<String, usize> = serde_json::from_str(&text)
        .map_err(|e| format!("{}: expected a JSON object of class name -> index: {e}", path.display()))?;
    let mut names = vec![None; map.len()];
    for (name, i) in map {
        match names.get_mut(i) {
            Some(slot @ None) => *slot = Some(name),
            _ => {
                return Err(format!(
                    "{}: class `{name}` has index {i}; indices must be 0..{} with each used once",
                    path.display(),
                    names.len()
                ))
            }
        }
    }
    Ok(names.into_iter().map(|n| n.expect("every index filled")).collect())
}

/// The JSON `classes.json` holds: `{"name": index, ...}` in index order (the class-to-index map of
/// torchvision's `ImageFolder`).
pub fn class_map_json(names: &[String]) -> String {
    let entries: Vec<String> =
        names.iter().enumerate().map(|(i, n)| format!("  {}: {i}", serde_json::Value::String(n.clone()))).collect();
    format!("{{\n{}\n}}\n", entries.join(",\n"))
}

impl Dataset for NpyDataset {
    fn describe(&self) -> String {
        self.x.describe()
    }
    fn describe_targets(&self) -> String {
        self.targets_origin.clone()
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
    fn class_names(&self) -> Option<Vec<String>> {
        self.class_names.clone()
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        let row = out.reset(&self.sample_shape);
        self.x.read_row_f32(index, row)
    }
    fn read_inputs(&self, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        self.x.read_rows_f32(indices, out)
    }
    fn extra_specs(&self) -> Vec<(String, usize)> {
        self.extras.iter().map(|(n, a)| (n.clone(), a.row_len())).collect()
    }
    fn read_extras(&self, indices: &[usize], out: &mut Extras) -> Result<(), DataError> {
        for ((_, a), dst) in self.extras.iter().zip(out.0.iter_mut()) {
            a.read_rows_f32(indices, &mut dst.values[..indices.len() * dst.len])?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::npy::write_npy;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ecstrain-npyds-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn split(x: &[&str], y: &[&str], extra: &[(&str, &str)]) -> NpySplitFiles {
        let list = |v: &[&str]| FileList::Many(v.iter().map(PathBuf::from).collect());
        NpySplitFiles {
            x: list(x),
            y: list(y),
            extra: extra.iter().map(|(n, f)| (n.to_string(), FileList::One(f.into()))).collect(),
        }
    }

    #[test]
    fn extras_are_gathered_by_name() {
        let d = dir("extras");
        write_npy(&d.join("x.npy"), &[4, 2], &[0.0f32, 1., 2., 3., 4., 5., 6., 7.]).unwrap();
        write_npy(&d.join("y.npy"), &[4], &[0i64, 1, 1, 0]).unwrap();
        write_npy(&d.join("w.npy"), &[4], &[0.5f32, 1.5, 2.5, 3.5]).unwrap();
        write_npy(&d.join("box.npy"), &[4, 3], &(0..12).map(|v| v as f64).collect::<Vec<_>>()).unwrap();
        let ds =
            NpyDataset::open(&split(&["x.npy"], &["y.npy"], &[("w", "w.npy"), ("box", "box.npy")]), &d, false).unwrap();
        let specs = ds.extra_specs();
        assert_eq!(specs, vec![("box".to_string(), 3), ("w".to_string(), 1)]);
        let mut extras = Extras::with_capacity(&specs, 3);
        ds.read_extras(&[3, 1], &mut extras).unwrap();
        assert_eq!(&extras.get("w").unwrap().values[..2], &[3.5, 1.5]);
        assert_eq!(&extras.get("box").unwrap().values[..6], &[9., 10., 11., 3., 4., 5.]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn different_lengths_name_both_files() {
        let d = dir("lengths");
        write_npy(&d.join("x.npy"), &[4, 2], &[0.0f32; 8]).unwrap();
        write_npy(&d.join("y.npy"), &[3], &[0i64; 3]).unwrap();
        write_npy(&d.join("y4.npy"), &[4], &[0i64; 4]).unwrap();
        write_npy(&d.join("w.npy"), &[5], &[0.0f32; 5]).unwrap();
        let e = NpyDataset::open(&split(&["x.npy"], &["y.npy"], &[]), &d, false).err().unwrap();
        assert!(
            e.contains("x.npy") && e.contains("has 4 samples") && e.contains("y.npy") && e.contains("has 3"),
            "{e}"
        );
        let e = NpyDataset::open(&split(&["x.npy"], &["y4.npy"], &[("w", "w.npy")]), &d, false).err().unwrap();
        assert!(e.contains("extra `w`") && e.contains("w.npy") && e.contains("has 5"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn class_maps_round_trip_and_are_checked() {
        let d = dir("classes");
        let names: Vec<String> = ["cat", "dog \"big\""].iter().map(|s| s.to_string()).collect();
        std::fs::write(d.join("c.json"), class_map_json(&names)).unwrap();
        assert_eq!(read_class_map(&d.join("c.json")).unwrap(), names);
        std::fs::write(d.join("bad.json"), r#"{"a": 0, "b": 2}"#).unwrap();
        let e = read_class_map(&d.join("bad.json")).unwrap_err();
        assert!(e.contains("bad.json") && e.contains("`b` has index 2"), "{e}");
        write_npy(&d.join("x.npy"), &[3, 1], &[0.0f32; 3]).unwrap();
        write_npy(&d.join("y.npy"), &[3], &[0i64, 2, 1]).unwrap();
        let ds = NpyDataset::open(&split(&["x.npy"], &["y.npy"], &[]), &d, false).unwrap();
        let e = ds.with_class_names(names).err().unwrap();
        assert!(e.contains("labels go up to 2") && e.contains("only 2 class names"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bf16_option_reads_u16_bits() {
        let d = dir("bf16");
        let values = [1.0f32, -2.5, 3.140625, 0.0];
        let bits: Vec<u8> = values.iter().flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes()).collect();
        let header = "{'descr': '<u2', 'fortran_order': False, 'shape': (4, 1), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&bits);
        std::fs::write(d.join("x.npy"), bytes).unwrap();
        write_npy(&d.join("y.npy"), &[4], &[0i64; 4]).unwrap();
        let files = split(&["x.npy"], &["y.npy"], &[]);
        let e = NpyDataset::open(&files, &d, false).err().unwrap();
        assert!(e.contains("unsupported dtype '<u2'") && e.contains("dtype: bfloat16"), "{e}");
        let ds = NpyDataset::open(&files, &d, true).unwrap();
        let mut out = vec![0.0; 4];
        ds.read_inputs(&[0, 1, 2, 3], &mut out).unwrap();
        assert_eq!(out, values);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
