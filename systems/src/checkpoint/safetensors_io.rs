//! Saving and loading named tensors plus string metadata in the safetensors format.
//!
//! Checkpoints hold `f32` parameters, `f64` optimizer state and `i64` counters. Saving is atomic: the
//! file is written to `<path>.tmp`, flushed to disk, renamed over `path` and the directory entry is
//! flushed too, so a crash or kill at any moment leaves either the old or the new checkpoint under
//! the final name, never a partial one.
//!
//! Format reference: <https://huggingface.co/docs/safetensors>.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, View};

/// Everything that can go wrong saving or loading a checkpoint. Every message starts with a path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file-system operation failed.
    #[error("{}: {op} failed: {source}", path.display())]
    Io {
        /// The file or directory the operation was applied to.
        path: PathBuf,
        /// What was being done, e.g. "writing the temporary file".
        op: &'static str,
        /// The underlying operating-system error.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid safetensors file (or the tensors could not be encoded as one).
    #[error("{}: not a valid safetensors checkpoint: {reason}", path.display())]
    Format {
        /// The offending file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor in the file has an element type this engine does not load.
    #[error(
        "{}: tensor '{name}' has unsupported dtype {dtype} (supported: F32, F64, I64)",
        path.display()
    )]
    UnsupportedDtype {
        /// The offending file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype as named by safetensors.
        dtype: String,
    },
    /// A tensor passed to [`save_safetensors`] is inconsistent; nothing was written.
    #[error("{}: cannot save tensor '{name}': {reason}", path.display())]
    InvalidTensor {
        /// The checkpoint that was being saved.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Borrowed tensor data to save.
#[derive(Clone, Copy, Debug)]
pub enum TensorData<'a> {
    /// 32-bit floats (parameters).
    F32(&'a [f32]),
    /// 64-bit floats (e.g. optimizer state kept in double precision).
    F64(&'a [f64]),
    /// 64-bit integers (step counters, RNG state).
    I64(&'a [i64]),
}

impl TensorData<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(d) => d.len(),
            TensorData::F64(d) => d.len(),
            TensorData::I64(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn dtype(&self) -> Dtype {
        match self {
            TensorData::F32(_) => Dtype::F32,
            TensorData::F64(_) => Dtype::F64,
            TensorData::I64(_) => Dtype::I64,
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            TensorData::F32(d) => std::mem::size_of_val(*d),
            TensorData::F64(d) => std::mem::size_of_val(*d),
            TensorData::I64(d) => std::mem::size_of_val(*d),
        }
    }

    /// The data as little-endian bytes: borrowed on little-endian hosts, converted otherwise.
    fn le_bytes(&self) -> Cow<'_, [u8]> {
        #[cfg(target_endian = "little")]
        {
            let (ptr, len) = match self {
                TensorData::F32(d) => (d.as_ptr().cast::<u8>(), std::mem::size_of_val(*d)),
                TensorData::F64(d) => (d.as_ptr().cast::<u8>(), std::mem::size_of_val(*d)),
                TensorData::I64(d) => (d.as_ptr().cast::<u8>(), std::mem::size_of_val(*d)),
            };
            // SAFETY: f32, f64 and i64 have no padding and every bit pattern is a valid u8, u8 has
            // alignment 1, and the byte slice covers exactly the borrowed elements for the same
            // lifetime. On a little-endian host the in-memory bytes are the file's bytes, so the
            // single copy is the one `safetensors::serialize` makes into its output buffer.
            Cow::Borrowed(unsafe { std::slice::from_raw_parts(ptr, len) })
        }
        #[cfg(not(target_endian = "little"))]
        {
            Cow::Owned(match self {
                TensorData::F32(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                TensorData::F64(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                TensorData::I64(d) => d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            })
        }
    }
}

impl<'a> From<&'a [f32]> for TensorData<'a> {
    fn from(data: &'a [f32]) -> Self {
        TensorData::F32(data)
    }
}

impl<'a> From<&'a [f64]> for TensorData<'a> {
    fn from(data: &'a [f64]) -> Self {
        TensorData::F64(data)
    }
}

impl<'a> From<&'a [i64]> for TensorData<'a> {
    fn from(data: &'a [i64]) -> Self {
        TensorData::I64(data)
    }
}

/// A [`View`] over borrowed tensor data, so that serializing does not copy the data beforehand.
struct BorrowedView<'a> {
    shape: &'a [usize],
    data: TensorData<'a>,
}

