//! A split value written either as a bare path (`train: data/train`) or as a map of the split's keys
//! (`train: {path: data/train}`).
//!
//! serde's untagged enums would accept both forms too, but on a bad key they only say that "data did not match
//! any variant"; dispatching on the value's kind instead lets the map form report serde's own message, which
//! names the unknown key and lists the valid ones.

use std::path::PathBuf;

use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Deserializes a string as `path(string)` and a map as `map(S)`; anything else is an error that says
/// `expecting`.
pub fn path_or_map<'de, D, S, T>(d: D, expecting: &str, path: fn(PathBuf) -> T, map: fn(S) -> T) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    S: DeserializeOwned,
{
    match Value::deserialize(d)? {
        Value::String(s) => Ok(path(PathBuf::from(s))),
        v @ Value::Object(_) => serde_json::from_value(v).map(map).map_err(D::Error::custom),
        other => Err(D::Error::custom(format!("expected {expecting}, found {}", kind(&other)))),
    }
}

/// A value's kind in messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::data::csv_table::CsvSplit;
    use crate::data::image_folder::FolderSplit;

    #[test]
    fn both_forms_parse() {
        let p: FolderSplit = serde_json::from_value(json!("data/train")).unwrap();
        assert_eq!(p.path(), std::path::Path::new("data/train"));
        let m: FolderSplit = serde_json::from_value(json!({"path": "data/val"})).unwrap();
        assert_eq!(m.path(), std::path::Path::new("data/val"));
        let c: CsvSplit = serde_json::from_value(json!({"file": "t.csv", "target": "y"})).unwrap();
        assert!(matches!(c, CsvSplit::Spec(s) if s.target.as_deref() == Some("y")));
    }

    #[test]
    fn a_bad_key_in_the_map_form_is_named_with_the_valid_ones() {
        let e = serde_json::from_value::<FolderSplit>(json!({"pth": "x"})).unwrap_err().to_string();
        assert!(e.contains("unknown field `pth`") && e.contains("`path`"), "{e}");
        let e = serde_json::from_value::<CsvSplit>(json!({"file": "a", "taget": "y"})).unwrap_err().to_string();
        assert!(e.contains("unknown field `taget`") && e.contains("`target`"), "{e}");
        let e = serde_json::from_value::<FolderSplit>(json!(3)).unwrap_err().to_string();
        assert_eq!(e, "expected a directory path, or {path: directory}, found a number");
    }
}
