//! Processor `polar_features`: `[x, y] -> [x, y, r, theta]` with `r = sqrt(x^2 + y^2)` and `theta` the angle
//! (atan2) scaled by `angle_scale`, giving a model an easier view of spirals. It changes the sample shape,
//! which the pipeline learns from `output_shape` before anything runs (the model is then built for 4 inputs).

use ecstrain::engine::registry::ProcessorEntry;
use ecstrain::engine::App;
use ecstrain::kernels::rng::Rng;
use ecstrain::systems::data::{Processor, Sample, ShapeInfo};
use serde::Deserialize;

/// Options of `polar_features`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    /// Factor on the angle (radians), e.g. `0.3183` to map it into [-1, 1].
    #[serde(default = "one")]
    angle_scale: f64,
}

fn one() -> f64 {
    1.0
}

/// Appends the polar coordinates of a 2-d point.
pub struct PolarFeatures {
    angle_scale: f32,
}

impl Processor for PolarFeatures {
    fn name(&self) -> &str {
        "polar_features"
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        if input.dims != [2] {
            return Err(format!("polar_features needs 2-d points (samples of shape [2]), got {:?}", input.dims));
        }
        Ok(ShapeInfo::fixed(&[4]))
    }
    fn apply(&self, sample: &mut Sample, _scratch: &mut Vec<f32>, _rng: &mut Rng) -> Result<(), String> {
        let (x, y) = (sample.data[0], sample.data[1]);
        // `data` keeps its capacity across samples, so this does not allocate once it has held 4 values.
        sample.data.truncate(2);
        sample.data.extend_from_slice(&[(x * x + y * y).sqrt(), y.atan2(x) * self.angle_scale]);
        sample.shape.clear();
        sample.shape.push(4);
        Ok(())
    }
}

fn build(options: &serde_json::Value) -> Result<Box<dyn Processor>, String> {
    let o: Options = serde_json::from_value(options.clone()).map_err(|e| e.to_string())?;
    if !o.angle_scale.is_finite() {
        return Err(format!("angle_scale must be a finite number, got {}", o.angle_scale));
    }
    Ok(Box::new(PolarFeatures { angle_scale: o.angle_scale as f32 }))
}

/// Registers `polar_features`.
pub fn register(app: &mut App) {
    app.registry.register_processor(
        "polar_features",
        ProcessorEntry { build, doc: "[x, y] -> [x, y, r, angle * angle_scale] (ecstrain-examples)" },
    );
}
