//! The curves of a run, read back from its `metrics.jsonl` (the one record of everything logged, already
//! trimmed to the checkpoint when a run resumed), so plots need no state of their own and can be redrawn
//! from any finished run directory.

use std::collections::BTreeMap;
use std::path::Path;

/// One record of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `train`, `val` or `epoch`.
    pub split: String,
    /// Optimizer step.
    pub step: u64,
    /// Epoch, 1-based as in the file.
    pub epoch: u64,
    /// Numeric values (`null`, written for non-finite numbers, is left out).
    pub values: BTreeMap<String, f64>,
}

/// Reads every complete record of `path`.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text.lines().filter_map(parse_line).collect())
}

fn parse_line(line: &str) -> Option<Record> {
    let serde_json::Value::Object(obj) = serde_json::from_str(line).ok()? else { return None };
    let split = obj.get("split")?.as_str()?.to_string();
    let step = obj.get("step")?.as_u64()?;
    let epoch = obj.get("epoch")?.as_u64()?;
    let values = obj
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "split" | "step" | "epoch"))
        .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
        .collect();
    Some(Record { split, step, epoch, values })
}

/// `(x, value)` of `key` in the records of `split`, with x the epoch or the step.
pub fn series(records: &[Record], split: &str, key: &str, by_step: bool) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter(|r| r.split == split)
        .filter_map(|r| r.values.get(key).map(|&v| (if by_step { r.step } else { r.epoch } as f64, v)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// The metric names the `val` records hold, sorted.
pub fn val_metrics(records: &[Record]) -> Vec<String> {
    let mut names: Vec<String> =
        records.iter().filter(|r| r.split == "val").flat_map(|r| r.values.keys().cloned()).collect();
    names.sort();
    names.dedup();
    names
}
