//! `to_float`: byte values 0..255 to 0..1, divided by 255 as torchvision's `ToTensor` does on 8-bit images.

use ecstrain_kernels::rng::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::super::sample::{Sample, ShapeInfo};
use super::options::parse;
use super::Processor;

/// Takes no options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {}

/// Divides every value by 255.
#[derive(Debug)]
pub struct ToFloat;

/// Builds `to_float` (no options).
pub fn build(options: &Value) -> Result<Box<dyn Processor>, String> {
    let Options {} = parse(options)?;
    Ok(Box::new(ToFloat))
}

impl Processor for ToFloat {
    fn name(&self) -> &str {
        "to_float"
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        Ok(input.clone())
    }
    fn apply(&self, sample: &mut Sample, _scratch: &mut Vec<f32>, _rng: &mut Rng) -> Result<(), String> {
        for v in &mut sample.data {
            *v /= 255.0;
        }
        Ok(())
    }
}
