//! `results.csv`: one row per epoch (inner epoch) with Ultralytics-style columns, for spreadsheets, pandas
//! and tools made for Ultralytics runs:
//!
//! `epoch, step, time, train/<metric>..., val/<loss>..., metrics/<metric>..., lr/pg0, lr/pg1, <others>`
//!
//! from the `epoch` record: `train_loss` -> `train/loss`, a validation loss `val_loss` -> `val/loss`, every
//! other validation metric `val_accuracy` -> `metrics/accuracy`, `lr` -> `lr/pg0` (the weights' group),
//! `bias_lr` -> `lr/pg1`, `time` the cumulative seconds of the epochs so far, the rest (`momentum`,
//! `epoch_time_s`, `data_wait`, ...) under their own names. The column order is stable: that order, names
//! sorted within a group.
//!
//! The file is rewritten atomically after every epoch from the rows kept in memory, so it is never seen half
//! written, and a column that appears late (validation every other epoch) extends the header. A resumed
//! run starts from the file's rows before its first epoch, so the file continues as if it had never stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bevy_ecs::prelude::*;
use ecstrain_components::{MetricEvent, OutputSettings, RunFailure, RunInfo};

/// The file name in the run directory.
pub const FILE: &str = "results.csv";

/// The CSV column of an `epoch` record's key.
pub fn column_name(key: &str) -> String {
    match key {
        "lr" => "lr/pg0".into(),
        "bias_lr" => "lr/pg1".into(),
        _ => match (key.strip_prefix("train_"), key.strip_prefix("val_")) {
            (Some(m), _) => format!("train/{m}"),
            (_, Some(m)) if m.contains("loss") => format!("val/{m}"),
            (_, Some(m)) => format!("metrics/{m}"),
            _ => key.into(),
        },
    }
}

/// Sort key of a column: its group, then its name.
fn column_rank(c: &str) -> (u8, &str) {
    let group = match c {
        "epoch" => 0,
        "step" => 1,
        "time" => 2,
        _ if c.starts_with("train/") => 3,
        _ if c.starts_with("val/") => 4,
        _ if c.starts_with("metrics/") => 5,
        _ if c.starts_with("lr/") => 6,
        _ => 7,
    };
    (group, c)
}

/// The rows of a run and how to write them.
#[derive(Resource, Default)]
pub struct ResultsCsv {
    /// One map column -> value per epoch, in epoch order.
    pub rows: Vec<BTreeMap<String, f64>>,
    /// True once the existing file was read (first epoch of this process).
    pub loaded: bool,
}

impl ResultsCsv {
    /// Every column of the rows, in the stable order.
    pub fn columns(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.rows.iter().flat_map(|r| r.keys().map(String::as_str)).collect();
        let mut cols: Vec<&str> = set.into_iter().collect();
        cols.sort_by_key(|c| column_rank(c));
        cols.into_iter().map(String::from).collect()
    }

    /// The whole file: header and one line per row; a value a row lacks is an empty cell.
    pub fn render(&self) -> String {
        let cols = self.columns();
        let mut out = cols.join(",") + "\n";
        for row in &self.rows {
            let cells: Vec<String> =
                cols.iter().map(|c| row.get(c).map_or(String::new(), |v| format_value(c, *v))).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// Adds the row of one `epoch` record (`epoch` is 1-based), dropping any kept row of that epoch or later
    /// (a resumed run replacing what a killed run wrote after its checkpoint).
    pub fn push(&mut self, epoch: u64, step: u64, values: &BTreeMap<String, f64>) {
        self.rows.retain(|r| r.get("epoch").is_some_and(|&e| (e as u64) < epoch));
        let before = self.rows.last().and_then(|r| r.get("time")).copied().unwrap_or(0.0);
        let mut row: BTreeMap<String, f64> = values.iter().map(|(k, v)| (column_name(k), *v)).collect();
        row.insert("epoch".into(), epoch as f64);
        row.insert("step".into(), step as f64);
        row.insert("time".into(), before + values.get("epoch_time_s").copied().unwrap_or(0.0));
        self.rows.push(row);
    }
}

/// Integers without a fraction (epoch, step); everything else in Rust's shortest exact form.
fn format_value(col: &str, v: f64) -> String {
    if col == "epoch" || col == "step" {
        format!("{}", v as u64)
    } else {
        format!("{v}")
    }
}

/// Reads the rows of an existing `results.csv` (empty when there is none; unparsable cells are skipped).
pub fn read_rows(path: &Path) -> Vec<BTreeMap<String, f64>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let cols: Vec<&str> = header.split(',').map(str::trim).collect();
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            cols.iter()
                .zip(l.split(','))
                .filter_map(|(c, v)| v.trim().parse::<f64>().ok().map(|v| (c.to_string(), v)))
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|r| r.contains_key("epoch"))
        .collect()
}

