//! The `image_folder` dataset: one subfolder per class holding that class's images (torchvision's
//! `ImageFolder` layout, the cats-vs-dogs layout), classes indexed in sorted name order.

use std::path::{Path, PathBuf};

use ecstrain_components::Targets;
use serde::Deserialize;

use super::image_decode::is_image_file;
use super::image_set::{ImageReadOptions, ImageSet};
use super::path_or_map::path_or_map;
use super::sample::Sample;
use super::{DataError, Dataset, TargetSpec};

/// One split of an image folder: `train: dir` or `train: {path: dir}`.
#[derive(Clone, Debug, PartialEq)]
pub enum FolderSplit {
    /// The directory.
    Path(PathBuf),
    /// The directory, as a map.
    Spec(FolderSpec),
}

/// `{path: dir}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FolderSpec {
    /// The split's directory (one subfolder per class).
    pub path: PathBuf,
}

impl<'de> Deserialize<'de> for FolderSplit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        path_or_map(d, "a directory path, or {path: directory}", FolderSplit::Path, FolderSplit::Spec)
    }
}

impl FolderSplit {
    /// The directory.
    pub fn path(&self) -> &Path {
        match self {
            FolderSplit::Path(p) => p,
            FolderSplit::Spec(s) => &s.path,
        }
    }
}

fn default_channels() -> usize {
    3
}

/// Options of the `image_folder` dataset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderOptions {
    /// Training split.
    pub train: FolderSplit,
    /// Validation split (must have the train split's classes).
    #[serde(default)]
    pub val: Option<FolderSplit>,
    /// Test split, through the eval processors: read by `engine eval --split test` and `engine predict --split test`, never by training.
    #[serde(default)]
    pub test: Option<FolderSplit>,
    /// Channels: 1 (grey) or 3 (RGB).
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Keep decoded images in memory.
    #[serde(default)]
    pub cache: bool,
    /// Skip (and report) images that fail to decode instead of failing.
    #[serde(default)]
    pub skip_corrupt: bool,
}

impl ImageFolderOptions {
    /// The image reading options.
    pub fn read_options(&self) -> ImageReadOptions {
        ImageReadOptions { channels: self.channels, cache: self.cache, skip_corrupt: self.skip_corrupt }
    }
}

/// The files of a class folder: sorted class names, and every image with its class index.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassFolder {
    /// The directory scanned.
    pub dir: PathBuf,
    /// Class names (subfolder names), sorted.
    pub classes: Vec<String>,
    /// Image files, class by class, each class's files in sorted path order.
    pub files: Vec<PathBuf>,
    /// Class index of each file.
    pub labels: Vec<i64>,
}

/// Whether a directory entry is hidden (`.git`, `.ipynb_checkpoints`): never a class or an image.
fn hidden(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

/// Entries of `dir`, sorted by path.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: cannot list the directory: {e}", dir.display()))?;
    let mut v = rd
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: cannot list the directory: {e}", dir.display()))?;
    v.sort();
    Ok(v)
}

/// Image files under `dir`, recursively, in sorted order (torchvision walks class folders the same way).
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    for p in sorted_entries(dir)? {
        if hidden(&p) {
            continue;
        }
        if p.is_dir() {
            collect_images(&p, out)?;
        } else if is_image_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Scans a class folder: its subfolders (sorted) are the classes, the images in each (recursively) its
/// samples. A missing directory, no class folders, or a class folder without images is an error naming the
/// path.
pub fn scan_class_folder(dir: &Path) -> Result<ClassFolder, String> {
    if !dir.exists() {
        return Err(format!("{}: image folder not found", dir.display()));
    }
    if !dir.is_dir() {
        return Err(format!("{}: not a directory (an image folder holds one subfolder per class)", dir.display()));
    }
    let class_dirs: Vec<PathBuf> = sorted_entries(dir)?.into_iter().filter(|p| p.is_dir() && !hidden(p)).collect();
    if class_dirs.is_empty() {
        return Err(format!(
            "{}: no class folders (expected one subfolder per class, each holding that class's images)",
            dir.display()
        ));
    }
    let mut folder = ClassFolder { dir: dir.to_path_buf(), classes: Vec::new(), files: Vec::new(), labels: Vec::new() };
    for (k, class_dir) in class_dirs.iter().enumerate() {
        let name = class_dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: class folder name is not valid UTF-8", class_dir.display()))?;
        let before = folder.files.len();
        collect_images(class_dir, &mut folder.files)?;
        if folder.files.len() == before {
            return Err(format!(
                "{}: class folder `{name}` has no images (.jpg, .jpeg, .png, .bmp)",
                class_dir.display()
            ));
        }
        folder.classes.push(name.to_string());
        folder.labels.resize(folder.files.len(), k as i64);
    }
    Ok(folder)
}

/// Checks that a split has the reference split's classes, listing the difference otherwise.
pub fn check_same_classes(
    what: &str,
    reference: &[String],
    reference_at: &str,
    other: &[String],
    other_at: &str,
) -> Result<(), String> {
    if reference == other {
        return Ok(());
    }
    let missing: Vec<&str> = reference.iter().filter(|c| !other.contains(c)).map(String::as_str).collect();
    let extra: Vec<&str> = other.iter().filter(|c| !reference.contains(c)).map(String::as_str).collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing {}", missing.join(", ")));
    }
    if !extra.is_empty() {
        parts.push(format!("not in train: {}", extra.join(", ")));
    }
    Err(format!(
        "the {what} split ({other_at}) must have the train split's classes ({reference_at}: {}); {what} has {}: {}",
        reference.join(", "),
        other.join(", "),
        parts.join("; ")
    ))
}

