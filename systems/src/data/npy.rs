//! Memory-mapped reader and simple writer for NumPy `.npy` files.
//!
//! The reader handles format versions 1.0, 2.0 and 3.0 of little-endian, C-ordered arrays of
//! `float32`, `float64`, `float16`, `bfloat16`, `uint8` and `int64`. NumPy has no bfloat16 dtype: the
//! `ml_dtypes` package saves one as a 2-byte void (`<V2`), which is read as bfloat16, and
//! [`NpyArray::open_as_bf16`] reinterprets `uint16` / `int16` storage holding bfloat16 bits. The file is mapped rather than read so that a data set
//! larger than RAM can be sampled row by row; rows are converted to `f32` on the fly while a batch is
//! assembled.
//!
//! Every malformed file is reported as an [`NpyError`] whose message starts with the file's path, so
//! that a user looking at a failed run knows which file to regenerate and why.
//!
//! Format reference: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use ecstrain_kernels::DType;
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;

/// The magic string every `.npy` file starts with.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The dtypes this reader understands, as quoted in [`NpyError::UnsupportedDtype`].
pub const SUPPORTED_DTYPES: &str = "float32 (<f4), float64 (<f8), float16 (<f2), bfloat16 (<V2 as ml_dtypes \
     saves it, or <u2 / <i2 bits with the dataset option dtype: bfloat16), uint8 (|u1), int64 (<i8)";

/// The storage [`NpyArray::open_as_bf16`] reinterprets as bfloat16 bits.
pub const BF16_STORAGE: &str = "2-byte storage holding bfloat16 bits: <u2, <i2, |V2, <V2";

/// Gathers of at least this many elements are converted in parallel; below it rayon's scheduling
/// overhead costs more than the conversion itself.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;

/// Deepest nesting of tuples/lists accepted in a header. Real headers nest at most a few levels
/// (structured dtypes); the limit keeps a hostile header from overflowing the parser's stack.
const MAX_HEADER_DEPTH: usize = 32;

/// Everything that can go wrong when opening or reading a `.npy` file.
///
/// Every message starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be opened, inspected or memory-mapped.
    #[error("{}: cannot read file: {source}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying operating-system error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the `\x93NUMPY` magic string.
    #[error(
        "{}: not a NumPy .npy file (it does not start with the \\x93NUMPY magic string; \
         save arrays with numpy.save)",
        path.display()
    )]
    NotNpy {
        /// The offending file.
        path: PathBuf,
    },
    /// The header could not be parsed or is inconsistent.
    #[error("{}: malformed .npy header: {reason}", path.display())]
    BadHeader {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with the header.
        reason: String,
    },
    /// The array's element type is not one this reader handles.
    #[error(
        "{}: unsupported dtype '{descr}' (supported: {supported}); convert the array with \
         numpy's .astype(...) before saving",
        path.display()
    )]
    UnsupportedDtype {
        /// The offending file.
        path: PathBuf,
        /// The `descr` field as written in the header.
        descr: String,
        /// The list of supported dtypes ([`SUPPORTED_DTYPES`]).
        supported: &'static str,
    },
    /// The array is stored in Fortran (column-major) order.
    #[error(
        "{}: array is stored in Fortran order; only C order is supported \
         (save numpy.ascontiguousarray(a) instead)",
        path.display()
    )]
    FortranOrder {
        /// The offending file.
        path: PathBuf,
    },
    /// The file ends before the header or data it announces.
    #[error(
        "{}: file is truncated: header and data need {expected_bytes} bytes but the file has \
         {actual_bytes} (was it copied or written incompletely?)",
        path.display()
    )]
    Truncated {
        /// The offending file.
        path: PathBuf,
        /// The file size the header implies.
        expected_bytes: u64,
        /// The actual file size.
        actual_bytes: u64,
    },
    /// A label array holds a floating-point value that is not a whole number.
    #[error(
        "{}: label at index {row} is {value}, which is not an integer class index",
        path.display()
    )]
    NotIntegerLabels {
        /// The offending file.
        path: PathBuf,
        /// Index of the offending element.
        row: usize,
        /// The non-integral value.
        value: f64,
    },
    /// Labels were requested from an array that has more than one value per row.
    #[error(
        "{}: expected a 1-d label array but the shape is {shape:?} ({row_len} values per row)",
        path.display()
    )]
    NotLabelArray {
        /// The offending file.
        path: PathBuf,
        /// The array's shape.
        shape: Vec<usize>,
        /// Values per row.
        row_len: usize,
    },
    /// A row index past the end of the array was requested.
    #[error("{}: row {row} is out of range (the array has {rows} rows)", path.display())]
    RowOutOfRange {
        /// The file being read.
        path: PathBuf,
        /// The requested row.
        row: usize,
        /// The number of rows in the array.
        rows: usize,
    },
    /// The output buffer passed to a read has the wrong length.
    #[error(
        "{}: output buffer holds {actual} values but the read produces {expected}",
        path.display()
    )]
    BufferLength {
        /// The file being read.
        path: PathBuf,
        /// Values the read produces.
        expected: usize,
        /// Length of the buffer passed in.
        actual: usize,
    },
}

/// A `.npy` array mapped into memory.
///
/// Opening validates the whole header and the file size, so every later read is in bounds.
/// Rows are the slices along the first axis; a 0-d array counts as one row of one value.
#[derive(Debug)]
pub struct NpyArray {
    path: PathBuf,
    dtype: DType,
    shape: Vec<usize>,
    mmap: Mmap,
    data_offset: usize,
    /// Length of the data in bytes (shape product × element size); trailing bytes are ignored.
    data_len: usize,
    /// Bytes of mapped pages touched by reads since the mapping's pages were last released.
    touched: AtomicUsize,
    /// Release the mapped pages after this many touched bytes (see [`RELEASE_BYTES`]).
    release_every: usize,
}

/// Pages of a mapped file that a process has read count in its resident set size until they are unmapped,
/// so one epoch over a 2 GiB file would leave the trainer at 2 GiB RSS (the kernel can still reclaim them,
/// but schedulers and OOM killers see the figure). After this many bytes of reads the array tells the kernel
/// it no longer needs its pages (`madvise(MADV_DONTNEED)`): they leave the process but stay in the page
/// cache, so the next read of them is a cheap minor fault, not a disk read.
pub const RELEASE_BYTES: usize = 256 << 20;

