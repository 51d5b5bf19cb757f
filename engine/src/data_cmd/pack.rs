//! `engine data pack`: image folder -> .npy shards (uint8 `[n, C, H, W]` images and int64 `[n]` labels per
//! split, plus `classes.json`) for memory-mapped training with the `npy` dataset. Everything is written into
//! a temporary sibling directory that is renamed to `--out` at the end, so a failure leaves nothing behind.
//! The image size is checked before anything is allocated or written: one packed image at most
//! [`MAX_IMAGE_BYTES`], one shard's buffer at most half the machine's memory.

use std::path::{Path, PathBuf};

use clap::Args;
use ecstrain_systems::data::class_map_json;
use ecstrain_systems::data::image_decode::{decode_image, image_size, resize_bilinear};
use ecstrain_systems::data::image_folder::{check_same_classes, scan_class_folder, ClassFolder};
use ecstrain_systems::data::npy::write_npy;
use rayon::prelude::*;

use crate::error::{usage, EngineError};
use crate::out_path::{location_error, NewDirs};

/// The split folders looked for when `--splits` is not given.
const DEFAULT_SPLITS: [&str; 3] = ["train", "val", "test"];

/// The most bytes one packed image (`C * H * W`) may take, 2 GiB: a size beyond it is a typo or an image header
/// that lies, and a shard of such images would not fit in memory anyway.
pub const MAX_IMAGE_BYTES: u64 = 1 << 31;

/// Options of `engine data pack`.
#[derive(Args, Debug, Clone)]
pub struct PackArgs {
    /// The image folder: split subfolders (train, val, test) each holding one subfolder per class, or the
    /// class folders directly (packed as the train split).
    #[arg(long)]
    pub src: PathBuf,
    /// Output directory; must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
    /// Resize every image (bilinear): `--size H W`, or `--size S` for S x S. Without it all images must
    /// have one size.
    #[arg(long, num_args = 1..=2, value_names = ["H", "W"])]
    pub size: Option<Vec<usize>>,
    /// Channels of the packed images: 1 (grey) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Images per shard file.
    #[arg(long, default_value_t = 10_000)]
    pub shard_size: usize,
    /// Split subfolders to pack, comma-separated (default: those of train, val, test that exist).
    #[arg(long, value_delimiter = ',')]
    pub splits: Option<Vec<String>>,
}

/// One split to pack: its name in the output and its class folder.
struct Split {
    name: String,
    folder: ClassFolder,
}

/// Finds and scans the splits; every split must have the first one's classes.
fn scan_splits(args: &PackArgs) -> Result<Vec<Split>, String> {
    if !args.src.is_dir() {
        return Err(format!("--src {}: directory not found", args.src.display()));
    }
    let names: Vec<String> = match &args.splits {
        Some(list) => {
            for s in list {
                if !args.src.join(s).is_dir() {
                    return Err(format!("--splits: {}: split folder `{s}` not found", args.src.join(s).display()));
                }
            }
            list.clone()
        }
        None => DEFAULT_SPLITS.iter().filter(|s| args.src.join(s).is_dir()).map(|s| s.to_string()).collect(),
    };
    let mut splits = Vec::new();
    if names.is_empty() {
        splits.push(Split { name: "train".into(), folder: scan_class_folder(&args.src)? });
    }
    for name in names {
        let folder = scan_class_folder(&args.src.join(&name))?;
        splits.push(Split { name, folder });
    }
    let first = &splits[0].folder;
    for s in &splits[1..] {
        check_same_classes(
            &s.name,
            &first.classes,
            &first.dir.display().to_string(),
            &s.folder.classes,
            &s.folder.dir.display().to_string(),
        )?;
    }
    Ok(splits)
}

/// The output `(height, width)`: `--size`, or the one size every image has (read from the headers); either
/// way one packed image fits in [`MAX_IMAGE_BYTES`].
fn output_size(args: &PackArgs, splits: &[Split]) -> Result<(usize, usize), String> {
    let hw = match args.size.as_deref() {
        Some(&[s]) if s > 0 => (s, s),
        Some(&[h, w]) if h > 0 && w > 0 => (h, w),
        Some(other) => return Err(format!("--size: sizes must be >= 1, got {other:?}")),
        None => return header_size(splits, args.channels),
    };
    check_image_bytes(args.channels, hw)
        .map_err(|m| format!("--size {} {}: {m}; give a smaller --size", hw.0, hw.1))?;
    Ok(hw)
}

