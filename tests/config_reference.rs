//! docs/configuration.md lists every config key the code accepts, and only those: the run keys, the common
//! model and dataset keys, and the option keys of every registered model, dataset builder and processor, as
//! the code itself reports them (`ecstrain::engine::config::keys`). Adding a key without documenting it (or
//! documenting one that does not exist) fails here.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use ecstrain::engine::cli::default_app;
use ecstrain::engine::config::keys;

/// Documented keys by section: `top`, `model`, `dataset`, `run`, `model mlp`, `dataset npy`, `processor resize`,
/// and `split npy` (the table under a `#### Split keys` heading inside a dataset's section).
fn documented(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in doc.lines() {
        let ticked = |l: &str| l.split('`').nth(1).map(str::to_string);
        if let Some(h) = line.strip_prefix("#### ") {
            let dataset = section.as_deref().and_then(|s| s.strip_prefix("dataset "));
            section = match dataset {
                Some(name) if h.starts_with("Split keys") => Some(format!("split {name}")),
                _ => None,
            };
            if let Some(s) = &section {
                out.entry(s.clone()).or_default();
            }
        } else if let Some(h) = line.strip_prefix("### ") {
            let kind = h.split_whitespace().next().unwrap_or("");
            section = ticked(h).map(|name| format!("{kind} {name}"));
            // A heading alone documents an entry without options.
            if let Some(s) = &section {
                out.entry(s.clone()).or_default();
            }
        } else if let Some(h) = line.strip_prefix("## ") {
            section = match h {
                "Top level" => Some("top".into()),
                _ if h.starts_with("`model`") => Some("model".into()),
                _ if h.starts_with("`datasets.") => Some("dataset".into()),
                _ if h.starts_with("`run`") => Some("run".into()),
                _ => None,
            };
        } else if line.starts_with("| `") {
            if let (Some(s), Some(key)) = (&section, ticked(line)) {
                out.entry(s.clone()).or_default().insert(key);
            }
        }
    }
    out
}

/// The code's keys by the same sections.
fn code_keys() -> BTreeMap<String, BTreeSet<String>> {
    let set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
    let mut out = BTreeMap::new();
    out.insert("top".to_string(), set(keys::config_keys()));
    out.insert("model".to_string(), set(keys::model_common_keys()));
    out.insert("dataset".to_string(), set(keys::dataset_common_keys()));
    out.insert("run".to_string(), set(keys::run_keys()));
    let reg = keys::registry_keys(&default_app().registry);
    for (name, k) in reg.dataset_splits {
        if let Some(k) = k {
            out.insert(format!("split {name}"), set(k));
        }
    }
    for (kind, entries) in [("model", reg.models), ("dataset", reg.datasets), ("processor", reg.processors)] {
        for (name, k) in entries {
            let k = k.unwrap_or_else(|m| panic!("{kind} {name} did not list its keys: {m}"));
            out.insert(format!("{kind} {name}"), set(k));
        }
    }
    out
}

/// Every difference between the documented and the code's keys, as readable lines.
fn differences(doc: &BTreeMap<String, BTreeSet<String>>, code: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let empty = BTreeSet::new();
    let sections: BTreeSet<&String> = doc.keys().chain(code.keys()).collect();
    let mut out = Vec::new();
    for s in sections {
        let (d, c) = (doc.get(s).unwrap_or(&empty), code.get(s).unwrap_or(&empty));
        if !doc.contains_key(s) && code.get(s).is_some_and(|k| k.is_empty()) {
            // An entry without options still needs its heading.
            out.push(format!("[{s}] has no section in docs/configuration.md"));
        }
        for k in c.difference(d) {
            out.push(format!("[{s}] `{k}` is accepted by the code but not documented"));
        }
        for k in d.difference(c) {
            out.push(format!("[{s}] `{k}` is documented but the code does not accept it"));
        }
    }
    out
}

fn doc_text() -> String {
    std::fs::read_to_string(common::repo().join("docs/configuration.md")).unwrap()
}

#[test]
fn every_config_key_is_documented_and_every_documented_key_exists() {
    let code = code_keys();
    for split in ["split npy", "split image_folder", "split annotations", "split csv"] {
        assert!(code.get(split).is_some_and(|k| !k.is_empty()), "{split}: the code listed no split keys");
    }
    let diff = differences(&documented(&doc_text()), &code);
    assert!(diff.is_empty(), "docs/configuration.md is out of date:\n{}", diff.join("\n"));
}

#[test]
fn an_undocumented_key_is_reported() {
    // The check itself: drop the row of `run.lr0`, of the `vit` model's `heads` and of the npy split's `extra`.
    let doc = doc_text();
    let npy_split = doc.find("#### Split keys of `npy`").unwrap();
    let extra = npy_split + doc[npy_split..].find("| `extra` |").unwrap();
    let end = extra + doc[extra..].find('\n').unwrap() + 1;
    let doc = format!("{}{}", &doc[..extra], &doc[end..]);
    let vit_at = doc.find("### model `vit`").unwrap();
    let heads = vit_at + doc[vit_at..].find("| `heads` |").unwrap();
    let end = heads + doc[heads..].find('\n').unwrap() + 1;
    let doc = format!("{}{}", &doc[..heads], &doc[end..]);
    let doc: String = doc.lines().filter(|l| !l.starts_with("| `lr0` |")).map(|l| format!("{l}\n")).collect();
    let diff = differences(&documented(&doc), &code_keys());
    assert_eq!(
        diff,
        [
            "[model vit] `heads` is accepted by the code but not documented",
            "[run] `lr0` is accepted by the code but not documented",
            "[split npy] `extra` is accepted by the code but not documented"
        ]
    );
}
