//! `normalize`: `(x - mean[c]) / std[c]` per channel, as torchvision's `Normalize`. One value for `mean` or
//! `std` applies to every channel (and then any sample shape is accepted); lists need image samples whose
//! channel count they match.

use ecstrain_kernels::rng::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::super::sample::{image_dims, Sample, ShapeInfo};
use super::options::{parse, PerChannel};
use super::Processor;

/// `normalize` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    mean: PerChannel,
    std: PerChannel,
}

/// Per-channel standardisation.
#[derive(Debug)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
    /// Channels the lists require (`None` when both are single values).
    channels: Option<usize>,
}

/// Builds `normalize` from `{mean, std}`.
pub fn build(options: &Value) -> Result<Box<dyn Processor>, String> {
    let Options { mean: PerChannel(mean), std: PerChannel(std) } = parse(options)?;
    if let Some(s) = std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
        return Err(format!("`std` values must be finite and > 0, got {s} in {std:?}"));
    }
    if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
        return Err(format!("`mean` values must be finite, got {m} in {mean:?}"));
    }
    let channels = match (mean.len(), std.len()) {
        (1, 1) => None,
        (m, 1) => Some(m),
        (1, s) => Some(s),
        (m, s) if m == s => Some(m),
        (m, s) => {
            return Err(format!(
                "`mean` has {m} values and `std` {s}: give one per channel in both (or one value for all)"
            ))
        }
    };
    Ok(Box::new(Normalize { mean, std, channels }))
}

impl Normalize {
    fn check_channels(&self, dims: &[usize]) -> Result<(), String> {
        let Some(want) = self.channels else { return Ok(()) };
        match image_dims(dims) {
            Some((c, _, _)) if c == want => Ok(()),
            Some((c, _, _)) => Err(format!(
                "`mean` / `std` have {want} values but the samples {dims:?} have {c} channel(s): give one value \
                 per channel, or one value for all"
            )),
            None => Err(format!(
                "per-channel `mean` / `std` need image samples [C, H, W] or [H, W], got {dims:?} (one value for \
                 `mean` and `std` works on any shape)"
            )),
        }
    }
}

impl Processor for Normalize {
    fn name(&self) -> &str {
        "normalize"
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        self.check_channels(&input.dims)?;
        Ok(input.clone())
    }
    fn apply(&self, sample: &mut Sample, _scratch: &mut Vec<f32>, _rng: &mut Rng) -> Result<(), String> {
        self.check_channels(&sample.shape)?;
        let planes = self.channels.unwrap_or(1);
        let plane = sample.data.len() / planes;
        for (c, values) in sample.data.chunks_exact_mut(plane.max(1)).enumerate() {
            let m = self.mean[c.min(self.mean.len() - 1)];
            let s = self.std[c.min(self.std.len() - 1)];
            for v in values {
                *v = (*v - m) / s;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_and_channel_checks() {
        let e = build(&json!({"mean": [0.5], "std": [0.0]})).err().unwrap();
        assert!(e.contains("`std`") && e.contains("> 0"), "{e}");
        let e = build(&json!({"mean": [0.5, 0.5], "std": [1, 1, 1]})).err().unwrap();
        assert!(e.contains("`mean`") && e.contains("`std`"), "{e}");
        let e = build(&json!({"mean": "a", "std": 1})).err().unwrap();
        assert!(e.contains("option `mean`"), "{e}");
        let p = build(&json!({"mean": [0.5, 0.4, 0.3], "std": 0.5})).unwrap();
        let e = p.output_shape(&ShapeInfo::fixed(&[1, 28, 28])).err().unwrap();
        assert!(e.contains("3 values") && e.contains("1 channel"), "{e}");
        assert!(p.output_shape(&ShapeInfo::fixed(&[784])).err().unwrap().contains("[784]"));
        assert!(p.output_shape(&ShapeInfo::fixed(&[3, 2, 2])).is_ok());
        let one = build(&json!({"mean": 0.5, "std": 0.25})).unwrap();
        assert!(one.output_shape(&ShapeInfo::fixed(&[784])).is_ok());
        let mut s = Sample { data: vec![0.5, 1.0, 0.0, 0.25], shape: vec![4] };
        one.apply(&mut s, &mut Vec::new(), &mut Rng::new(0)).unwrap();
        assert_eq!(s.data, vec![0.0, 2.0, -2.0, -1.0]);
    }
}