/// What one row read can make resident: a page fault on a file mapping maps the pages around it too (Linux's
/// fault-around window), and with large page-cache folios the whole folio, up to 2 MiB; measured on a 2 GiB
/// file of 784-byte rows, 64 KiB per row still let the RSS reach 1.7 GiB.
const PAGE: usize = 2 << 20;

impl NpyArray {
    /// Opens and memory-maps `path`, validating its header and size.
    ///
    /// Trailing bytes after the data are ignored, as `numpy.load` does.
    pub fn open(path: &Path) -> Result<NpyArray, NpyError> {
        NpyArray::open_impl(path, false)
    }

    /// Opens `path` like [`NpyArray::open`], reading its elements as bfloat16 bit patterns: the storage must
    /// be 2 bytes wide (`<u2`, `<i2` or a 2-byte void, as [`BF16_STORAGE`] lists), since NumPy itself cannot
    /// name bfloat16 and tools store it under those types.
    pub fn open_as_bf16(path: &Path) -> Result<NpyArray, NpyError> {
        NpyArray::open_impl(path, true)
    }

    fn open_impl(path: &Path, bf16_bits: bool) -> Result<NpyArray, NpyError> {
        let io_err = |source| NpyError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        // A directory opens on Linux; mapping it would fail with "No such device", which says nothing useful.
        if file.metadata().map_err(io_err)?.is_dir() {
            return Err(io_err(io::Error::new(io::ErrorKind::IsADirectory, "it is a directory, not a .npy file")));
        }
        // SAFETY: the map is read-only. Mapping is only unsound if another process truncates or
        // rewrites the file while it is mapped; data files are not modified during training, which is
        // the same assumption every mmap-based loader (numpy.memmap included) makes.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let header = parse_file(path, &mmap, bf16_bits)?;
        Ok(NpyArray {
            path: path.to_path_buf(),
            dtype: header.dtype,
            shape: header.shape,
            mmap,
            data_offset: header.data_offset,
            data_len: header.data_len,
            touched: AtomicUsize::new(0),
            release_every: RELEASE_BYTES,
        })
    }

    /// Counts `rows` row reads towards the release threshold and releases the mapped pages when it is
    /// reached. Concurrent readers are unaffected: the mapping is read-only and shared, so a released page
    /// is mapped again from the page cache, with the same bytes, on its next read.
    fn note_reads(&self, rows: usize) {
        let bytes = rows.saturating_mul((self.row_len() * self.dtype.size_in_bytes()).max(PAGE));
        if self.touched.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes) >= self.release_every {
            self.touched.store(0, Ordering::Relaxed);
            // SAFETY: DONTNEED on a read-only shared file mapping only drops this process's page-table
            // entries; later reads fault the unchanged file contents back in. Failure is harmless (the
            // pages just stay resident), so the result is ignored.
            let _ = unsafe { self.mmap.unchecked_advise(UncheckedAdvice::DontNeed) };
        }
    }

    /// The file this array was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The element type stored in the file.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The array's shape (empty for a 0-d array).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of rows: the first dimension, or 1 for a 0-d array.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Number of values per row: the product of all dimensions but the first (1 for 0-d and 1-d).
    pub fn row_len(&self) -> usize {
        // Cannot overflow: open() checked that the product of all dimensions fits.
        self.shape.iter().skip(1).product()
    }

    /// Total number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw little-endian data bytes (without header), in C order.
    ///
    /// The slice is not guaranteed to be aligned for the element type.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap[self.data_offset..self.data_offset + self.data_len]
    }

    /// The raw bytes of one row. The caller has checked `row < rows()`.
    fn row_bytes(&self, row: usize) -> &[u8] {
        let row_bytes = self.row_len() * self.dtype.size_in_bytes();
        &self.bytes()[row * row_bytes..(row + 1) * row_bytes]
    }

    fn check_row(&self, row: usize) -> Result<(), NpyError> {
        if row < self.rows() {
            Ok(())
        } else {
            Err(NpyError::RowOutOfRange { path: self.path.clone(), row, rows: self.rows() })
        }
    }

    fn check_buffer(&self, expected: usize, actual: usize) -> Result<(), NpyError> {
        if expected == actual {
            Ok(())
        } else {
            Err(NpyError::BufferLength { path: self.path.clone(), expected, actual })
        }
    }

    /// Reads row `row` into `out`, converting every value to `f32`.
    ///
    /// `out.len()` must equal [`row_len`](Self::row_len). Integers are converted with `as`
    /// (no scaling: `uint8` pixels stay in 0..=255). A bad row index or buffer length is reported
    /// as an error rather than a panic.
    pub fn read_row_f32(&self, row: usize, out: &mut [f32]) -> Result<(), NpyError> {
        self.check_row(row)?;
        self.check_buffer(self.row_len(), out.len())?;
        convert_to_f32(self.dtype, self.row_bytes(row), out);
        self.note_reads(1);
        Ok(())
    }

    /// Gathers the rows listed in `rows` (in that order, repeats allowed) into `out` as `f32`.
    ///
    /// `out.len()` must equal `rows.len() * row_len()`. Large gathers are converted in parallel.
    /// All indices are checked before anything is written.
    pub fn read_rows_f32(&self, rows: &[usize], out: &mut [f32]) -> Result<(), NpyError> {
        for &row in rows {
            self.check_row(row)?;
        }
        let row_len = self.row_len();
        // rows.len() * row_len cannot overflow when it matches a real buffer; saturating keeps an
        // absurd request from wrapping around to a small number that might match.
        let expected = rows.len().saturating_mul(row_len);
        self.check_buffer(expected, out.len())?;
        if row_len == 0 {
            return Ok(());
        }
        if out.len() >= PARALLEL_MIN_ELEMENTS {
            out.par_chunks_mut(row_len)
                .zip(rows.par_iter())
                .for_each(|(dst, &row)| convert_to_f32(self.dtype, self.row_bytes(row), dst));
        } else {
            for (dst, &row) in out.chunks_mut(row_len).zip(rows) {
                convert_to_f32(self.dtype, self.row_bytes(row), dst);
            }
        }
        self.note_reads(rows.len());
        Ok(())
    }

    /// The integer class label of row `row` of a label array.
    ///
    /// The array must hold one value per row (shape `(N,)`, `(N, 1)` or `()`). `uint8` and `int64`
    /// are returned as is; floating-point values are accepted when they are whole numbers.
    pub fn label(&self, row: usize) -> Result<i64, NpyError> {
        let row_len = self.row_len();
        if row_len != 1 {
            return Err(NpyError::NotLabelArray { path: self.path.clone(), shape: self.shape.clone(), row_len });
        }
        self.check_row(row)?;
        self.element_to_i64(self.row_bytes(row), row)
    }

    /// All elements converted to `f32`, in C order.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.len()];
        let size = self.dtype.size_in_bytes();
        let bytes = self.bytes();
        if out.len() >= PARALLEL_MIN_ELEMENTS {
            // Chunks of whole elements so that each task converts an independent span.
            const CHUNK: usize = 1 << 14;
            out.par_chunks_mut(CHUNK)
                .zip(bytes.par_chunks(CHUNK * size))
                .for_each(|(dst, src)| convert_to_f32(self.dtype, src, dst));
        } else {
            convert_to_f32(self.dtype, bytes, &mut out);
        }
        out
    }

    /// All elements converted to `i64`, in C order.
    ///
    /// Floating-point values must be whole numbers; otherwise the error names the flat index of the
    /// first offending element.
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, NpyError> {
        let size = self.dtype.size_in_bytes();
        self.bytes().chunks_exact(size).enumerate().map(|(index, chunk)| self.element_to_i64(chunk, index)).collect()
    }

    /// Converts one element (exactly `size_in_bytes` bytes) to `i64`; `index` is used in errors.
    fn element_to_i64(&self, bytes: &[u8], index: usize) -> Result<i64, NpyError> {
        let float = |value: f64| {
            // The range check keeps `as` from silently saturating huge values; -2^63 is exact in
            // f64 and 2^63 is the first value out of range.
            if value.is_finite() && value.fract() == 0.0 && value >= i64::MIN as f64 && value < -(i64::MIN as f64) {
                Ok(value as i64)
            } else {
                Err(NpyError::NotIntegerLabels { path: self.path.clone(), row: index, value })
            }
        };
        match self.dtype {
            DType::U8 => Ok(i64::from(bytes[0])),
            DType::I64 => Ok(i64::from_le_bytes(le_array(bytes))),
            DType::F32 => float(f64::from(f32::from_le_bytes(le_array(bytes)))),
            DType::F64 => float(f64::from_le_bytes(le_array(bytes))),
            DType::F16 => float(f64::from(half::f16::from_bits(u16::from_le_bytes(le_array(bytes))))),
            DType::BF16 => float(f64::from(half::bf16::from_bits(u16::from_le_bytes(le_array(bytes))))),
        }
    }
}

