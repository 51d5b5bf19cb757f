//! The `csv` dataset: a table with a header row; numeric feature columns become the sample (`[features]`)
//! and one column, by name, the target: class labels (integers, or strings indexed in sorted order) or a
//! regression value.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ecstrain_components::Targets;
use serde::Deserialize;

use super::path_or_map::path_or_map;
use super::sample::Sample;
use super::{DataError, Dataset, TargetSpec};

/// One split: `train: x.csv` or `train: {file: x.csv, target: column, ...}`; keys given here override the
/// dataset-level ones.
#[derive(Clone, Debug, PartialEq)]
pub enum CsvSplit {
    /// The file.
    Path(PathBuf),
    /// The file with per-split settings.
    Spec(CsvSplitSpec),
}

impl<'de> Deserialize<'de> for CsvSplit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let expecting = "a CSV file path, or {file: path, target: column, features: [...], classification: bool}";
        path_or_map(d, expecting, CsvSplit::Path, CsvSplit::Spec)
    }
}

/// `{file, target, features, classification}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CsvSplitSpec {
    /// The CSV file.
    pub file: PathBuf,
    /// Target column.
    #[serde(default)]
    pub target: Option<String>,
    /// Feature columns (default: every column but the target).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Whether the target is a class label.
    #[serde(default)]
    pub classification: Option<bool>,
}

/// Options of the `csv` dataset.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Training split.
    pub train: CsvSplit,
    /// Validation split (same columns as train).
    #[serde(default)]
    pub val: Option<CsvSplit>,
    /// Test split, through the eval processors: read by `engine eval --split test` and `engine predict --split test`, never by training.
    #[serde(default)]
    pub test: Option<CsvSplit>,
    /// Target column (for every split that does not name its own).
    #[serde(default)]
    pub target: Option<String>,
    /// Feature columns (default: every column but the target).
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Whether the target is a class label; default: true when the target column holds integers or any
    /// non-numeric string (strings are mapped to sorted class indices), false for other numbers.
    #[serde(default)]
    pub classification: Option<bool>,
}

/// The resolved settings of one split.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvSpec {
    /// The CSV file (relative to the dataset root).
    pub file: PathBuf,
    /// Target column.
    pub target: String,
    /// Feature columns, if given.
    pub features: Option<Vec<String>>,
    /// Classification, if given.
    pub classification: Option<bool>,
}

impl CsvOptions {
    /// The settings of a split: its own keys, else the dataset-level ones. `key` is its config key.
    pub fn spec(&self, split: &CsvSplit, key: &str) -> Result<CsvSpec, String> {
        let (file, target, features, classification) = match split {
            CsvSplit::Path(p) => (p.clone(), None, None, None),
            CsvSplit::Spec(s) => (s.file.clone(), s.target.clone(), s.features.clone(), s.classification),
        };
        let target = target.or_else(|| self.target.clone()).ok_or_else(|| {
            format!("{key}: no target column; set `target: <column name>` (on the split or the dataset)")
        })?;
        Ok(CsvSpec {
            file,
            target,
            features: features.or_else(|| self.features.clone()),
            classification: classification.or(self.classification),
        })
    }
}

/// The targets of a table.
#[derive(Clone, Debug, PartialEq)]
enum TableTargets {
    Classes { labels: Vec<i64>, names: Option<Vec<String>>, num_classes: usize },
    Values(Vec<f32>),
}

/// One split of a CSV table, held in memory.
pub struct CsvTable {
    file: PathBuf,
    features: Vec<String>,
    shape: Vec<usize>,
    x: Vec<f32>,
    targets: TableTargets,
}

/// How a table's target column is read.
enum Kind {
    Regression,
    /// Integer class indices.
    Indices,
    /// Class names, sorted: a label is its name's position.
    Named(Vec<String>),
}

/// A class index: an integer >= 0, written as one (`3`) or as a whole float (`3.0`).
fn class_index(s: &str) -> Option<i64> {
    let s = s.trim();
    s.parse::<i64>()
        .ok()
        .or_else(|| number(s).filter(|v| v.fract() == 0.0 && v.abs() < 9e15).map(|v| v as i64))
        .filter(|&l| l >= 0)
}

/// Parses a number the way a table means it: trimmed, finite.
fn number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

