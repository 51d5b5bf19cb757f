//! The `annotations` dataset: a LAVIS-style JSON list of records, each naming an image (relative to an image
//! root) and its target: `label` (a class index, or a class name indexed in sorted order), `target` (a list
//! of floats: embeddings, regression) or only a `caption` (kept for [`Dataset::caption`]; no target).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ecstrain_components::Targets;
use serde::Deserialize;
use serde_json::Value;

use super::image_set::{ImageReadOptions, ImageSet};
use super::sample::Sample;
use super::{DataError, Dataset, TargetSpec};

/// One split: `{file: ann.json, images: image_root}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnnotationSplit {
    /// The JSON file: a list of records (or an object with an `annotations` list).
    pub file: PathBuf,
    /// Directory the records' `image` paths are relative to (default: the JSON file's directory).
    #[serde(default)]
    pub images: Option<PathBuf>,
}

fn default_channels() -> usize {
    3
}

/// Options of the `annotations` dataset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnnotationOptions {
    /// Training split.
    pub train: AnnotationSplit,
    /// Validation split.
    #[serde(default)]
    pub val: Option<AnnotationSplit>,
    /// Test split, through the eval processors: read by `engine eval --split test` and `engine predict --split test`, never by training.
    #[serde(default)]
    pub test: Option<AnnotationSplit>,
    /// Channels: 1 (grey) or 3 (RGB).
    #[serde(default = "default_channels")]
    pub channels: usize,
    /// Keep decoded images in memory.
    #[serde(default)]
    pub cache: bool,
    /// Skip (and report) records whose image fails to decode instead of failing.
    #[serde(default)]
    pub skip_corrupt: bool,
}

impl AnnotationOptions {
    /// The image reading options.
    pub fn read_options(&self) -> ImageReadOptions {
        ImageReadOptions { channels: self.channels, cache: self.cache, skip_corrupt: self.skip_corrupt }
    }
}

/// The targets of a split's records.
#[derive(Clone, Debug, PartialEq)]
enum RecordTargets {
    /// Integer labels, or class names mapped to indices (`names` then holds them).
    Labels { labels: Vec<i64>, names: Option<Vec<String>>, num_classes: usize },
    /// `len` floats per record.
    Dense { values: Vec<f32>, len: usize },
    /// No targets (caption records).
    None,
}

/// The label kind of one record, for the "mixed kinds" check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    IntLabel,
    NameLabel,
    Target,
    None,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::IntLabel => "an integer `label`",
            Kind::NameLabel => "a class-name `label`",
            Kind::Target => "a `target` list",
            Kind::None => "neither `label` nor `target`",
        }
    }
}

/// One split of an annotation file.
pub struct AnnotationDataset {
    file: PathBuf,
    images: ImageSet,
    targets: RecordTargets,
    captions: Vec<Option<String>>,
}