impl View for BorrowedView<'_> {
    fn dtype(&self) -> Dtype {
        self.data.dtype()
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        self.data.le_bytes()
    }

    fn data_len(&self) -> usize {
        self.data.byte_len()
    }
}

/// Owned tensor data read from a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadedData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// 64-bit integers.
    I64(Vec<i64>),
}

impl LoadedData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            LoadedData::F32(d) => d.len(),
            LoadedData::F64(d) => d.len(),
            LoadedData::I64(d) => d.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type's name as used in messages (`f32`, `f64`, `i64`).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            LoadedData::F32(_) => "f32",
            LoadedData::F64(_) => "f64",
            LoadedData::I64(_) => "i64",
        }
    }

    /// The data if it is `f32`.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            LoadedData::F32(d) => Some(d),
            _ => None,
        }
    }

    /// The data if it is `f64`.
    pub fn as_f64(&self) -> Option<&[f64]> {
        match self {
            LoadedData::F64(d) => Some(d),
            _ => None,
        }
    }

    /// The data if it is `i64`.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match self {
            LoadedData::I64(d) => Some(d),
            _ => None,
        }
    }
}

/// One tensor read from a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedTensor {
    /// The tensor's shape (empty for a scalar).
    pub shape: Vec<usize>,
    /// The tensor's elements in C order.
    pub data: LoadedData,
}

/// The contents of a checkpoint file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadedCheckpoint {
    /// Tensors by name.
    pub tensors: BTreeMap<String, LoadedTensor>,
    /// The string metadata stored with the tensors (the safetensors `__metadata__` map).
    pub metadata: BTreeMap<String, String>,
}

/// The temporary sibling `<path>.tmp` that a save writes before renaming.
fn temp_path(path: &Path) -> Result<PathBuf, CheckpointError> {
    let name = path.file_name().ok_or_else(|| CheckpointError::Io {
        path: path.to_path_buf(),
        op: "choosing a checkpoint file name",
        source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
    })?;
    let mut tmp = name.to_os_string();
    tmp.push(".tmp");
    Ok(path.with_file_name(tmp))
}

/// Saves `tensors` (name, shape, data) and `metadata` to `path` in the safetensors format, atomically.
///
/// Parent directories are created as needed. The file is first written to `<path>.tmp` in the same
/// directory, synced, renamed over `path`, and then the directory is synced, so that `path` always
/// holds either the previous checkpoint or the complete new one. Two saves to the same path must not
/// run concurrently (they share the temporary name). An existing `path` that is not a regular file (a
/// directory, device, FIFO or socket) is refused rather than replaced.
///
/// Names must be unique and each shape's product must equal its data length; otherwise
/// [`CheckpointError::InvalidTensor`] is returned before anything is written.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, TensorData<'_>)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let bytes = encode_safetensors(path, tensors, metadata)?;
    write_replacing(path, &bytes)
}