/// The bytes of one packed image of `channels` x `h` x `w`, or why it is too large (more than
/// [`MAX_IMAGE_BYTES`], or past what a 64-bit count holds).
fn check_image_bytes(channels: usize, (h, w): (usize, usize)) -> Result<u64, String> {
    let bytes = (channels as u64).checked_mul(h as u64).and_then(|b| b.checked_mul(w as u64));
    bytes.filter(|&b| b <= MAX_IMAGE_BYTES).ok_or_else(|| {
        let b = bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string());
        format!("{channels} x {h} x {w} = {b} bytes per packed image, more than the limit of {MAX_IMAGE_BYTES} (2 GiB)")
    })
}

/// The one size every image has, read from the headers (nothing is decoded).
fn header_size(splits: &[Split], channels: usize) -> Result<(usize, usize), String> {
    let files: Vec<&PathBuf> = splits.iter().flat_map(|s| &s.folder.files).collect();
    let sizes: Vec<(usize, usize)> = files.par_iter().map(|p| image_size(p)).collect::<Result<_, _>>()?;
    if let Some(k) = sizes.iter().position(|&s| s != sizes[0]) {
        return Err(format!(
            "the images have different sizes ({} is {}x{} (height x width), {} is {}x{}); pass --size H W (or --size S) to resize \
             them to one size",
            files[0].display(),
            sizes[0].0,
            sizes[0].1,
            files[k].display(),
            sizes[k].0,
            sizes[k].1
        ));
    }
    // A header can claim any size; checked before a shard buffer for it is allocated.
    check_image_bytes(channels, sizes[0]).map_err(|m| {
        let (f, (h, w)) = (files[0].display(), sizes[0]);
        format!("{f} is {h}x{w} (height x width): {m}; pass --size H W (or --size S) to resize the images")
    })?;
    Ok(sizes[0])
}

/// The machine's memory in bytes (`MemTotal` of /proc/meminfo), where the system says.
fn physical_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Checks that the buffer of one shard (`--shard-size` images, fewer when no split has that many) fits in half
/// the machine's memory: decoding fills all of it, and the decoded images and the file writes need room beside.
fn check_shard_memory(args: &PackArgs, splits: &[Split], size: (usize, usize)) -> Result<(), String> {
    let image = check_image_bytes(args.channels, size)?;
    let largest = splits.iter().map(|s| s.folder.files.len()).max().unwrap_or(0);
    let shard = image.saturating_mul(args.shard_size.min(largest) as u64);
    let Some(memory) = physical_memory() else { return Ok(()) };
    if shard > memory / 2 {
        let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
        return Err(format!(
            "--shard-size {}: a shard of {}x{}x{} images takes {:.1} GiB, more than half of this machine's memory \
             ({:.1} GiB); give a smaller --shard-size or --size",
            args.shard_size,
            args.channels,
            size.0,
            size.1,
            gib(shard),
            gib(memory)
        ));
    }
    Ok(())
}

/// Decodes (and resizes) `files` in parallel into one `[n, C, H, W]` buffer. The images go through
/// `decode_image` with its decoder limits, as the `image_folder` dataset reads them; a buffer the allocator
/// refuses is an error, not an abort.
fn decode_shard(files: &[PathBuf], channels: usize, (h, w): (usize, usize)) -> Result<Vec<u8>, Failure> {
    let len = channels * h * w;
    let total = files.len() * len;
    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|e| {
        Failure::Input(format!("cannot allocate a shard of {total} bytes ({e}); give a smaller --shard-size or --size"))
    })?;
    out.resize(total, 0u8);
    out.par_chunks_mut(len).zip(files.par_iter()).try_for_each(|(dst, path)| {
        // A stop signal ends the pack between images; the caller's guard removes the partial output.
        if let Some(signal) = crate::signals::pending() {
            return Err(Failure::Interrupted(signal));
        }
        let img = decode_image(path, channels).map_err(Failure::Input)?;
        let img = resize_bilinear(&img, h, w);
        dst.copy_from_slice(&img.data);
        Ok(())
    })?;
    Ok(out)
}

/// The shard files written for one split, relative to the output directory.
struct PackedSplit {
    name: String,
    images: Vec<String>,
    labels: Vec<String>,
}