/// One split of an image folder.
pub struct ImageFolderDataset {
    dir: PathBuf,
    images: ImageSet,
    labels: Vec<i64>,
    classes: Vec<String>,
}

impl ImageFolderDataset {
    /// Scans `dir` and verifies every image (decoding each once, in parallel). Returns the dataset and a
    /// notice when corrupt images were skipped.
    pub fn open(dir: &Path, options: &ImageReadOptions) -> Result<(ImageFolderDataset, Option<String>), DataError> {
        let folder = scan_class_folder(dir)?;
        let (images, skipped) = ImageSet::open(folder.files, options)?;
        let labels: Vec<i64> = skipped.kept.iter().map(|&i| folder.labels[i]).collect();
        let mut seen = vec![false; folder.classes.len()];
        for &l in &labels {
            seen[l as usize] = true;
        }
        if let Some((name, _)) = folder.classes.iter().zip(&seen).find(|(_, &s)| !s) {
            return Err(format!(
                "{}: class folder `{name}` has no readable images (all were corrupt and skipped)",
                dir.join(name).display()
            ));
        }
        let notice = skipped.notice(&dir.display().to_string());
        Ok((ImageFolderDataset { dir: dir.to_path_buf(), images, labels, classes: folder.classes }, notice))
    }

    /// The file of sample `index`.
    pub fn path(&self, index: usize) -> &Path {
        self.images.path(index)
    }
}

impl Dataset for ImageFolderDataset {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
    fn len(&self) -> usize {
        self.images.len()
    }
    fn sample_shape(&self) -> &[usize] {
        self.images.first_shape()
    }
    fn fixed_shape(&self) -> bool {
        self.images.fixed()
    }
    fn target_spec(&self) -> TargetSpec {
        TargetSpec::Classes { num_classes: self.classes.len() }
    }
    fn class_names(&self) -> Option<Vec<String>> {
        Some(self.classes.clone())
    }
    fn sample_name(&self, index: usize) -> Option<String> {
        Some(self.images.path(index).display().to_string())
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        self.images.read(index, out)
    }
    fn read_inputs(&self, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        self.images.read_rows(indices, out)
    }
    fn read_targets(&self, indices: &[usize], out: &mut Targets) {
        if let Targets::Classes(v) = out {
            v.clear();
            v.extend(indices.iter().map(|&i| self.labels[i]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ecstrain-imgfolder-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn grey(path: &Path, w: u32, h: u32, v: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        GrayImage::from_pixel(w, h, Luma([v])).save(path).unwrap();
    }

    #[test]
    fn classes_sorted_files_recursive() {
        let d = dir("scan");
        grey(&d.join("dog/b.png"), 2, 2, 1);
        grey(&d.join("dog/a.png"), 2, 2, 2);
        grey(&d.join("cat/nested/z.png"), 2, 2, 3);
        grey(&d.join("cat/y.bmp"), 2, 2, 4);
        std::fs::write(d.join("cat/notes.txt"), "x").unwrap();
        grey(&d.join(".hidden/q.png"), 2, 2, 5);
        let f = scan_class_folder(&d).unwrap();
        assert_eq!(f.classes, vec!["cat", "dog"]);
        let names: Vec<String> = f.files.iter().map(|p| p.strip_prefix(&d).unwrap().display().to_string()).collect();
        assert_eq!(names, vec!["cat/nested/z.png", "cat/y.bmp", "dog/a.png", "dog/b.png"]);
        assert_eq!(f.labels, vec![0, 0, 1, 1]);

        let o = ImageReadOptions { channels: 1, cache: false, skip_corrupt: false };
        let (ds, notice) = ImageFolderDataset::open(&d, &o).unwrap();
        assert!(notice.is_none());
        assert_eq!((ds.len(), ds.sample_shape(), ds.fixed_shape()), (4, &[1, 2, 2][..], true));
        let mut out = vec![0.0; 8];
        ds.read_inputs(&[3, 0], &mut out).unwrap();
        assert_eq!(out, vec![1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_layouts_name_the_path() {
        let d = dir("bad");
        let e = scan_class_folder(&d.join("nope")).unwrap_err();
        assert!(e.contains("nope") && e.contains("not found"), "{e}");
        grey(&d.join("flat/a.png"), 2, 2, 1);
        let e = scan_class_folder(&d.join("flat")).unwrap_err();
        assert!(e.contains("flat") && e.contains("no class folders"), "{e}");
        grey(&d.join("x/a/a.png"), 2, 2, 1);
        std::fs::create_dir_all(d.join("x/b")).unwrap();
        let e = scan_class_folder(&d.join("x")).unwrap_err();
        assert!(e.contains("x/b") && e.contains("`b` has no images"), "{e}");
        let e = check_same_classes("val", &["a".into(), "b".into()], "t", &["b".into(), "c".into()], "v").unwrap_err();
        assert!(e.contains("missing a") && e.contains("not in train: c"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