/// The safetensors file of `tensors` and `metadata`, in memory, checked as [`save_safetensors`] checks it;
/// `path` only names the file in errors. For writers that put the bytes in place themselves.
pub fn encode_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, TensorData<'_>)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    let invalid = |name: &str, reason: String| CheckpointError::InvalidTensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        reason,
    };
    // Validate here so that the user gets the tensor's name rather than safetensors' generic
    // "invalid shape, data type, or offset"; duplicates would otherwise produce a header with a
    // repeated JSON key that no reader accepts.
    let mut names = BTreeSet::new();
    for (name, shape, data) in tensors {
        if !names.insert(name.as_str()) {
            return Err(invalid(name, "the name is used by more than one tensor".into()));
        }
        if name == "__metadata__" {
            return Err(invalid(name, "the name is reserved by the safetensors format".into()));
        }
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if elements != Some(data.len()) {
            return Err(invalid(name, format!("shape {shape:?} does not match its {} values", data.len())));
        }
    }

    let views = tensors.iter().map(|(name, shape, data)| (name.as_str(), BorrowedView { shape, data: *data }));
    // An empty map is passed as None: safetensors 0.8 writes invalid JSON (`{},"__metadata__":{}}`)
    // for an empty metadata map when there are also no tensors.
    let info: Option<HashMap<String, String>> = (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect());
    let format = |reason: String| CheckpointError::Format { path: path.to_path_buf(), reason };
    let bytes = safetensors::serialize(views, info).map_err(|e| format(e.to_string()))?;
    // Re-parse the header (cheap: no tensor data is touched) so that an encoder bug can never
    // replace a good checkpoint with one that does not load.
    SafeTensors::read_metadata(&bytes)
        .map_err(|e| format(format!("the encoded checkpoint does not parse back: {e}")))?;
    Ok(bytes)
}

/// `bytes` to `path` through `<path>.tmp`, fsync and a rename, then the directory is synced. An existing
/// `path` that is not a regular file is refused, not replaced.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io_err = |path: &Path, op: &'static str| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, op, source }
    };
    crate::replace::check_replaceable(path).map_err(io_err(path, "checking the file to replace"))?;
    let tmp = temp_path(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent).map_err(io_err(parent, "creating the checkpoint directory"))?;

    let written = (|| {
        let mut file = File::create(&tmp).map_err(io_err(&tmp, "creating the temporary file"))?;
        file.write_all(bytes).map_err(io_err(&tmp, "writing the temporary file"))?;
        // The data must be on disk before the rename makes it visible under the final name;
        // otherwise a power loss can leave a renamed but empty file.
        file.sync_all().map_err(io_err(&tmp, "flushing the temporary file to disk"))?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err(path, "renaming the temporary file over"))
    })();
    if written.is_err() {
        // Best effort: do not leave a stale temporary file behind. The original error matters more.
        let _ = fs::remove_file(&tmp);
        return written;
    }
    sync_dir(parent)
}

/// Flushes a directory so that a rename inside it survives a crash.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    let io_err = |op: &'static str| move |source| CheckpointError::Io { path: dir.to_path_buf(), op, source };
    File::open(dir)
        .map_err(io_err("opening the checkpoint directory"))?
        .sync_all()
        .map_err(io_err("flushing the checkpoint directory to disk"))
}

/// Directories cannot be opened as files on this platform; the rename itself is atomic there.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), CheckpointError> {
    Ok(())
}

