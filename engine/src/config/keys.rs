//! Every config key the code accepts, asked from the code itself: serde's "unknown field `x`, expected one of
//! `a`, `b`, ..." message lists a struct's keys, so feeding each section (and each registered model,
//! dataset builder and processor) a key that cannot exist yields its real key list, including entries a user
//! plugin registered. docs/configuration.md is checked against this list (tests/config_reference.rs).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::schema::{Config, DatasetSection, ModelSection, RunSection, SplitProcessors};
use crate::registry::Registry;

/// A key no section has.
pub const PROBE: &str = "__ecstrain_key_probe__";

/// The keys listed by a serde unknown-field message about [`PROBE`]: `expected one of `a`, `b``, `expected
/// `a``, `expected `a` or `b``, or `there are no fields` (none). `None` when `msg` is another error.
pub fn keys_in_message(msg: &str) -> Option<Vec<String>> {
    let at = msg.find(&format!("unknown field `{PROBE}`"))?;
    let rest = &msg[at + PROBE.len() + 16..];
    if rest.trim_start_matches([',', ' ']).starts_with("there are no fields") {
        return Some(Vec::new());
    }
    let list = &rest[rest.find("expected")?..];
    // Backticked names up to the end of serde's sentence (a caller may append a suggestion after it).
    let list = list.split(" at line ").next().unwrap_or(list);
    let list = list.split("; ").next().unwrap_or(list);
    Some(list.split('`').skip(1).step_by(2).map(str::to_string).collect())
}

fn probe_map() -> serde_json::Map<String, Value> {
    [(PROBE.to_string(), json!(0))].into_iter().collect()
}

/// The top-level sections.
pub fn config_keys() -> Vec<String> {
    let err = serde_json::from_value::<Config>(Value::Object(probe_map())).expect_err("the probe key is unknown");
    keys_in_message(&err.to_string()).expect("serde lists the sections")
}

/// The keys of `run:`.
pub fn run_keys() -> Vec<String> {
    let err = serde_json::from_value::<RunSection>(Value::Object(probe_map())).expect_err("the probe key is unknown");
    keys_in_message(&err.to_string()).expect("serde lists the run keys")
}

/// The keys of `model:` every model takes (the rest belong to the model's builder).
pub fn model_common_keys() -> Vec<String> {
    // Serialising a section with every optional key set lists them; `options` is flattened away.
    let full = ModelSection {
        arch: "a".into(),
        model_type: Some("t".into()),
        pretrained: Some("p".into()),
        strict: true,
        freeze: vec!["f".into()],
        fuse: false,
        options: Default::default(),
    };
    match serde_json::to_value(full).expect("the model section serialises") {
        Value::Object(m) => m.keys().cloned().collect(),
        _ => unreachable!("a struct serialises to an object"),
    }
}

/// The keys of `datasets.<name>:` every builder takes (the rest belong to the builder).
pub fn dataset_common_keys() -> Vec<String> {
    let full = DatasetSection {
        builder: "b".into(),
        root: Some("r".into()),
        processors: SplitProcessors { train: vec![json!("p")], eval: Vec::new() },
        options: Default::default(),
    };
    match serde_json::to_value(full).expect("the dataset section serialises") {
        Value::Object(m) => m.keys().cloned().collect(),
        _ => unreachable!("a struct serialises to an object"),
    }
}

/// The option keys of every registered model, dataset builder and processor, by kind and name; an entry
/// whose builder did not answer the probe with its key list maps to `Err(its message)`.
pub struct RegistryKeys {
    /// `model.<key>` per model.
    pub models: BTreeMap<String, Result<Vec<String>, String>>,
    /// `datasets.<name>.<key>` per builder.
    pub datasets: BTreeMap<String, Result<Vec<String>, String>>,
    /// The keys of a split written as a map (`datasets.<name>.train.<key>`) per builder; `None` for builders
    /// whose splits are not maps (they did not answer a probe inside `train` with a key list).
    pub dataset_splits: BTreeMap<String, Option<Vec<String>>>,
    /// Options per processor.
    pub processors: BTreeMap<String, Result<Vec<String>, String>>,
}

fn answer<T>(result: Result<T, String>) -> Result<Vec<String>, String> {
    match result {
        Ok(_) => Err("accepted an unknown key".into()),
        Err(m) => keys_in_message(&m).ok_or(m),
    }
}

/// Asks every entry of `registry` for its keys.
pub fn registry_keys(registry: &Registry) -> RegistryKeys {
    let probe = Value::Object(probe_map());
    // Models get a plausible sample shape; their options are parsed before the shape is looked at.
    let models = registry.models.iter().map(|(n, e)| (n.clone(), answer((e.build)(&probe, &[1, 8, 8])))).collect();
    let datasets =
        registry.datasets.iter().map(|(n, e)| (n.clone(), answer((e.build)(&probe_map(), Path::new("."))))).collect();
    // A probe inside the train split: builders parse their options before opening any file, so a map-form
    // split answers with its own key list.
    let split_probe: serde_json::Map<String, Value> = [("train".to_string(), probe.clone())].into_iter().collect();
    let dataset_splits = registry
        .datasets
        .iter()
        .map(|(n, e)| (n.clone(), answer((e.build)(&split_probe, Path::new("."))).ok()))
        .collect();
    let processors = registry.processors.iter().map(|(n, e)| (n.clone(), answer((e.build)(&probe)))).collect();
    RegistryKeys { models, datasets, dataset_splits, processors }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_of_serde_messages() {
        let m = format!("unknown field `{PROBE}`, expected one of `a`, `b_c`, `type` at line 1 column 2");
        assert_eq!(keys_in_message(&m).unwrap(), ["a", "b_c", "type"]);
        assert_eq!(keys_in_message(&format!("model: unknown field `{PROBE}`, expected `x`")).unwrap(), ["x"]);
        assert_eq!(keys_in_message(&format!("unknown field `{PROBE}`, expected `x` or `y`")).unwrap(), ["x", "y"]);
        assert_eq!(
            keys_in_message(&format!("unknown field `{PROBE}`, there are no fields")).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(keys_in_message("missing field `x`"), None);
    }

    #[test]
    fn run_and_model_keys_come_from_the_structs() {
        let run = run_keys();
        for k in ["lr0", "epochs", "plots", "tensorboard", "results_csv", "headless"] {
            assert!(run.iter().any(|r| r == k), "{k} not in {run:?}");
        }
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(sorted(model_common_keys()), ["arch", "freeze", "fuse", "pretrained", "strict", "type"]);
        assert_eq!(sorted(dataset_common_keys()), ["builder", "processors", "root"]);
        assert_eq!(config_keys(), ["model", "datasets", "run"]);
    }
}
