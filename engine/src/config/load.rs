//! Reading a config file, applying `--set section.key=value` overrides, and writing the resolved config.

use std::path::{Path, PathBuf};

use super::Config;
use crate::error::{usage, EngineError};

/// A parsed, override-applied config and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The config file.
    pub path: PathBuf,
    /// The typed config after overrides.
    pub config: Config,
}

/// YAML 1.2 core parsing: only `true`/`false` are booleans, so keys and values such as `y`, `n`, `on` or
/// `no` stay strings (YAML 1.1 would turn the `y:` file key of a dataset into `true`).
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o
}

/// Parses YAML text with the engine's options.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, yaml_options())
}

/// A YAML error as a user should read it: serde-saphyr's user-facing wording ("duplicate mapping key `epochs`
/// is not allowed here", "null is not allowed here"), not its default developer advice about parser options.
pub fn yaml_error(e: &serde_saphyr::Error) -> String {
    e.render_with_formatter(&serde_saphyr::UserMessageFormatter)
}

/// Adds "did you mean `x`?" to serde's "unknown field `y`, expected one of a, b, ..." messages.
pub fn with_suggestion(msg: String) -> String {
    let Some(start) = msg.find("unknown field `") else { return msg };
    let rest = &msg[start + "unknown field `".len()..];
    let Some(end) = rest.find('`') else { return msg };
    let field = &rest[..end];
    let Some(list_at) = rest.find("expected one of ") else { return msg };
    let list = rest[list_at + "expected one of ".len()..].lines().next().unwrap_or("");
    let candidates: Vec<&str> = list.split(", ").map(|c| c.trim_matches('`')).collect();
    match crate::error::did_you_mean(field, candidates.iter().copied()) {
        Some(s) => format!("{msg}\n(did you mean `{s}`?)"),
        None => msg,
    }
}

/// Splits `section.key=value` into a key path and a YAML-parsed value (`0.01`, `true`, `[1, 2]`, `AdamW`).
pub fn parse_override(s: &str) -> Result<(Vec<String>, serde_json::Value), EngineError> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| usage(format!("--set {s}: expected section.key=value (e.g. --set run.lr0=0.01)")))?;
    let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err(usage(format!("--set {s}: the key must be section.key (e.g. run.epochs), got `{key}`")));
    }
    let value: serde_json::Value = if value.trim().is_empty() {
        serde_json::Value::String(String::new())
    } else {
        from_yaml(value).map_err(|e| usage(format!("--set {s}: cannot parse the value: {}", yaml_error(&e))))?
    };
    Ok((path, value))
}

fn apply(
    root: &mut serde_json::Value,
    path: &[String],
    value: serde_json::Value,
    raw: &str,
) -> Result<(), EngineError> {
    let mut node = root;
    for (i, k) in path.iter().enumerate() {
        let obj = node
            .as_object_mut()
            .ok_or_else(|| usage(format!("--set {raw}: `{}` is not a section with keys", path[..i].join("."))))?;
        if i + 1 == path.len() {
            obj.insert(k.clone(), value);
            return Ok(());
        }
        node = obj.entry(k.clone()).or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
    unreachable!("path has at least two elements")
}

/// Reads `path`, parses it (errors name the file, line and column), then applies `overrides` in order.
pub fn load_config(path: &Path, overrides: &[String]) -> Result<LoadedConfig, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            usage(format!("config file not found: {}", path.display()))
        } else {
            usage(format!("cannot read config file {}: {e}", path.display()))
        }
    })?;
    let mut config: Config = from_yaml(&text)
        .map_err(|e| usage(with_suggestion(format!("{}: invalid config: {}", path.display(), yaml_error(&e)))))?;
    if !overrides.is_empty() {
        let mut value = serde_json::to_value(&config).expect("a parsed config serialises");
        for raw in overrides {
            let (key, v) = parse_override(raw)?;
            apply(&mut value, &key, v, raw)?;
            config = serde_json::from_value(value.clone())
                .map_err(|e| usage(with_suggestion(format!("{}: after --set {raw}: {e}", path.display()))))?;
        }
    }
    Ok(LoadedConfig { path: path.to_path_buf(), config })
}

/// The config as YAML, every default filled in (written to the run directory as `config.yaml`).
pub fn resolved_yaml(config: &Config) -> String {
    serde_saphyr::to_string(config).expect("a config serialises to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ecstrain-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = "model:\n  arch: mlp\n  output_size: 10\ndatasets:\n  d:\n    builder: npy\n    train: {x: a.npy, y: b.npy}\nrun:\n  epochs: 3\n";

    #[test]
    fn loads_defaults_and_overrides() {
        let p = write("ok", BASE);
        let c = load_config(&p, &["run.lr0=0.5".into(), "model.hidden_sizes=[8, 8]".into()]).unwrap().config;
        assert_eq!(c.run.epochs, 3);
        assert_eq!(c.run.lr0, 0.5);
        assert_eq!(c.run.batch, 64);
        assert_eq!(c.model.options["hidden_sizes"], serde_json::json!([8, 8]));
        let y = resolved_yaml(&c);
        assert!(y.contains("lr0: 0.5") && y.contains("arch: mlp"), "{y}");
        let back: Config = from_yaml(&y).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn errors_name_file_line_key_and_choices() {
        let p = write("unknown", &BASE.replace("epochs: 3", "epoch: 3"));
        let e = load_config(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("c.yaml") && e.contains("line 9") && e.contains("epoch") && e.contains("epochs"), "{e}");
        let p = write("type", &BASE.replace("epochs: 3", "epochs: many"));
        let e = load_config(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("line 9") && e.contains("u64"), "{e}");
        let p = write("syntax", &BASE.replace("epochs: 3", "epochs: [3"));
        let e = load_config(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("line 9"), "{e}");
        let e = load_config(Path::new("/nonexistent/x.yaml"), &[]).unwrap_err();
        assert!(e.to_string().contains("config file not found") && e.exit_code() == 2);
        let p = write("set", BASE);
        let e = load_config(&p, &["run.lr=1".into()]).unwrap_err().to_string();
        assert!(e.contains("--set run.lr=1") && e.contains("unknown field `lr`"), "{e}");
        let e = load_config(&p, &["epochs".into()]).unwrap_err().to_string();
        assert!(e.contains("section.key=value"), "{e}");
        let e = load_config(&p, &["run.epochs=x".into()]).unwrap_err().to_string();
        assert!(e.contains("invalid type"), "{e}");
    }
}