/// Loads every tensor and the metadata from a safetensors file at `path`.
///
/// The file is memory-mapped and each tensor is copied once into owned memory. Tensors of a dtype
/// other than F32, F64 or I64 give [`CheckpointError::UnsupportedDtype`].
pub fn load_safetensors(path: &Path) -> Result<LoadedCheckpoint, CheckpointError> {
    let io_err = |op: &'static str| move |source| CheckpointError::Io { path: path.to_path_buf(), op, source };
    let format = |reason: String| CheckpointError::Format { path: path.to_path_buf(), reason };
    let file = File::open(path).map_err(io_err("opening the checkpoint"))?;
    // SAFETY: read-only map; checkpoints are replaced by rename, never rewritten in place, so the
    // mapped file is not modified while it is read.
    let mmap = unsafe { Mmap::map(&file) }.map_err(io_err("memory-mapping the checkpoint"))?;
    // read_metadata checks the header and that the declared offsets exactly cover the data.
    let (header_len, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| format(e.to_string()))?;
    let data_start = 8 + header_len;

    let mut checkpoint = LoadedCheckpoint {
        metadata: meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        ..LoadedCheckpoint::default()
    };
    for (name, info) in meta.tensors() {
        let (start, end) = info.data_offsets;
        // Checked slicing: a corrupt header must give an error, not an out-of-bounds panic.
        let bytes = data_start
            .checked_add(start)
            .zip(data_start.checked_add(end))
            .and_then(|(s, e)| mmap.get(s..e))
            .ok_or_else(|| format(format!("tensor '{name}' points outside the file")))?;
        let data = match info.dtype {
            Dtype::F32 => LoadedData::F32(
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4-byte chunk"))).collect(),
            ),
            Dtype::F64 => LoadedData::F64(
                bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk"))).collect(),
            ),
            Dtype::I64 => LoadedData::I64(
                bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8-byte chunk"))).collect(),
            ),
            other => {
                return Err(CheckpointError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name,
                    dtype: format!("{other:?}"),
                })
            }
        };
        checkpoint.tensors.insert(name, LoadedTensor { shape: info.shape.clone(), data });
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("ecstrain-ckpt-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn round_trip_all_dtypes_with_metadata() {
        let dir = TempDir::new("roundtrip");
        // Nested, not yet existing directories are created.
        let path = dir.0.join("run/ckpt/step_10.safetensors");
        let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
        let b = [f32::MIN_POSITIVE, -0.0, f32::MAX];
        let m: Vec<f64> = vec![1e-300, -2.5, std::f64::consts::PI];
        let step = [i64::MIN, 0, i64::MAX];
        let scalar = [7.5f32];
        let tensors = vec![
            ("layer0.weight".to_string(), vec![3, 4], TensorData::F32(&w)),
            ("layer0.bias".to_string(), vec![3], TensorData::from(&b[..])),
            ("adam.m".to_string(), vec![3, 1], TensorData::F64(&m)),
            ("clock".to_string(), vec![3], TensorData::I64(&step)),
            ("loss_scale".to_string(), vec![], TensorData::F32(&scalar)),
            ("empty".to_string(), vec![0, 5], TensorData::F32(&[])),
        ];
        let metadata = meta(&[("step", "10"), ("config", "{\"lr\": 0.1}"), ("unicode", "é✓")]);
        save_safetensors(&path, &tensors, &metadata).unwrap();

        let loaded = load_safetensors(&path).unwrap();
        assert_eq!(loaded.metadata, metadata);
        assert_eq!(loaded.tensors.len(), tensors.len());
        let get = |name: &str| &loaded.tensors[name];
        assert_eq!(get("layer0.weight").shape, vec![3, 4]);
        assert_eq!(get("layer0.weight").data.as_f32().unwrap(), w.as_slice());
        let bias = get("layer0.bias").data.as_f32().unwrap();
        assert_eq!(bias[1].to_bits(), (-0.0f32).to_bits());
        assert_eq!(bias, &b);
        assert_eq!(get("adam.m").shape, vec![3, 1]);
        assert_eq!(get("adam.m").data, LoadedData::F64(m.clone()));
        assert_eq!(get("clock").data.as_i64().unwrap(), &step);
        assert_eq!(get("loss_scale").shape, Vec::<usize>::new());
        assert_eq!(get("loss_scale").data.as_f32().unwrap(), &scalar);
        assert_eq!(get("empty").shape, vec![0, 5]);
        assert!(get("empty").data.is_empty());
        assert_eq!(get("clock").data.dtype_name(), "i64");

        // The file is a standard safetensors file that the crate itself reads.
        let bytes = fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("layer0.weight").unwrap().dtype(), Dtype::F32);
    }

    #[test]
    fn no_temp_file_remains_and_overwrite_replaces() {
        let dir = TempDir::new("overwrite");
        let path = dir.0.join("model.safetensors");
        let first = vec![1.0f32; 100];
        save_safetensors(&path, &[("w".to_string(), vec![100], TensorData::F32(&first))], &meta(&[("step", "1")]))
            .unwrap();
        let tmp = dir.0.join("model.safetensors.tmp");
        assert!(!tmp.exists());

        // Overwrite with a smaller file holding different tensors.
        let second = [2i64, 3];
        save_safetensors(&path, &[("n".to_string(), vec![2], TensorData::I64(&second))], &meta(&[("step", "2")]))
            .unwrap();
        assert!(!tmp.exists());
        let entries: Vec<_> = fs::read_dir(&dir.0).unwrap().collect();
        assert_eq!(entries.len(), 1, "only the checkpoint itself is left");
        let loaded = load_safetensors(&path).unwrap();
        assert_eq!(loaded.metadata, meta(&[("step", "2")]));
        assert_eq!(loaded.tensors.keys().collect::<Vec<_>>(), vec!["n"]);
        assert_eq!(loaded.tensors["n"].data, LoadedData::I64(vec![2, 3]));

        // A stale temporary file from a killed save does not block the next save.
        fs::write(&tmp, b"partial garbage").unwrap();
        save_safetensors(&path, &[], &BTreeMap::new()).unwrap();
        assert!(!tmp.exists());
        let loaded = load_safetensors(&path).unwrap();
        assert!(loaded.tensors.is_empty() && loaded.metadata.is_empty());
    }

    #[test]
    fn invalid_tensors_are_rejected_before_writing() {
        let dir = TempDir::new("invalid");
        let path = dir.0.join("bad.safetensors");
        let data = [1.0f32; 6];
        let cases = [
            (vec![("w".to_string(), vec![2, 2], TensorData::F32(&data))], "does not match its 6 values"),
            (
                vec![
                    ("w".to_string(), vec![6], TensorData::F32(&data)),
                    ("w".to_string(), vec![2, 3], TensorData::F32(&data)),
                ],
                "more than one tensor",
            ),
            (vec![("__metadata__".to_string(), vec![6], TensorData::F32(&data))], "reserved"),
        ];
        for (tensors, problem) in cases {
            let err = save_safetensors(&path, &tensors, &BTreeMap::new()).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, CheckpointError::InvalidTensor { .. }), "{msg}");
            assert!(msg.starts_with(&path.display().to_string()) && msg.contains(problem), "{msg}");
            assert!(!path.exists());
        }
    }

    #[test]
    fn corrupt_files_give_errors() {
        let dir = TempDir::new("corrupt");
        let good = dir.0.join("good.safetensors");
        let w = [1.0f32, 2.0, 3.0, 4.0];
        save_safetensors(&good, &[("w".to_string(), vec![4], TensorData::F32(&w))], &meta(&[("k", "v")])).unwrap();
        let bytes = fs::read(&good).unwrap();

        let mut huge_len = bytes.clone();
        huge_len[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut bad_json = bytes.clone();
        bad_json[8] = b'[';
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short", vec![1, 2, 3]),
            ("truncated", bytes[..bytes.len() - 3].to_vec()),
            ("extra", [&bytes[..], &[0u8; 4]].concat()),
            ("header-cut", bytes[..20].to_vec()),
            ("huge-len", huge_len),
            ("bad-json", bad_json),
            ("text", b"this is not a checkpoint at all".to_vec()),
        ];
        for (name, content) in cases {
            let path = dir.0.join(format!("{name}.safetensors"));
            fs::write(&path, &content).unwrap();
            let err = load_safetensors(&path).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, CheckpointError::Format { .. }), "{name}: {msg}");
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            assert!(msg.contains("not a valid safetensors checkpoint"), "{msg}");
        }

        let missing = dir.0.join("missing.safetensors");
        let err = load_safetensors(&missing).unwrap_err();
        assert!(matches!(&err, CheckpointError::Io { source, .. }
            if source.kind() == io::ErrorKind::NotFound));
        assert!(err.to_string().starts_with(&missing.display().to_string()));
    }

    #[test]
    fn unsupported_dtype_is_reported_by_name() {
        let dir = TempDir::new("dtype");
        let path = dir.0.join("i32.safetensors");
        let header = br#"{"counts":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0; 8]);
        fs::write(&path, &bytes).unwrap();
        let err = load_safetensors(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CheckpointError::UnsupportedDtype { .. }), "{msg}");
        assert!(msg.contains("'counts'") && msg.contains("I32"), "{msg}");
    }
}