/// Copies the first `N` bytes into an array; callers pass chunks of exactly the element size.
fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(&bytes[..N]);
    array
}

/// Converts little-endian elements in `src` to `f32` in `dst` (`dst.len()` elements).
///
/// Elements are decoded from byte chunks with `from_le_bytes` because the data offset in the file
/// is not guaranteed to be aligned for 8-byte types, so casting the pointer would be undefined.
fn convert_to_f32(dtype: DType, src: &[u8], dst: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes(le_array(s));
            }
        }
        DType::F64 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(8)) {
                *d = f64::from_le_bytes(le_array(s)) as f32;
            }
        }
        DType::U8 => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = f32::from(s);
            }
        }
        DType::I64 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(8)) {
                *d = i64::from_le_bytes(le_array(s)) as f32;
            }
        }
        // Both widen exactly; element by element because the data may be unaligned for u16.
        DType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_bits(u16::from_le_bytes(le_array(s))).to_f32();
            }
        }
        DType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::bf16::from_bits(u16::from_le_bytes(le_array(s))).to_f32();
            }
        }
    }
}

/// The validated contents of a header.
struct Header {
    dtype: DType,
    shape: Vec<usize>,
    data_offset: usize,
    data_len: usize,
}

/// Validates the preamble, header and size of a mapped file.
fn parse_file(path: &Path, bytes: &[u8], bf16_bits: bool) -> Result<Header, NpyError> {
    let file_len = bytes.len() as u64;
    let truncated =
        |expected_bytes: u64| NpyError::Truncated { path: path.to_path_buf(), expected_bytes, actual_bytes: file_len };
    let bad = |reason: String| NpyError::BadHeader { path: path.to_path_buf(), reason };

    // A non-empty prefix of the magic string is a cut-off .npy file; anything else is not one.
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes.is_empty() || bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(NpyError::NotNpy { path: path.to_path_buf() });
    }
    if bytes.len() < 8 {
        return Err(truncated(10));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    // Version 1.0 stores the header length in 2 bytes; 2.0 and 3.0 (UTF-8 header) in 4.
    let len_bytes = match (major, minor) {
        (1, 0) => 2,
        (2, 0) | (3, 0) => 4,
        _ => return Err(bad(format!("unsupported format version {major}.{minor} (supported: 1.0, 2.0, 3.0)"))),
    };
    let header_start = 8 + len_bytes;
    if bytes.len() < header_start {
        return Err(truncated(header_start as u64));
    }
    let header_len = if len_bytes == 2 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
    };
    let data_offset = header_start + header_len;
    if bytes.len() < data_offset {
        return Err(truncated(data_offset as u64));
    }
    let raw = &bytes[header_start..data_offset];
    // Versions 1 and 2 are latin-1; version 3 is UTF-8.
    let text: Vec<char> = if major == 3 {
        std::str::from_utf8(raw).map_err(|e| bad(format!("header is not valid UTF-8: {e}")))?.chars().collect()
    } else {
        raw.iter().map(|&b| char::from(b)).collect()
    };
    let dict = HeaderParser::new(&text).parse_header().map_err(bad)?;

    let descr = match &dict.descr {
        Value::Str(descr) => Some(descr.as_str()),
        _ => None,
    };
    let (dtype, supported) = if bf16_bits {
        (descr.filter(|d| matches!(*d, "<u2" | "<i2" | "|V2" | "<V2" | "V2")).map(|_| DType::BF16), BF16_STORAGE)
    } else {
        (descr.and_then(dtype_from_descr), SUPPORTED_DTYPES)
    };
    let dtype = dtype.ok_or_else(|| NpyError::UnsupportedDtype {
        path: path.to_path_buf(),
        descr: dict.descr_text.clone(),
        supported,
    })?;
    if dict.fortran_order {
        return Err(NpyError::FortranOrder { path: path.to_path_buf() });
    }
    let data_len = dict
        .shape
        .iter()
        .try_fold(dtype.size_in_bytes(), |acc, &dim| acc.checked_mul(dim))
        .ok_or_else(|| bad(format!("shape {:?} is too large to address", dict.shape)))?;
    let needed = data_offset as u64 + data_len as u64;
    if file_len < needed {
        return Err(truncated(needed));
    }
    Ok(Header { dtype, shape: dict.shape, data_offset, data_len })
}

