//! `engine data pack`: image folder -> .npy shards (uint8 `[n, C, H, W]` images and int64 `[n]` labels per
//! split, plus `classes.json`) for memory-mapped training with the `npy` dataset. Everything is written into
//! a temporary sibling directory that is renamed to `--out` at the end, so a failure leaves nothing behind.

use std::path::{Path, PathBuf};

use clap::Args;
use ecstrain_systems::data::class_map_json;
use ecstrain_systems::data::image_decode::{decode_image, image_size, resize_bilinear};
use ecstrain_systems::data::image_folder::{check_same_classes, scan_class_folder, ClassFolder};
use ecstrain_systems::data::npy::write_npy;
use rayon::prelude::*;

use crate::error::{usage, EngineError};

/// The split folders looked for when `--splits` is not given.
const DEFAULT_SPLITS: [&str; 3] = ["train", "val", "test"];

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

/// The output `(height, width)`: `--size`, or the one size every image has (read from the headers).
fn output_size(args: &PackArgs, splits: &[Split]) -> Result<(usize, usize), String> {
    match args.size.as_deref() {
        Some(&[s]) if s > 0 => return Ok((s, s)),
        Some(&[h, w]) if h > 0 && w > 0 => return Ok((h, w)),
        Some(other) => return Err(format!("--size: sizes must be >= 1, got {other:?}")),
        None => {}
    }
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
    Ok(sizes[0])
}

/// Decodes (and resizes) `files` in parallel into one `[n, C, H, W]` buffer.
fn decode_shard(files: &[PathBuf], channels: usize, (h, w): (usize, usize)) -> Result<Vec<u8>, String> {
    let len = channels * h * w;
    let mut out = vec![0u8; files.len() * len];
    out.par_chunks_mut(len).zip(files.par_iter()).try_for_each(|(dst, path)| {
        let img = decode_image(path, channels)?;
        let img = resize_bilinear(&img, h, w);
        dst.copy_from_slice(&img.data);
        Ok::<_, String>(())
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
            let pixels = decode_shard(files, args.channels, size).map_err(Failure::Input)?;
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

/// Runs `engine data pack`.
pub fn run(args: &PackArgs) -> Result<(), EngineError> {
    if !matches!(args.channels, 1 | 3) {
        return Err(usage(format!("--channels: {} is not supported; valid choices: 1, 3", args.channels)));
    }
    if args.shard_size == 0 {
        return Err(usage("--shard-size: must be >= 1"));
    }
    if args.out.exists() {
        return Err(usage(format!("--out {}: already exists; choose a new directory", args.out.display())));
    }
    let splits = scan_splits(args).map_err(usage)?;
    let size = output_size(args, &splits).map_err(usage)?;
    let name = args.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let parent = args.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let run_err = |m: String| EngineError::Run(m);
    std::fs::create_dir_all(parent).map_err(|e| run_err(format!("{}: cannot create: {e}", parent.display())))?;
    // A sibling of the output, so the final rename stays on one file system.
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = write_all(args, &splits, size, &tmp);
    let listing = match written {
        Ok(l) => l,
        Err(f) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(match f {
                Failure::Input(m) => usage(m),
                Failure::Output(m) => run_err(m),
            });
        }
    };
    std::fs::rename(&tmp, &args.out).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        run_err(format!("cannot move {} to {}: {e}", tmp.display(), args.out.display()))
    })?;
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