impl AnnotationDataset {
    /// Reads the records of `split` (paths relative to `root`), checks them and verifies every image.
    /// `train_classes` are the train split's class names when it has named labels: this split's names are
    /// indexed by them. Returns the dataset and a notice when corrupt images were skipped.
    pub fn open(
        split: &AnnotationSplit,
        root: &Path,
        options: &ImageReadOptions,
        train_classes: Option<&[String]>,
    ) -> Result<(AnnotationDataset, Option<String>), DataError> {
        let file = root.join(&split.file);
        let at = |i: usize, m: String| format!("{}: record {i}: {m}", file.display());
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("{}: cannot read the annotation file: {e}", file.display()))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", file.display()))?;
        let records = match &json {
            Value::Array(r) => r,
            Value::Object(o) => match o.get("annotations") {
                Some(Value::Array(r)) => r,
                _ => return Err(format!("{}: expected a JSON list of records", file.display())),
            },
            _ => return Err(format!("{}: expected a JSON list of records", file.display())),
        };
        let image_root = match &split.images {
            Some(p) => root.join(p),
            None => file.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let mut paths = Vec::with_capacity(records.len());
        let mut captions = Vec::with_capacity(records.len());
        let mut kind = None;
        let (mut ints, mut names, mut dense) = (Vec::new(), Vec::new(), Vec::new());
        let mut target_len = None;
        for (i, r) in records.iter().enumerate() {
            let obj = r.as_object().ok_or_else(|| at(i, format!("expected an object, found {r}")))?;
            let image = match obj.get("image") {
                None => return Err(at(i, "no `image` key (the image path relative to the image root)".into())),
                Some(Value::String(s)) => s,
                Some(other) => return Err(at(i, format!("`image` must be a path string, found {other}"))),
            };
            let path = image_root.join(image);
            if !path.is_file() {
                return Err(at(i, format!("image {} not found", path.display())));
            }
            paths.push(path);
            captions.push(match obj.get("caption") {
                None => None,
                Some(Value::String(c)) => Some(c.clone()),
                Some(other) => return Err(at(i, format!("`caption` must be a string, found {other}"))),
            });
            let this = match (obj.get("label"), obj.get("target")) {
                (Some(_), Some(_)) => return Err(at(i, "has both `label` and `target`; give one".into())),
                (Some(Value::Number(n)), None) => {
                    let l = n.as_i64().filter(|&l| l >= 0).ok_or_else(|| {
                        at(i, format!("`label` {n} is not a class index (an integer >= 0) or a class name"))
                    })?;
                    ints.push(l);
                    Kind::IntLabel
                }
                (Some(Value::String(s)), None) => {
                    names.push(s.clone());
                    Kind::NameLabel
                }
                (Some(other), None) => {
                    return Err(at(i, format!("`label` must be an integer or a class name, found {other}")))
                }
                (None, Some(Value::Array(values))) => {
                    let len = *target_len.get_or_insert(values.len());
                    if values.len() != len {
                        return Err(at(
                            i,
                            format!(
                                "`target` has {} values but record 0's has {len}; all must have one length",
                                values.len()
                            ),
                        ));
                    }
                    for v in values {
                        let x = v.as_f64().ok_or_else(|| at(i, format!("`target` value {v} is not a number")))?;
                        dense.push(x as f32);
                    }
                    Kind::Target
                }
                (None, Some(other)) => return Err(at(i, format!("`target` must be a list of numbers, found {other}"))),
                (None, None) => Kind::None,
            };
            match kind {
                None => kind = Some(this),
                Some(k) if k != this => {
                    return Err(at(
                        i,
                        format!(
                            "has {} but record 0 has {}: every record of a file needs the same kind of target",
                            this.describe(),
                            k.describe()
                        ),
                    ))
                }
                _ => {}
            }
        }
        let targets = match kind.unwrap_or(Kind::None) {
            Kind::IntLabel => {
                let num_classes = ints.iter().max().map_or(0, |&m| m as usize + 1);
                RecordTargets::Labels { labels: ints, names: None, num_classes }
            }
            Kind::NameLabel => {
                let classes: Vec<String> = match train_classes {
                    Some(c) => c.to_vec(),
                    None => names.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect(),
                };
                let mut labels = Vec::with_capacity(names.len());
                for (i, n) in names.iter().enumerate() {
                    let k = classes.binary_search(n).map_err(|_| {
                        at(i, format!("class `{n}` is not one of the train split's classes ({})", classes.join(", ")))
                    })?;
                    labels.push(k as i64);
                }
                RecordTargets::Labels { labels, num_classes: classes.len(), names: Some(classes) }
            }
            Kind::Target => RecordTargets::Dense { values: dense, len: target_len.unwrap_or(0) },
            Kind::None => RecordTargets::None,
        };
        let (images, skipped) = ImageSet::open(paths, options)?;
        let notice = skipped.notice(&file.display().to_string());
        let mut ds = AnnotationDataset { file, images, targets, captions };
        if !skipped.errors.is_empty() {
            ds.keep(&skipped.kept);
        }
        Ok((ds, notice))
    }

    /// Keeps only the records `kept` (sorted positions) in targets and captions, after skipping images.
    fn keep(&mut self, kept: &[usize]) {
        self.captions = kept.iter().map(|&i| self.captions[i].take()).collect();
        match &mut self.targets {
            RecordTargets::Labels { labels, .. } => *labels = kept.iter().map(|&i| labels[i]).collect(),
            RecordTargets::Dense { values, len } => {
                let l = *len;
                *values = kept.iter().flat_map(|&i| values[i * l..(i + 1) * l].to_vec()).collect();
            }
            RecordTargets::None => {}
        }
    }