/// Maps a NumPy type string to a supported dtype. Only little-endian (or byte-order-free) forms are
/// accepted: big-endian data would need byte swapping that no caller needs.
fn dtype_from_descr(descr: &str) -> Option<DType> {
    match descr {
        "<f4" => Some(DType::F32),
        "<f8" => Some(DType::F64),
        "|u1" | "<u1" | "=u1" | "u1" => Some(DType::U8),
        "<i8" => Some(DType::I64),
        "<f2" => Some(DType::F16),
        // ml_dtypes' bfloat16 is a 2-byte void to NumPy; no other common dtype is saved that way.
        "<V2" | "|V2" | "V2" => Some(DType::BF16),
        _ => None,
    }
}

/// A Python literal as it can appear in a `.npy` header.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Int(i128),
    None,
    /// A tuple or list.
    Seq(Vec<Value>),
}

/// The three keys of a `.npy` header dict.
struct HeaderDict {
    descr: Value,
    /// The `descr` value as written, for error messages (structured dtypes are not strings).
    descr_text: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A parser for the small subset of Python literal syntax that `numpy.save` writes:
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
struct HeaderParser<'a> {
    text: &'a [char],
    pos: usize,
}

impl<'a> HeaderParser<'a> {
    fn new(text: &'a [char]) -> Self {
        HeaderParser { text, pos: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.text.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn describe_here(&self) -> String {
        match self.peek() {
            Some(c) => format!("unexpected {c:?} at character {}", self.pos),
            None => "header ends unexpectedly".to_string(),
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {c:?}: {}", self.describe_here()))
        }
    }

    /// Parses the whole header: one dict, then only whitespace (numpy pads with spaces and `\n`).
    fn parse_header(&mut self) -> Result<HeaderDict, String> {
        self.expect('{')?;
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        loop {
            self.skip_ws();
            if self.peek() == Some('}') {
                self.pos += 1;
                break;
            }
            let key = match self.parse_value(0)? {
                Value::Str(key) => key,
                other => return Err(format!("dict key {other:?} is not a string")),
            };
            self.expect(':')?;
            self.skip_ws();
            let start = self.pos;
            let value = self.parse_value(0)?;
            let value_text: String = self.text[start..self.pos].iter().collect();
            let duplicate = match key.as_str() {
                "descr" => descr.replace((value, value_text)).is_some(),
                "fortran_order" => match value {
                    Value::Bool(b) => fortran_order.replace(b).is_some(),
                    _ => return Err(format!("'fortran_order' is {value_text}, not True/False")),
                },
                "shape" => shape.replace(to_shape(&value, &value_text)?).is_some(),
                _ => return Err(format!("unexpected key '{key}'")),
            };
            if duplicate {
                return Err(format!("key '{key}' appears twice"));
            }
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err(format!("expected ',' or '}}': {}", self.describe_here())),
            }
        }
        self.skip_ws();
        if self.pos != self.text.len() {
            return Err(format!("trailing text after the dict: {}", self.describe_here()));
        }
        let missing = |key: &str| format!("missing key '{key}'");
        let (descr, descr_text) = descr.ok_or_else(|| missing("descr"))?;
        let descr_text = match &descr {
            Value::Str(s) => s.clone(),
            _ => descr_text,
        };
        Ok(HeaderDict {
            descr,
            descr_text,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }

    fn parse_value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_HEADER_DEPTH {
            return Err(format!("values nested deeper than {MAX_HEADER_DEPTH} levels"));
        }
        self.skip_ws();
        match self.peek() {
            Some(q @ ('\'' | '"')) => {
                self.pos += 1;
                self.parse_string(q)
            }
            Some(open @ ('(' | '[')) => {
                self.pos += 1;
                let close = if open == '(' { ')' } else { ']' };
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        return Ok(Value::Seq(items));
                    }
                    items.push(self.parse_value(depth + 1)?);
                    self.skip_ws();
                    match self.peek() {
                        Some(',') => self.pos += 1,
                        Some(c) if c == close => {}
                        _ => return Err(format!("expected ',' or {close:?}: {}", self.describe_here())),
                    }
                }
            }
            Some(c) if c == '-' || c.is_ascii_digit() => self.parse_int(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.pos += 1;
                }
                let word: String = self.text[start..self.pos].iter().collect();
                match word.as_str() {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    "None" => Ok(Value::None),
                    _ => Err(format!("unknown name '{word}' at character {start}")),
                }
            }
            _ => Err(self.describe_here()),
        }
    }

    /// Parses a string body after its opening quote, honouring backslash escapes literally.
    fn parse_string(&mut self, quote: char) -> Result<Value, String> {
        let mut s = String::new();
        loop {
            match self.peek() {
                None => return Err("unterminated string".to_string()),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(Value::Str(s));
                }
                Some('\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".to_string()),
                    }
                    self.pos += 1;
                }
                Some(c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// Parses a decimal integer, with the `L` suffix Python 2 wrote for long values.
    fn parse_int(&mut self) -> Result<Value, String> {
        let start = self.pos;
        let negative = self.peek() == Some('-');
        if negative {
            self.pos += 1;
        }
        let mut value: i128 = 0;
        let mut digits = 0;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i128::from(d)))
                .ok_or_else(|| format!("integer at character {start} is too large"))?;
            digits += 1;
            self.pos += 1;
        }
        if digits == 0 {
            return Err(format!("expected a digit after '-' at character {start}"));
        }
        if self.peek() == Some('L') {
            self.pos += 1;
        }
        Ok(Value::Int(if negative { -value } else { value }))
    }
}

/// Converts a parsed `shape` value (a tuple of non-negative integers) to dimensions.
fn to_shape(value: &Value, text: &str) -> Result<Vec<usize>, String> {
    let Value::Seq(items) = value else {
        return Err(format!("'shape' is {text}, not a tuple of integers"));
    };
    items
        .iter()
        .map(|item| match item {
            Value::Int(n) => usize::try_from(*n).map_err(|_| format!("'shape' {text} has an invalid dimension {n}")),
            _ => Err(format!("'shape' is {text}, not a tuple of integers")),
        })
        .collect()
}