/// Run condition: `run.results_csv` is on and the run has a directory.
pub fn results_csv_enabled(settings: Option<Res<OutputSettings>>, info: Option<Res<RunInfo>>) -> bool {
    info.is_some() && settings.is_some_and(|s| s.results_csv)
}

/// Flush: every `epoch` record becomes a row, and the file is rewritten with it.
pub fn write_results_csv(
    mut events: MessageReader<MetricEvent>,
    mut csv: ResMut<ResultsCsv>,
    info: Res<RunInfo>,
    mut failure: ResMut<RunFailure>,
) {
    let path = info.dir.join(FILE);
    let mut changed = false;
    for e in events.read().filter(|e| e.split == "epoch") {
        if !csv.loaded {
            csv.rows = read_rows(&path);
            csv.loaded = true;
        }
        csv.push(e.epoch + 1, e.step, &e.values);
        changed = true;
    }
    if changed {
        if let Err(err) = super::write_atomic(&path, csv.render().as_bytes()) {
            failure.0.get_or_insert(format!("cannot write {}: {err}", path.display()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn columns_are_ultralytics_style_in_a_stable_order() {
        let mut csv = ResultsCsv::default();
        let r = record(&[
            ("val_loss", 0.5),
            ("val_accuracy", 0.9),
            ("train_loss", 0.7),
            ("lr", 0.001),
            ("bias_lr", 0.01),
            ("epoch_time_s", 2.0),
            ("data_wait", 0.0),
        ]);
        csv.push(1, 23, &r);
        csv.push(2, 46, &r);
        assert_eq!(
            csv.columns(),
            [
                "epoch",
                "step",
                "time",
                "train/loss",
                "val/loss",
                "metrics/accuracy",
                "lr/pg0",
                "lr/pg1",
                "data_wait",
                "epoch_time_s"
            ]
        );
        let text = csv.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2], "2,46,4,0.7,0.5,0.9,0.001,0.01,0,2");
    }

    #[test]
    fn a_late_column_extends_the_header_and_a_resume_replaces_later_rows() {
        let mut csv = ResultsCsv::default();
        csv.push(1, 10, &record(&[("train_loss", 1.0), ("epoch_time_s", 1.0)]));
        csv.push(2, 20, &record(&[("train_loss", 0.8), ("val_accuracy", 0.5), ("epoch_time_s", 1.0)]));
        csv.push(3, 30, &record(&[("train_loss", 0.6), ("val_accuracy", 0.6), ("epoch_time_s", 1.0)]));
        let text = csv.render();
        assert!(text.starts_with("epoch,step,time,train/loss,metrics/accuracy,epoch_time_s\n1,10,1,1,,1\n"), "{text}");
        // A run resumed from the checkpoint of epoch 2 writes epoch 3 again.
        let dir = std::env::temp_dir().join(format!("ecstrain-results-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE), &text).unwrap();
        let mut resumed = ResultsCsv { rows: read_rows(&dir.join(FILE)), loaded: true };
        assert_eq!(resumed.rows.len(), 3);
        resumed.push(3, 30, &record(&[("train_loss", 0.65), ("val_accuracy", 0.61), ("epoch_time_s", 1.5)]));
        let lines: Vec<String> = resumed.render().lines().map(String::from).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[3], "3,30,3.5,0.65,0.61,1.5");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
