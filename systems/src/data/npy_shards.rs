//! One logical array stored as several `.npy` shards, concatenated along the first axis. Each shard is
//! memory-mapped on its own; a row index is located by binary search over the shards' first rows.

use std::path::{Path, PathBuf};

use ecstrain_kernels::DType;
use rayon::prelude::*;
use serde::Deserialize;

use super::npy::NpyArray;

/// Gathers of at least this many values over several shards are converted in parallel (as the one-file
/// gather in [`NpyArray::read_rows_f32`] is).
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// One file, or a list of shards concatenated along the first axis (`x: [a.npy, b.npy]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged, expecting = "a .npy file path, or a list of .npy shard paths")]
pub enum FileList {
    /// A single file.
    One(PathBuf),
    /// Shards, in order.
    Many(Vec<PathBuf>),
}

impl FileList {
    /// The paths, in order.
    pub fn paths(&self) -> &[PathBuf] {
        match self {
            FileList::One(p) => std::slice::from_ref(p),
            FileList::Many(v) => v,
        }
    }
}

/// Shards of one array: every shard has the same shape after the first axis.
#[derive(Debug)]
pub struct ShardedArray {
    shards: Vec<NpyArray>,
    /// First global row of each shard, then the total row count.
    starts: Vec<usize>,
    row_shape: Vec<usize>,
}

impl ShardedArray {
    /// Opens every file of `files` (relative paths resolved against `root`), checking that each has a
    /// leading sample axis and that the shapes after it agree; `bf16_bits` reads 2-byte storage as bfloat16
    /// ([`NpyArray::open_as_bf16`]).
    pub fn open(files: &FileList, root: &Path, bf16_bits: bool) -> Result<ShardedArray, String> {
        let paths = files.paths();
        if paths.is_empty() {
            return Err("an empty list of .npy files; give a file or a non-empty list of shards".into());
        }
        let mut shards = Vec::with_capacity(paths.len());
        let mut starts = vec![0];
        for p in paths {
            let path = root.join(p);
            let a = if bf16_bits { NpyArray::open_as_bf16(&path) } else { NpyArray::open(&path) }
                .map_err(|e| e.to_string())?;
            if a.shape().is_empty() {
                return Err(format!(
                    "{}: the array must have a leading sample dimension, got a scalar",
                    path.display()
                ));
            }
            if let Some(first) = shards.first() {
                let first: &NpyArray = first;
                if a.shape()[1..] != first.shape()[1..] {
                    return Err(format!(
                        "{}: shard shape {:?} does not match {:?} of {} after the first axis (shards are \
                         concatenated along it)",
                        path.display(),
                        a.shape(),
                        first.shape(),
                        first.path().display()
                    ));
                }
            }
            starts.push(starts.last().expect("non-empty") + a.rows());
            shards.push(a);
        }
        let row_shape = shards[0].shape()[1..].to_vec();
        Ok(ShardedArray { shards, starts, row_shape })
    }

    /// The file(s) for messages: the path, or the first path and the shard count.
    pub fn describe(&self) -> String {
        match self.shards.as_slice() {
            [one] => one.path().display().to_string(),
            many => format!("{} (+{} more shards)", many[0].path().display(), many.len() - 1),
        }
    }

    /// The first shard's path.
    pub fn first_path(&self) -> &Path {
        self.shards[0].path()
    }

    /// Total rows over all shards.
    pub fn rows(&self) -> usize {
        *self.starts.last().expect("non-empty")
    }