mod sealed {
    /// Keeps [`super::NpyElement`] closed to the types the reader supports.
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for u8 {}
    impl Sealed for i64 {}
}

/// An element type that [`write_npy`] can store (`f32`, `f64`, `u8`, `i64`, `half::f16`, `half::bf16`; the
/// last as `<V2`, the way `ml_dtypes` saves it).
///
/// The trait is sealed so that every file written can be read back by [`NpyArray::open`].
pub trait NpyElement: Copy + sealed::Sealed {
    /// The NumPy type string written in the header, e.g. `<f4`.
    const DESCR: &'static str;
    /// The matching engine dtype.
    const DTYPE: DType;
    /// Appends the little-endian bytes of `values` to `out`.
    fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>);
}

macro_rules! impl_npy_element {
    ($t:ty, $descr:expr, $dtype:expr) => {
        impl NpyElement for $t {
            const DESCR: &'static str = $descr;
            const DTYPE: DType = $dtype;
            fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>) {
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    };
}

impl_npy_element!(f32, "<f4", DType::F32);
impl_npy_element!(f64, "<f8", DType::F64);
impl_npy_element!(u8, "|u1", DType::U8);
impl_npy_element!(i64, "<i8", DType::I64);
impl_npy_element!(half::f16, "<f2", DType::F16);
impl_npy_element!(half::bf16, "<V2", DType::BF16);

/// Builds the preamble and padded header for an array; version 1.0 unless the header needs more
/// than 65535 bytes, in which case version 2.0 (as numpy does).
fn encode_header(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", dims.join(", "))
        }
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    for (major, len_bytes) in [(1u8, 2usize), (2, 4)] {
        let preamble = MAGIC.len() + 2 + len_bytes;
        // Pad with spaces and a final newline so that the data starts on a 64-byte boundary, which
        // lets readers that do cast pointers (numpy.memmap) use the data in place.
        let total = (preamble + dict.len() + 1).next_multiple_of(64);
        let header_len = total - preamble;
        if len_bytes == 2 && header_len > usize::from(u16::MAX) {
            continue;
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[major, 0]);
        if len_bytes == 2 {
            out.extend_from_slice(&(header_len as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header_len as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(total - 1, b' ');
        out.push(b'\n');
        return out;
    }
    unreachable!("a version 2.0 header always fits")
}

/// The bytes of a C-ordered, little-endian `.npy` file of `data` with `shape` (as [`write_npy`] writes it),
/// for callers that write atomically. `data.len()` must be the product of `shape`.
pub fn npy_bytes<T: NpyElement>(shape: &[usize], data: &[T]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy_bytes: shape {shape:?} and data length differ");
    let mut out = encode_header(T::DESCR, shape);
    T::extend_le_bytes(data, &mut out);
    out
}

/// Writes `data` with the given `shape` to `path` as a C-ordered, little-endian `.npy` file
/// (format version 1.0, header padded to a multiple of 64 bytes).
///
/// Fails with [`io::ErrorKind::InvalidInput`] when `data.len()` is not the product of `shape`.
/// The file is written in place; callers that need atomic replacement should write to a
/// temporary name and rename.
pub fn write_npy<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> io::Result<()> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected != Some(data.len()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: shape {shape:?} needs {} values but {} were given",
                path.display(),
                expected.map_or("too many".to_string(), |n| n.to_string()),
                data.len()
            ),
        ));
    }
    let mut writer = BufWriter::new(File::create(path)?);
    writer.write_all(&encode_header(T::DESCR, shape))?;
    // Convert in bounded chunks so that writing a large array does not need a second full copy.
    let mut buf = Vec::with_capacity(64 * 1024);
    for chunk in data.chunks(8 * 1024) {
        buf.clear();
        T::extend_le_bytes(chunk, &mut buf);
        writer.write_all(&buf)?;
    }
    writer.flush()?;
    // Surface errors from the final write-back instead of losing them in the drop.
    writer.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("ecstrain-npy-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Builds a raw file: version-1 preamble plus `header` and `data`, unpadded.
    fn raw_npy(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn write_raw(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn shapes(n: usize) -> Vec<Vec<usize>> {
        vec![vec![n], vec![n, 64], vec![n, 1, 8, 8]]
    }

    #[test]
    fn round_trip_all_dtypes_and_shapes() {
        let dir = TempDir::new("roundtrip");
        let n = 7;
        for shape in shapes(n) {
            let len: usize = shape.iter().product();
            let row_len = len / n;
            let f32s: Vec<f32> = (0..len).map(|i| i as f32 * 0.25 - 3.0).collect();
            let f64s: Vec<f64> = (0..len).map(|i| i as f64 * 0.5 + 1.0).collect();
            let u8s: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
            let i64s: Vec<i64> = (0..len).map(|i| i as i64 - 100).collect();

            let check = |name: &str, dtype: DType, expect: Vec<f32>| {
                let path = dir.path(name);
                let a = NpyArray::open(&path).unwrap();
                assert_eq!(a.path(), path.as_path());
                assert_eq!(a.dtype(), dtype);
                assert_eq!(a.shape(), shape.as_slice());
                assert_eq!(a.rows(), n);
                assert_eq!(a.row_len(), row_len);
                assert_eq!(a.bytes().len(), len * dtype.size_in_bytes());
                assert_eq!(a.to_f32_vec(), expect);
                let mut row = vec![0.0; row_len];
                a.read_row_f32(3, &mut row).unwrap();
                assert_eq!(row, &expect[3 * row_len..4 * row_len]);
                let mut gathered = vec![0.0; 3 * row_len];
                a.read_rows_f32(&[6, 0, 6], &mut gathered).unwrap();
                assert_eq!(&gathered[..row_len], &expect[6 * row_len..]);
                assert_eq!(&gathered[row_len..2 * row_len], &expect[..row_len]);
                assert_eq!(&gathered[2 * row_len..], &expect[6 * row_len..]);
            };

            write_npy(&dir.path("a.npy"), &shape, &f32s).unwrap();
            check("a.npy", DType::F32, f32s.clone());
            write_npy(&dir.path("b.npy"), &shape, &f64s).unwrap();
            check("b.npy", DType::F64, f64s.iter().map(|&v| v as f32).collect());
            write_npy(&dir.path("c.npy"), &shape, &u8s).unwrap();
            check("c.npy", DType::U8, u8s.iter().map(|&v| f32::from(v)).collect());
            write_npy(&dir.path("d.npy"), &shape, &i64s).unwrap();
            check("d.npy", DType::I64, i64s.iter().map(|&v| v as f32).collect());
            assert_eq!(NpyArray::open(&dir.path("d.npy")).unwrap().to_i64_vec().unwrap(), i64s);
            assert_eq!(
                NpyArray::open(&dir.path("c.npy")).unwrap().to_i64_vec().unwrap(),
                u8s.iter().map(|&v| i64::from(v)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn half_precision_storage() {
        let dir = TempDir::new("half");
        // Values exact in both formats, plus f16's smallest subnormal and bf16's range.
        let values = [1.0f32, -2.5, 0.099975586, 65504.0, 5.9604645e-8, 0.0];
        let f16s: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
        write_npy(&dir.path("h.npy"), &[2, 3], &f16s).unwrap();
        let a = NpyArray::open(&dir.path("h.npy")).unwrap();
        assert_eq!(a.dtype(), DType::F16);
        assert_eq!(a.to_f32_vec(), values);
        let bf = [1.0f32, -2.5, 3.140625, 1e38, -0.0, 7.0];
        let bf16s: Vec<half::bf16> = bf.iter().map(|&v| half::bf16::from_f32(v)).collect();
        write_npy(&dir.path("b.npy"), &[6], &bf16s).unwrap();
        let bytes = std::fs::read(dir.path("b.npy")).unwrap();
        assert!(String::from_utf8_lossy(&bytes[..64]).contains("'descr': '<V2'"));
        let a = NpyArray::open(&dir.path("b.npy")).unwrap();
        assert_eq!(a.dtype(), DType::BF16);
        let want: Vec<f32> = bf16s.iter().map(|v| v.to_f32()).collect();
        assert_eq!(a.to_f32_vec(), want);
        assert!(a.to_i64_vec().unwrap_err().to_string().contains("-2.5"));
        // The exact bytes ml_dtypes writes for np.array([1.0, -2.5, 3.140625], dtype=bfloat16).
        let header = "{'descr': '<V2', 'fortran_order': False, 'shape': (3,), }";
        let mut raw = raw_npy(header, &[0x80, 0x3f, 0x20, 0xc0, 0x49, 0x40]);
        let path = write_raw(&dir, "ml.npy", &raw);
        assert_eq!(NpyArray::open(&path).unwrap().to_f32_vec(), vec![1.0, -2.5, 3.140625]);
        // The same bits as <u2 need the explicit bfloat16 request; other storage is refused then.
        let at = raw.windows(3).position(|w| w == b"<V2").unwrap();
        raw[at..at + 3].copy_from_slice(b"<u2");
        let path = write_raw(&dir, "u2.npy", &raw);
        assert!(matches!(NpyArray::open(&path), Err(NpyError::UnsupportedDtype { .. })));
        assert_eq!(NpyArray::open_as_bf16(&path).unwrap().to_f32_vec(), vec![1.0, -2.5, 3.140625]);
        let err = NpyArray::open_as_bf16(&dir.path("h.npy")).unwrap_err();
        assert_message(&err, &dir.path("h.npy"), &["unsupported dtype '<f2'", BF16_STORAGE]);
    }

    #[test]
    fn written_header_is_padded_to_64_bytes() {
        let dir = TempDir::new("padding");
        for shape in [vec![], vec![3], vec![2, 3], vec![1, 2, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1]] {
            let path = dir.path("p.npy");
            let len: usize = shape.iter().product();
            write_npy(&path, &shape, &vec![1.5f64; len]).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
            let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + header_len) % 64, 0);
            assert_eq!(bytes[10 + header_len - 1], b'\n');
            let a = NpyArray::open(&path).unwrap();
            assert_eq!(a.shape(), shape.as_slice());
        }
    }

    #[test]
    fn zero_d_and_empty_arrays() {
        let dir = TempDir::new("edge");
        let scalar = dir.path("scalar.npy");
        write_npy(&scalar, &[], &[42i64]).unwrap();
        let a = NpyArray::open(&scalar).unwrap();
        assert_eq!((a.rows(), a.row_len(), a.len()), (1, 1, 1));
        assert_eq!(a.label(0).unwrap(), 42);

        let empty = dir.path("empty.npy");
        write_npy::<f32>(&empty, &[0, 64], &[]).unwrap();
        let a = NpyArray::open(&empty).unwrap();
        assert_eq!((a.rows(), a.row_len()), (0, 64));
        assert!(a.is_empty() && a.to_f32_vec().is_empty());
        assert!(matches!(a.read_row_f32(0, &mut [0.0; 64]), Err(NpyError::RowOutOfRange { row: 0, rows: 0, .. })));
    }

    #[test]
    fn large_gather_runs_in_parallel_path() {
        let dir = TempDir::new("large");
        let (n, d) = (300, 512);
        let data: Vec<f32> = (0..n * d).map(|i| i as f32).collect();
        let path = dir.path("big.npy");
        write_npy(&path, &[n, d], &data).unwrap();
        let a = NpyArray::open(&path).unwrap();
        let rows: Vec<usize> = (0..n).rev().collect();
        let mut out = vec![0.0; n * d];
        a.read_rows_f32(&rows, &mut out).unwrap();
        for (k, &r) in rows.iter().enumerate() {
            assert_eq!(&out[k * d..(k + 1) * d], &data[r * d..(r + 1) * d]);
        }
        assert_eq!(a.to_f32_vec(), data);
    }

    #[test]
    fn reads_unaligned_v2_and_v3_headers() {
        let dir = TempDir::new("versions");
        let values = [1.25f64, -2.5, 1e300];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // An odd header length puts the f64 data at an unaligned offset.
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3,)}";
        for (major, len_bytes) in [(2u8, 4usize), (3, 4)] {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&[major, 0]);
            bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
            bytes.extend_from_slice(header.as_bytes());
            assert_eq!((8 + len_bytes + header.len()) % 8, 3);
            bytes.extend_from_slice(&data);
            let path = write_raw(&dir, &format!("v{major}.npy"), &bytes);
            let a = NpyArray::open(&path).unwrap();
            assert_eq!(a.dtype(), DType::F64);
            assert_eq!(a.to_f32_vec(), vec![1.25, -2.5, f32::INFINITY]);
        }
    }

    #[test]
    fn header_syntax_variants() {
        let dir = TempDir::new("syntax");
        let ok = [
            ("{\"shape\": (2L, 1L), \"fortran_order\": False, \"descr\": \"|u1\"}", vec![2, 1]),
            ("{'descr':'u1','fortran_order':False,'shape':[2],}\n", vec![2]),
            ("  { 'descr' : '<u1' , 'fortran_order' : False , 'shape' : ( 2 , ) , }  ", vec![2]),
        ];
        for (i, (header, shape)) in ok.into_iter().enumerate() {
            let path = write_raw(&dir, &format!("ok{i}.npy"), &raw_npy(header, &[3, 4]));
            let a = NpyArray::open(&path).unwrap_or_else(|e| panic!("{header}: {e}"));
            assert_eq!(a.shape(), shape.as_slice());
            assert_eq!(a.to_i64_vec().unwrap(), vec![3, 4]);
        }
    }

    #[test]
    fn labels_from_integer_and_float_arrays() {
        let dir = TempDir::new("labels");
        let u8_path = dir.path("u8.npy");
        write_npy(&u8_path, &[4], &[0u8, 9, 255, 1]).unwrap();
        let a = NpyArray::open(&u8_path).unwrap();
        assert_eq!(a.label(2).unwrap(), 255);
        assert!(matches!(a.label(4), Err(NpyError::RowOutOfRange { .. })));

        let column = dir.path("col.npy");
        write_npy(&column, &[3, 1], &[5i64, -1, 7]).unwrap();
        assert_eq!(NpyArray::open(&column).unwrap().label(2).unwrap(), 7);

        let floats = dir.path("f.npy");
        write_npy(&floats, &[3], &[1.0f32, 2.0, 2.5]).unwrap();
        let a = NpyArray::open(&floats).unwrap();
        assert_eq!(a.label(1).unwrap(), 2);
        let err = a.label(2).unwrap_err();
        assert!(matches!(err, NpyError::NotIntegerLabels { row: 2, value, .. } if value == 2.5));
        let msg = err.to_string();
        assert!(msg.starts_with(&floats.display().to_string()), "{msg}");
        assert!(msg.contains("2.5") && msg.contains("not an integer"), "{msg}");
        assert!(matches!(a.to_i64_vec(), Err(NpyError::NotIntegerLabels { row: 2, .. })));

        let nan = dir.path("nan.npy");
        write_npy(&nan, &[2], &[f64::NAN, 1e30]).unwrap();
        let a = NpyArray::open(&nan).unwrap();
        assert!(a.label(0).is_err() && a.label(1).is_err());

        let matrix = dir.path("m.npy");
        write_npy(&matrix, &[2, 2], &[1i64, 2, 3, 4]).unwrap();
        let err = NpyArray::open(&matrix).unwrap().label(0).unwrap_err();
        assert!(matches!(err, NpyError::NotLabelArray { row_len: 2, .. }), "{err}");
    }

    #[test]
    fn bad_buffer_lengths_are_errors() {
        let dir = TempDir::new("buffers");
        let path = dir.path("x.npy");
        write_npy(&path, &[2, 3], &[0.0f32; 6]).unwrap();
        let a = NpyArray::open(&path).unwrap();
        assert!(matches!(a.read_row_f32(0, &mut [0.0; 2]), Err(NpyError::BufferLength { expected: 3, actual: 2, .. })));
        assert!(matches!(
            a.read_rows_f32(&[0, 1], &mut [0.0; 5]),
            Err(NpyError::BufferLength { expected: 6, actual: 5, .. })
        ));
        assert!(matches!(
            a.read_rows_f32(&[0, 2], &mut [0.0; 6]),
            Err(NpyError::RowOutOfRange { row: 2, rows: 2, .. })
        ));
        let err = write_npy(&dir.path("y.npy"), &[2, 3], &[0.0f32; 5]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn reads_the_digits_data_set() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/digits");
        let x = NpyArray::open(&root.join("train_x.npy")).unwrap();
        assert_eq!(x.dtype(), DType::F32);
        assert_eq!(x.shape(), &[1437, 64]);
        let pixels = x.to_f32_vec();
        assert!(pixels.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert!(pixels.iter().any(|&v| v > 0.5));
        let mut row = vec![0.0; 64];
        x.read_row_f32(1436, &mut row).unwrap();
        assert_eq!(row, &pixels[1436 * 64..]);

        let y = NpyArray::open(&root.join("train_y.npy")).unwrap();
        assert_eq!(y.dtype(), DType::I64);
        assert_eq!(y.shape(), &[1437]);
        let labels = y.to_i64_vec().unwrap();
        assert!(labels.iter().all(|l| (0..10).contains(l)));
        let mut seen = [false; 10];
        for &l in &labels {
            seen[l as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "every class 0-9 occurs");
        assert_eq!(y.label(5).unwrap(), labels[5]);
    }

    /// Asserts the message starts with the path and contains every fragment.
    fn assert_message(err: &NpyError, path: &Path, fragments: &[&str]) {
        let msg = err.to_string();
        assert!(msg.starts_with(&path.display().to_string()), "{msg}");
        for f in fragments {
            assert!(msg.contains(f), "{msg:?} lacks {f:?}");
        }
    }

    #[test]
    fn bad_magic() {
        let dir = TempDir::new("magic");
        for (name, bytes) in [
            ("csv.npy", &b"1,2,3\n4,5,6\n"[..]),
            ("empty.npy", &b""[..]),
            ("zip.npy", &b"PK\x03\x04 an npz archive"[..]),
        ] {
            let path = write_raw(&dir, name, bytes);
            let err = NpyArray::open(&path).unwrap_err();
            assert!(matches!(err, NpyError::NotNpy { .. }), "{err}");
            assert_message(&err, &path, &["not a NumPy .npy file"]);
        }
    }

    #[test]
    fn unsupported_dtypes() {
        let dir = TempDir::new("dtype");
        for descr in ["<i4", ">f4", "|b1", "O", ">f2", "<u2", "|V4", "<U3"] {
            let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1,), }}");
            let path = write_raw(&dir, "d.npy", &raw_npy(&header, &[0; 16]));
            let err = NpyArray::open(&path).unwrap_err();
            assert!(matches!(err, NpyError::UnsupportedDtype { .. }), "{err}");
            assert_message(&err, &path, &[&format!("unsupported dtype '{descr}'"), SUPPORTED_DTYPES]);
        }
        // A structured dtype is a list, not a string; it is still reported as a dtype problem.
        let header = "{'descr': [('a', '<f4'), ('b', '<i8')], 'fortran_order': False, 'shape': (1,)}";
        let path = write_raw(&dir, "s.npy", &raw_npy(header, &[0; 12]));
        let err = NpyArray::open(&path).unwrap_err();
        assert_message(&err, &path, &["unsupported dtype '[('a', '<f4'), ('b', '<i8')]'"]);
    }

    #[test]
    fn fortran_order() {
        let dir = TempDir::new("fortran");
        let header = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }";
        let path = write_raw(&dir, "f.npy", &raw_npy(header, &[0; 16]));
        let err = NpyArray::open(&path).unwrap_err();
        assert!(matches!(err, NpyError::FortranOrder { .. }), "{err}");
        assert_message(&err, &path, &["Fortran order"]);
    }

    #[test]
    fn truncated_files() {
        let dir = TempDir::new("truncated");
        let good = dir.path("good.npy");
        write_npy(&good, &[10, 4], &[1.0f32; 40]).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        assert_eq!(bytes.len(), 128 + 160);

        // Data cut short.
        let path = write_raw(&dir, "short.npy", &bytes[..bytes.len() - 1]);
        let err = NpyArray::open(&path).unwrap_err();
        assert!(matches!(err, NpyError::Truncated { expected_bytes: 288, actual_bytes: 287, .. }), "{err}");
        assert_message(&err, &path, &["truncated", "288", "287"]);

        // Header cut short, and preamble cut short.
        for cut in [50, 9, 3] {
            let path = write_raw(&dir, "cut.npy", &bytes[..cut]);
            let err = NpyArray::open(&path).unwrap_err();
            assert!(matches!(err, NpyError::Truncated { .. }), "cut {cut}: {err}");
            assert_message(&err, &path, &["truncated"]);
        }
    }

    #[test]
    fn garbage_headers() {
        let dir = TempDir::new("garbage");
        let cases = [
            ("not a dict at all", "expected '{'"),
            ("{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (3, -1)}", "invalid dimension -1"),
            ("{'descr': '<f4', 'fortran_order': 0, 'shape': (3,)}", "not True/False"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': 3}", "not a tuple"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}", "unexpected key 'x'"),
            ("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,)}", "appears twice"),
            ("{'descr': '<f4, 'fortran_order': False, 'shape': (3,)}", "expected ','"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (3,)} junk", "trailing text"),
            ("{'descr': '<f4', 'fortran_order': Nope, 'shape': (3,)}", "unknown name 'Nope'"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999999999999999999999,)}",
                "too large",
            ),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4)}", "too large to address"),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (3,", "ends unexpectedly"),
        ];
        for (i, (header, problem)) in cases.iter().enumerate() {
            let path = write_raw(&dir, &format!("g{i}.npy"), &raw_npy(header, &[0; 12]));
            let err = NpyArray::open(&path).unwrap_err();
            assert!(matches!(err, NpyError::BadHeader { .. }), "{header}: {err}");
            assert_message(&err, &path, &["malformed .npy header", problem]);
        }

        // Deep nesting is rejected without exhausting the stack.
        let deep = format!("{{'descr': {}", "(".repeat(100_000));
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[2, 0]);
        bytes.extend_from_slice(&(deep.len() as u32).to_le_bytes());
        bytes.extend_from_slice(deep.as_bytes());
        let path = write_raw(&dir, "deep.npy", &bytes);
        let err = NpyArray::open(&path).unwrap_err();
        assert_message(&err, &path, &["nested deeper"]);

        // Unknown format version and invalid UTF-8 in a version-3 header.
        let mut v9 = raw_npy("{}", &[]);
        v9[6] = 9;
        let path = write_raw(&dir, "v9.npy", &v9);
        assert_message(&NpyArray::open(&path).unwrap_err(), &path, &["version 9.0"]);
        let mut v3 = MAGIC.to_vec();
        v3.extend_from_slice(&[3, 0, 2, 0, 0, 0, 0xff, 0xfe]);
        let path = write_raw(&dir, "v3.npy", &v3);
        assert_message(&NpyArray::open(&path).unwrap_err(), &path, &["UTF-8"]);
    }

    #[test]
    fn missing_file_and_a_directory() {
        let dir = TempDir::new("missing");
        let path = dir.path("does-not-exist.npy");
        let err = NpyArray::open(&path).unwrap_err();
        assert!(matches!(&err, NpyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound), "{err}");
        assert_message(&err, &path, &["cannot read file"]);
        let dir = std::env::temp_dir();
        let err = NpyArray::open(&dir).err().unwrap();
        assert_message(&err, &dir, &["cannot read file", "it is a directory, not a .npy file"]);
    }
}

