//! `scale`: `x * factor + offset` on every value (any sample shape), e.g. `factor: 0.00392156862745098` or
//! a shift of [0, 1] data to [-1, 1] with `factor: 2, offset: -1`.

use ecstrain_kernels::rng::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::super::sample::{Sample, ShapeInfo};
use super::options::parse;
use super::Processor;

/// `scale` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    factor: f64,
    #[serde(default)]
    offset: f64,
}

/// Multiplies by `factor`, then adds `offset`.
#[derive(Debug)]
pub struct Scale {
    factor: f32,
    offset: f32,
}

/// Builds `scale` from `{factor, offset = 0}`.
pub fn build(options: &Value) -> Result<Box<dyn Processor>, String> {
    let o: Options = parse(options)?;
    if !o.factor.is_finite() || !o.offset.is_finite() {
        return Err(format!("`factor` and `offset` must be finite numbers, got {} and {}", o.factor, o.offset));
    }
    Ok(Box::new(Scale { factor: o.factor as f32, offset: o.offset as f32 }))
}

impl Processor for Scale {
    fn name(&self) -> &str {
        "scale"
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        Ok(input.clone())
    }
    fn apply(&self, sample: &mut Sample, _scratch: &mut Vec<f32>, _rng: &mut Rng) -> Result<(), String> {
        for v in &mut sample.data {
            *v = *v * self.factor + self.offset;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scales_and_rejects_bad_options() {
        let p = build(&json!({"factor": 2.0, "offset": -1.0})).unwrap();
        let mut s = Sample { data: vec![0.0, 0.5, 1.0], shape: vec![3] };
        p.apply(&mut s, &mut Vec::new(), &mut Rng::new(0)).unwrap();
        assert_eq!(s.data, vec![-1.0, 0.0, 1.0]);
        assert!(build(&json!({})).err().unwrap().contains("missing field `factor`"));
        let e = build(&json!({"factor": 1, "ofset": 1})).err().unwrap();
        assert!(e.contains("unknown field `ofset`") && e.contains("`offset`"), "{e}");
    }
}