    /// The annotation file.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

impl Dataset for AnnotationDataset {
    fn describe(&self) -> String {
        self.file.display().to_string()
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
        match &self.targets {
            RecordTargets::Labels { num_classes, .. } => TargetSpec::Classes { num_classes: *num_classes },
            RecordTargets::Dense { len, .. } => TargetSpec::Dense { len: *len },
            RecordTargets::None => TargetSpec::Dense { len: 0 },
        }
    }
    fn class_names(&self) -> Option<Vec<String>> {
        match &self.targets {
            RecordTargets::Labels { names, .. } => names.clone(),
            _ => None,
        }
    }
    fn caption(&self, index: usize) -> Option<&str> {
        self.captions.get(index).and_then(|c| c.as_deref())
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
        match (&self.targets, out) {
            (RecordTargets::Labels { labels, .. }, Targets::Classes(v)) => {
                v.clear();
                v.extend(indices.iter().map(|&i| labels[i]));
            }
            (RecordTargets::Dense { values, len }, Targets::Dense { values: out, .. }) => {
                out.clear();
                for &i in indices {
                    out.extend_from_slice(&values[i * len..(i + 1) * len]);
                }
            }
            (_, Targets::Dense { values, .. }) => values.clear(),
            _ => unreachable!("target buffer kind comes from empty_targets"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    fn fixture(tag: &str, records: &str) -> (PathBuf, AnnotationSplit) {
        let d = std::env::temp_dir().join(format!("ecstrain-ann-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("img")).unwrap();
        for (i, name) in ["a.png", "b.png", "c.png"].iter().enumerate() {
            GrayImage::from_pixel(2, 1, Luma([10 * i as u8])).save(d.join("img").join(name)).unwrap();
        }
        std::fs::write(d.join("ann.json"), records).unwrap();
        (d, AnnotationSplit { file: "ann.json".into(), images: Some("img".into()) })
    }

    fn grey() -> ImageReadOptions {
        ImageReadOptions { channels: 1, cache: false, skip_corrupt: false }
    }

    #[test]
    fn labels_targets_captions() {
        let (d, s) = fixture(
            "kinds",
            r#"[{"image": "b.png", "label": "dog", "caption": "a dog"}, {"image": "a.png", "label": "cat"},
                {"image": "c.png", "label": "dog", "id": 7}]"#,
        );
        let (ds, _) = AnnotationDataset::open(&s, &d, &grey(), None).unwrap();
        assert_eq!(ds.class_names().unwrap(), vec!["cat", "dog"]);
        assert_eq!(ds.target_spec(), TargetSpec::Classes { num_classes: 2 });
        let mut t = ds.empty_targets(3);
        ds.read_targets(&[0, 1, 2], &mut t);
        assert_eq!(t, Targets::Classes(vec![1, 0, 1]));
        assert_eq!((ds.caption(0), ds.caption(1)), (Some("a dog"), None));
        let mut x = vec![0.0; 2];
        ds.read_inputs(&[2], &mut x).unwrap();
        assert_eq!(x, vec![20.0, 20.0]);
        // A val split indexes its names by the train classes.
        let names = ds.class_names().unwrap();
        std::fs::write(d.join("ann.json"), r#"[{"image": "a.png", "label": "dog"}]"#).unwrap();
        let (v, _) = AnnotationDataset::open(&s, &d, &grey(), Some(&names)).unwrap();
        let mut t = v.empty_targets(1);
        v.read_targets(&[0], &mut t);
        assert_eq!(t, Targets::Classes(vec![1]));

        std::fs::write(
            d.join("ann.json"),
            r#"[{"image": "a.png", "target": [1, 2.5]}, {"image": "b.png", "target": [3, 4]}]"#,
        )
        .unwrap();
        let (ds, _) = AnnotationDataset::open(&s, &d, &grey(), None).unwrap();
        assert_eq!(ds.target_spec(), TargetSpec::Dense { len: 2 });
        let mut t = ds.empty_targets(2);
        ds.read_targets(&[1, 0], &mut t);
        assert_eq!(t, Targets::Dense { values: vec![3.0, 4.0, 1.0, 2.5], target_len: 2 });

        std::fs::write(
            d.join("ann.json"),
            r#"[{"image": "a.png", "caption": "x"}, {"image": "b.png", "caption": "y"}]"#,
        )
        .unwrap();
        let (ds, _) = AnnotationDataset::open(&s, &d, &grey(), None).unwrap();
        assert_eq!((ds.target_spec(), ds.caption(1)), (TargetSpec::Dense { len: 0 }, Some("y")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn errors_name_record_and_file() {
        let cases = [
            (r#"[{"image": "a.png", "label": 0}, {"label": 1}]"#, "record 1: no `image` key"),
            (r#"[{"image": "a.png", "label": 0}, {"image": "b.png", "label": "dog"}]"#, "record 1: has a class-name"),
            (r#"[{"image": "a.png", "label": 0}, {"image": "b.png"}]"#, "record 1: has neither"),
            (
                r#"[{"image": "a.png", "target": [1]}, {"image": "b.png", "target": [1, 2]}]"#,
                "has 2 values but record 0's has 1",
            ),
            (r#"[{"image": "a.png", "label": 0}, {"image": "nope.png", "label": 1}]"#, "record 1: image"),
            (r#"[{"image": "a.png", "label": -1}]"#, "record 0: `label` -1"),
            (r#"{"x": 1}"#, "expected a JSON list"),
        ];
        for (i, (json, want)) in cases.iter().enumerate() {
            let (d, s) = fixture(&format!("err{i}"), json);
            let e = AnnotationDataset::open(&s, &d, &grey(), None).err().unwrap();
            assert!(e.contains("ann.json") && e.contains(want), "{json}: {e}");
            if want.contains("image") && !want.contains("key") {
                assert!(e.contains("nope.png"), "{e}");
            }
            std::fs::remove_dir_all(&d).unwrap();
        }
        let (d, s) = fixture("missing", "[]");
        let s = AnnotationSplit { file: "other.json".into(), ..s };
        let e = AnnotationDataset::open(&s, &d, &grey(), None).err().unwrap();
        assert!(e.contains("other.json") && e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