#[cfg(test)]
mod release_tests {
    use super::*;

    /// Reads keep returning the file's values across page releases (threshold forced down to one page).
    #[test]
    fn reads_are_unchanged_across_page_releases() {
        let dir = std::env::temp_dir().join(format!("ecstrain_npy_release_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.npy");
        let rows = 4000usize;
        let data: Vec<f32> = (0..rows * 3).map(|i| i as f32 * 0.5).collect();
        write_npy(&path, &[rows, 3], &data).unwrap();
        let mut a = NpyArray::open(&path).unwrap();
        a.release_every = PAGE;
        let order: Vec<usize> = (0..rows).rev().step_by(7).collect();
        let mut out = vec![0.0f32; order.len() * 3];
        for _ in 0..3 {
            a.read_rows_f32(&order, &mut out).unwrap();
            for (k, &r) in order.iter().enumerate() {
                assert_eq!(&out[k * 3..k * 3 + 3], &data[r * 3..r * 3 + 3]);
            }
            let mut one = [0.0f32; 3];
            a.read_row_f32(17, &mut one).unwrap();
            assert_eq!(one, [51.0 * 0.5, 52.0 * 0.5, 53.0 * 0.5]);
        }
        assert!(a.touched.load(Ordering::Relaxed) < PAGE * 2, "the counter resets at each release");
        std::fs::remove_dir_all(&dir).ok();
    }
}