    /// Shape of one row (the dimensions after the first axis).
    pub fn row_shape(&self) -> &[usize] {
        &self.row_shape
    }

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.row_shape.iter().product()
    }

    /// Whether every shard is stored as integers (`uint8` / `int64`): the mark of a label array.
    pub fn is_integer(&self) -> bool {
        self.shards.iter().all(|s| matches!(s.dtype(), DType::I64 | DType::U8))
    }

    /// The shard holding global `row` and the row within it. The caller has checked `row < rows()`.
    fn locate(&self, row: usize) -> (&NpyArray, usize) {
        // partition_point finds the first start > row; the shard before it holds the row. Empty shards
        // share their start with the next one and are skipped by the same rule.
        let k = self.starts.partition_point(|&s| s <= row) - 1;
        (&self.shards[k], row - self.starts[k])
    }

    /// Reads global row `row` into `out` (`row_len()` values) as f32.
    pub fn read_row_f32(&self, row: usize, out: &mut [f32]) -> Result<(), String> {
        self.check(row)?;
        let (a, local) = self.locate(row);
        a.read_row_f32(local, out).map_err(|e| e.to_string())
    }

    /// Gathers the rows `rows` into `out` (`rows.len() * row_len()` values) as f32, in parallel when large.
    pub fn read_rows_f32(&self, rows: &[usize], out: &mut [f32]) -> Result<(), String> {
        if let [one] = self.shards.as_slice() {
            return one.read_rows_f32(rows, out).map_err(|e| e.to_string());
        }
        let len = self.row_len();
        if out.len() != rows.len() * len {
            return Err(format!(
                "{}: output buffer holds {} values but the read produces {}",
                self.describe(),
                out.len(),
                rows.len() * len
            ));
        }
        if len == 0 {
            return Ok(());
        }
        if out.len() >= PARALLEL_MIN_ELEMENTS {
            out.par_chunks_mut(len).zip(rows.par_iter()).try_for_each(|(dst, &r)| self.read_row_f32(r, dst))
        } else {
            out.chunks_mut(len).zip(rows).try_for_each(|(dst, &r)| self.read_row_f32(r, dst))
        }
    }

    /// Every element as i64, shards in order (labels); floats must be whole numbers.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, String> {
        let mut out = Vec::with_capacity(self.rows() * self.row_len());
        for s in &self.shards {
            out.extend(s.to_i64_vec().map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    fn check(&self, row: usize) -> Result<(), String> {
        if row < self.rows() {
            Ok(())
        } else {
            Err(format!("{}: row {row} is out of range (the array has {} rows)", self.describe(), self.rows()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::npy::write_npy;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ecstrain-shards-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn shards_read_as_one_array() {
        let d = dir("concat");
        let data: Vec<f32> = (0..7 * 3).map(|v| v as f32).collect();
        write_npy(&d.join("all.npy"), &[7, 3], &data).unwrap();
        write_npy(&d.join("a.npy"), &[2, 3], &data[..6]).unwrap();
        write_npy::<f32>(&d.join("empty.npy"), &[0, 3], &[]).unwrap();
        write_npy(&d.join("b.npy"), &[5, 3], &data[6..]).unwrap();
        let files = FileList::Many(vec!["a.npy".into(), "empty.npy".into(), "b.npy".into()]);
        let s = ShardedArray::open(&files, &d, false).unwrap();
        let one = ShardedArray::open(&FileList::One("all.npy".into()), &d, false).unwrap();
        assert_eq!((s.rows(), s.row_len(), s.row_shape()), (7, 3, &[3][..]));
        assert!(s.describe().contains("a.npy (+2 more shards)"), "{}", s.describe());
        let rows = [6, 0, 2, 1, 5, 2];
        let (mut a, mut b) = (vec![0.0; 18], vec![0.0; 18]);
        s.read_rows_f32(&rows, &mut a).unwrap();
        one.read_rows_f32(&rows, &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..3], &data[18..21]);
        assert!(s.read_row_f32(7, &mut [0.0; 3]).unwrap_err().contains("row 7 is out of range"));
        // Large gathers take the parallel path and agree with the serial one.
        let many: Vec<usize> = (0..30_000).map(|i| (i * 5) % 7).collect();
        let (mut a, mut b) = (vec![0.0; many.len() * 3], vec![0.0; many.len() * 3]);
        s.read_rows_f32(&many, &mut a).unwrap();
        one.read_rows_f32(&many, &mut b).unwrap();
        assert_eq!(a, b);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn mismatched_shard_names_the_file() {
        let d = dir("mismatch");
        write_npy(&d.join("a.npy"), &[2, 3], &[0.0f32; 6]).unwrap();
        write_npy(&d.join("b.npy"), &[2, 4], &[0.0f32; 8]).unwrap();
        let files = FileList::Many(vec!["a.npy".into(), "b.npy".into()]);
        let e = ShardedArray::open(&files, &d, false).unwrap_err();
        assert!(e.contains("b.npy") && e.contains("[2, 4]") && e.contains("[2, 3]") && e.contains("a.npy"), "{e}");
        let e = ShardedArray::open(&FileList::Many(vec![]), &d, false).unwrap_err();
        assert!(e.contains("empty list"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