impl CsvTable {
    /// Reads and checks a table. `reference` is the train split: this split must have its features, gets its
    /// target kind and indexes class names by its classes.
    pub fn open(spec: &CsvSpec, root: &Path, reference: Option<&CsvTable>) -> Result<CsvTable, DataError> {
        let file = root.join(&spec.file);
        let f = file.display().to_string();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(&file)
            .map_err(|e| format!("{f}: cannot read the CSV file: {e}"))?;
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| format!("{f}: cannot read the header row: {e}"))?
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        if header.is_empty() || header.iter().all(String::is_empty) {
            return Err(format!("{f}: no header row (the first line must name the columns)"));
        }
        let column = |name: &str| -> Result<usize, String> {
            let mut hits = header.iter().enumerate().filter(|(_, h)| *h == name).map(|(i, _)| i);
            match (hits.next(), hits.next()) {
                (Some(i), None) => Ok(i),
                (Some(_), Some(_)) => Err(format!("{f}: column `{name}` appears more than once in the header")),
                (None, _) => Err(format!("{f}: no column `{name}`; the columns are: {}", header.join(", "))),
            }
        };
        let t = column(&spec.target).map_err(|m| format!("target: {m}"))?;
        let features: Vec<String> = match &spec.features {
            Some(list) => list.clone(),
            None => header.iter().enumerate().filter(|&(i, _)| i != t).map(|(_, h)| h.clone()).collect(),
        };
        if let Some(r) = reference {
            if r.features != features {
                return Err(format!(
                    "{f}: feature columns {} differ from the train split's {} ({})",
                    features.join(", "),
                    r.features.join(", "),
                    r.file.display()
                ));
            }
        }
        if features.is_empty() {
            return Err(format!("{f}: no feature columns besides the target `{}`", spec.target));
        }
        let cols =
            features.iter().map(|n| column(n).map_err(|m| format!("features: {m}"))).collect::<Result<Vec<_>, _>>()?;
        if cols.contains(&t) {
            return Err(format!("{f}: the target column `{}` is also listed in features", spec.target));
        }