/// Which failures are the input's fault (exit 2) and which the output's (exit 1).
enum Failure {
    Input(String),
    Output(String),
    /// A stop signal (its name) arrived while packing.
    Interrupted(&'static str),
}

/// Writes every split's shards and `classes.json` into `dir`; returns each split's shard file names.
fn write_all(args: &PackArgs, splits: &[Split], size: (usize, usize), dir: &Path) -> Result<Vec<PackedSplit>, Failure> {
    let out_err = |p: &Path, e: std::io::Error| Failure::Output(format!("{}: cannot write: {e}", p.display()));
    let mut listing = Vec::new();
    for s in splits {
        let split_dir = dir.join(&s.name);
        std::fs::create_dir_all(&split_dir).map_err(|e| out_err(&split_dir, e))?;
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for (k, (files, labels)) in
            s.folder.files.chunks(args.shard_size).zip(s.folder.labels.chunks(args.shard_size)).enumerate()
        {
            let pixels = decode_shard(files, args.channels, size)?;
            let (x, y) = (format!("images_{k:05}.npy"), format!("labels_{k:05}.npy"));
            let shape = [files.len(), args.channels, size.0, size.1];
            write_npy(&split_dir.join(&x), &shape, &pixels).map_err(|e| out_err(&split_dir.join(&x), e))?;
            write_npy(&split_dir.join(&y), &[labels.len()], labels).map_err(|e| out_err(&split_dir.join(&y), e))?;
            xs.push(format!("{}/{x}", s.name));
            ys.push(format!("{}/{y}", s.name));
        }
        listing.push(PackedSplit { name: s.name.clone(), images: xs, labels: ys });
    }
    let classes = dir.join("classes.json");
    std::fs::write(&classes, class_map_json(&splits[0].folder.classes)).map_err(|e| out_err(&classes, e))?;
    Ok(listing)
}

/// The dataset YAML that trains from the packed shards.
fn yaml_snippet(out: &Path, listing: &[PackedSplit]) -> String {
    let list = |v: &[String]| format!("[{}]", v.join(", "));
    // The root as a JSON string (valid YAML), so any path survives.
    let root = serde_json::Value::String(out.display().to_string());
    let mut y = format!("datasets:\n  packed:\n    builder: npy\n    root: {root}\n    classes: classes.json\n");
    for s in listing {
        y.push_str(&format!("    {}:\n      x: {}\n      y: {}\n", s.name, list(&s.images), list(&s.labels)));
    }
    y
}

/// The temporary output directory: removed with everything in it when dropped before [`Partial::commit`], so
/// no error and no panic leaves it behind.
struct Partial {
    path: PathBuf,
    committed: bool,
}

impl Partial {
    /// Creates `path` afresh (a leftover of a killed pack with the same process id is removed first).
    fn create(path: PathBuf) -> std::io::Result<Partial> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)?;
        Ok(Partial { path, committed: false })
    }

    /// Renames the finished directory to `to`.
    fn commit(mut self, to: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Checks the flags that need no file: channels, shard size, and an `--out` that does not exist yet.
fn check_flags(args: &PackArgs) -> Result<(), EngineError> {
    if !matches!(args.channels, 1 | 3) {
        return Err(usage(format!("--channels: {} is not supported; valid choices: 1, 3", args.channels)));
    }
    if args.shard_size == 0 {
        return Err(usage("--shard-size: must be >= 1"));
    }
    // symlink_metadata: a dangling link is there too, and the rename would replace it.
    if std::fs::symlink_metadata(&args.out).is_ok() {
        return Err(usage(format!("--out {}: already exists; choose a new directory", args.out.display())));
    }
    Ok(())
}

/// Runs `engine data pack`.
pub fn run(args: &PackArgs) -> Result<(), EngineError> {
    check_flags(args)?;
    // SIGINT / SIGTERM stop the pack cleanly (the partial output removed) instead of killing it mid-write.
    crate::signals::install().map_err(EngineError::Run)?;
    let splits = scan_splits(args).map_err(usage)?;
    let size = output_size(args, &splits).map_err(usage)?;
    check_shard_memory(args, &splits, size).map_err(usage)?;
    let name = args.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Created directories and the partial output are removed on every failure (their guards' drops).
    let dirs = NewDirs::create(parent).map_err(|e| location_error("--out", "create", parent, e))?;
    // A sibling of the output, so the final rename stays on one file system.
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let partial = Partial::create(tmp).map_err(|e| location_error("--out", "write into", parent, e))?;
    let listing = write_all(args, &splits, size, &partial.path).map_err(|f| match f {
        Failure::Input(m) => usage(m),
        Failure::Output(m) => EngineError::Run(m),
        Failure::Interrupted(signal) => EngineError::Interrupted(format!(
            "data pack stopped by {signal}; nothing was written to {}",
            args.out.display()
        )),
    })?;
    let tmp = partial.path.clone();
    partial
        .commit(&args.out)
        .map_err(|e| EngineError::Run(format!("cannot move {} to {}: {e}", tmp.display(), args.out.display())))?;
    dirs.keep();
    let total: usize = splits.iter().map(|s| s.folder.files.len()).sum();
    println!(
        "packed {total} images of {} classes at {}x{}x{} into {}",
        splits[0].folder.classes.len(),
        args.channels,
        size.0,
        size.1,
        args.out.display()
    );
    println!("# dataset config for the packed shards:\n{}", yaml_snippet(&args.out, &listing));
    Ok(())
}
