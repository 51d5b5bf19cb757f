//! Processors: per-sample transforms configured per split (LAVIS's `vis_processor` train / eval), run by the
//! loader's workers between reading a sample and writing its batch row. One module per processor.
//!
//! A processor that draws random numbers (crops, flips, jitter) gets an [`Rng`] derived from
//! `(run.seed, split, data epoch, sample index)`, so the augmentation of a sample does not depend on which
//! worker processed it, in which order, on how many processes the data is sharded, or on whether the run was
//! resumed.
//!
//! Each processor module has a `build(&serde_json::Value)` (the registry's builder) parsing its options with
//! serde; the image kernels they share are in [`resample`] (resizing), [`pad`] (padding + cropping) and
//! [`color`] (torchvision's colour adjustments). Results follow `torchvision.transforms.v2` on float images
//! (checked against tests/reference/processors.json).

pub mod center_crop;
pub mod color;
pub mod color_jitter;
pub mod flip;
pub mod image;
pub mod normalize;
pub mod options;
pub mod pad;
pub mod random_crop;
pub mod random_resized_crop;
pub mod resample;
pub mod resize;
pub mod scale;
pub mod to_float;

#[cfg(test)]
mod reference_tests;

use ecstrain_kernels::rng::Rng;

use super::sample::{Sample, ShapeInfo};

/// One per-sample transform.
pub trait Processor: Send + Sync {
    /// The registered name (for messages).
    fn name(&self) -> &str;
    /// The shape this processor produces from samples of shape `input`, or a message saying why it cannot
    /// process them (e.g. "resize needs image samples [C, H, W], got [784]"). Called once when the pipeline is
    /// built, so a shape mistake is a configuration error, not a failure mid-run.
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String>;
    /// Whether [`Processor::apply`] draws from its `rng` (a deterministic pipeline needs no seeds).
    fn is_random(&self) -> bool {
        false
    }
    /// Transforms `sample` in place. `scratch` is a reusable buffer the processor may use (it is grown, never
    /// shrunk, so steady-state processing does not allocate). Fails only on a sample whose shape the
    /// configuration could not foresee (an image smaller than a crop in a folder of mixed sizes).
    fn apply(&self, sample: &mut Sample, scratch: &mut Vec<f32>, rng: &mut Rng) -> Result<(), String>;
}

/// Splits one entry of a `processors.train` / `processors.eval` list into `(name, options)`. Three spellings
/// are accepted: a bare name (`random_horizontal_flip`), a one-key map (`normalize: {mean: [0.5], std: [0.5]}`)
/// and a LAVIS-style map with a `name` key (`{name: normalize, mean: [0.5], std: [0.5]}`).
pub fn split_entry(entry: &serde_json::Value) -> Result<(String, serde_json::Value), String> {
    use serde_json::Value;
    match entry {
        Value::String(s) => Ok((s.clone(), Value::Object(Default::default()))),
        Value::Object(m) if m.contains_key("name") => {
            let name = m["name"].as_str().ok_or("the `name` of a processor must be a string")?.to_string();
            let mut rest = m.clone();
            rest.remove("name");
            Ok((name, Value::Object(rest)))
        }
        Value::Object(m) if m.len() == 1 => {
            let (k, v) = m.iter().next().expect("one key");
            let options = match v {
                Value::Null => Value::Object(Default::default()),
                o @ Value::Object(_) => o.clone(),
                other => {
                    return Err(format!("options of processor `{k}` must be a map of keys, got {other}"));
                }
            };
            Ok((k.clone(), options))
        }
        other => Err(format!(
            "a processor is a name, a one-key map `name: {{options}}` or a map with a `name` key, got {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_in_all_three_spellings() {
        assert_eq!(split_entry(&json!("flip")).unwrap(), ("flip".into(), json!({})));
        assert_eq!(
            split_entry(&json!({"normalize": {"mean": [0.5]}})).unwrap(),
            ("normalize".into(), json!({"mean": [0.5]}))
        );
        assert_eq!(split_entry(&json!({"to_float": null})).unwrap(), ("to_float".into(), json!({})));
        assert_eq!(split_entry(&json!({"name": "resize", "size": 8})).unwrap(), ("resize".into(), json!({"size": 8})));
        assert!(split_entry(&json!(3)).is_err());
        assert!(split_entry(&json!({"a": 1})).err().unwrap().contains("`a`"));
        assert!(split_entry(&json!({"a": {}, "b": {}})).is_err());
    }
}