        let mut x = Vec::new();
        let mut raw_targets = Vec::new();
        let mut lines = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| match e.kind() {
                csv::ErrorKind::UnequalLengths { pos, expected_len, len } => format!(
                    "{f}: line {}: the row has {len} fields but the header has {expected_len}; every row needs one \
                     value per column",
                    pos.as_ref().map_or(0, |p| p.line())
                ),
                _ => format!("{f}: {e}"),
            })?;
            let line = record.position().map_or(0, |p| p.line());
            for (&c, name) in cols.iter().zip(&features) {
                let v = &record[c];
                let value = number(v).ok_or_else(|| {
                    format!("{f}: line {line}, column `{name}`: `{v}` is not a number (features must be numeric)")
                })?;
                x.push(value as f32);
            }
            raw_targets.push(record[t].trim().to_string());
            lines.push(line);
        }
        let kind = match reference.map(|r| &r.targets) {
            Some(TableTargets::Values(_)) => Kind::Regression,
            Some(TableTargets::Classes { names: Some(n), .. }) => Kind::Named(n.clone()),
            Some(TableTargets::Classes { names: None, .. }) => Kind::Indices,
            None => {
                let all_int = raw_targets.iter().all(|v| class_index(v).is_some());
                let all_numeric = raw_targets.iter().all(|v| number(v).is_some());
                match spec.classification.unwrap_or(all_int || !all_numeric) {
                    false => Kind::Regression,
                    true if all_int => Kind::Indices,
                    true => Kind::Named(raw_targets.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect()),
                }
            }
        };
        let bad = |line: &u64, v: &str, what: &str| format!("{f}: line {line}, column `{}`: `{v}` {what}", spec.target);
        let targets = match kind {
            Kind::Regression => TableTargets::Values(
                raw_targets
                    .iter()
                    .zip(&lines)
                    .map(|(v, line)| {
                        number(v).map(|n| n as f32).ok_or_else(|| {
                            bad(
                                line,
                                v,
                                "is not a number (a regression target; set classification: true for class names)",
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Kind::Indices => {
                let labels: Vec<i64> = raw_targets
                    .iter()
                    .zip(&lines)
                    .map(|(v, line)| {
                        class_index(v).ok_or_else(|| bad(line, v, "is not a class index (an integer >= 0)"))
                    })
                    .collect::<Result<_, _>>()?;
                let num_classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
                TableTargets::Classes { labels, names: None, num_classes }
            }
            Kind::Named(names) => {
                let labels: Vec<i64> = raw_targets
                    .iter()
                    .zip(&lines)
                    .map(|(v, line)| {
                        names.binary_search(v).map(|k| k as i64).map_err(|_| {
                            bad(line, v, &format!("is not one of the train split's classes ({})", names.join(", ")))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                TableTargets::Classes { labels, num_classes: names.len(), names: Some(names) }
            }
        };
        let shape = vec![features.len()];
        Ok(CsvTable { file, features, shape, x, targets })
    }

    /// The feature column names, in sample order.
    pub fn features(&self) -> &[String] {
        &self.features
    }
}

impl Dataset for CsvTable {
    fn describe(&self) -> String {
        self.file.display().to_string()
    }
    fn len(&self) -> usize {
        self.x.len() / self.features.len()
    }
    fn sample_shape(&self) -> &[usize] {
        &self.shape
    }
    fn target_spec(&self) -> TargetSpec {
        match &self.targets {
            TableTargets::Classes { num_classes, .. } => TargetSpec::Classes { num_classes: *num_classes },
            TableTargets::Values(_) => TargetSpec::Dense { len: 1 },
        }
    }
    fn class_names(&self) -> Option<Vec<String>> {
        match &self.targets {
            TableTargets::Classes { names, .. } => names.clone(),
            TableTargets::Values(_) => None,
        }
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        let n = self.features.len();
        out.reset(&self.shape).copy_from_slice(&self.x[index * n..(index + 1) * n]);
        Ok(())
    }
    fn read_inputs(&self, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        let n = self.features.len();
        for (row, &i) in out.chunks_exact_mut(n).zip(indices) {
            row.copy_from_slice(&self.x[i * n..(i + 1) * n]);
        }
        Ok(())
    }
    fn read_targets(&self, indices: &[usize], out: &mut Targets) {
        match (&self.targets, out) {
            (TableTargets::Classes { labels, .. }, Targets::Classes(v)) => {
                v.clear();
                v.extend(indices.iter().map(|&i| labels[i]));
            }
            (TableTargets::Values(y), Targets::Dense { values, .. }) => {
                values.clear();
                values.extend(indices.iter().map(|&i| y[i]));
            }
            _ => unreachable!("target buffer kind comes from empty_targets"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(tag: &str, text: &str, target: &str, classification: Option<bool>) -> Result<CsvTable, String> {
        let d = std::env::temp_dir().join(format!("ecstrain-csv-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("t.csv"), text).unwrap();
        let spec = CsvSpec { file: "t.csv".into(), target: target.into(), features: None, classification };
        let r = CsvTable::open(&spec, &d, None);
        std::fs::remove_dir_all(&d).unwrap();
        r
    }

    #[test]
    fn kinds_of_target() {
        let t = table("int", "a,y,b\n1,0,2\n3,2,4.5\n", "y", None).unwrap();
        assert_eq!(
            (t.features(), t.target_spec()),
            (&["a".to_string(), "b".into()][..], TargetSpec::Classes { num_classes: 3 })
        );
        let mut x = vec![0.0; 4];
        t.read_inputs(&[1, 0], &mut x).unwrap();
        assert_eq!(x, vec![3.0, 4.5, 1.0, 2.0]);
        let t = table("names", "a,kind\n1,setosa\n2,virginica\n3,setosa\n", "kind", None).unwrap();
        assert_eq!(t.class_names().unwrap(), vec!["setosa", "virginica"]);
        let mut y = t.empty_targets(3);
        t.read_targets(&[0, 1, 2], &mut y);
        assert_eq!(y, Targets::Classes(vec![0, 1, 0]));
        let t = table("reg", "a,y\n1,0.5\n2,1\n", "y", None).unwrap();
        assert_eq!(t.target_spec(), TargetSpec::Dense { len: 1 });
        let t = table("forced", "a,y\n1,0\n2,1\n", "y", Some(false)).unwrap();
        assert_eq!(t.target_spec(), TargetSpec::Dense { len: 1 });
    }

    #[test]
    fn errors_name_row_and_column() {
        let e = table("notarget", "a,b\n1,2\n", "y", None).err().unwrap();
        assert!(e.contains("t.csv") && e.contains("no column `y`") && e.contains("a, b"), "{e}");
        let e = table("nan", "a,b,y\n1,2,0\n1,x,1\n", "y", None).err().unwrap();
        assert!(e.contains("line 3, column `b`: `x` is not a number"), "{e}");
        let e = table("ragged", "a,b,y\n1,2,0\n1,1\n", "y", None).err().unwrap();
        assert!(e.contains("line 3") && e.contains("2 fields but the header has 3"), "{e}");
        let e = table("regnames", "a,y\n1,cat\n", "y", Some(false)).err().unwrap();
        assert!(e.contains("`cat` is not a number"), "{e}");
        let e = table("missing", "", "y", None).err().unwrap();
        assert!(e.contains("no header row"), "{e}");
    }
}
