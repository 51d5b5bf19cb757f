//! `resize`: torchvision's `Resize(size, interpolation, antialias)` on float images. An int `size` resizes
//! the smaller edge to it keeping the aspect ratio (the longer edge truncated, as torchvision computes it),
//! `[h, w]` resizes to exactly that.

use ecstrain_kernels::rng::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::super::sample::{Sample, ShapeInfo};
use super::image::{image_input, sample_chw, with_hw};
use super::options::{parse, Size};
use super::resample::{resize_crop, CropBox, Interpolation};
use super::Processor;

fn yes() -> bool {
    true
}

/// `resize` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    size: Size,
    #[serde(default)]
    interpolation: Interpolation,
    #[serde(default = "yes")]
    antialias: bool,
}

/// Resizes image samples.
#[derive(Debug)]
pub struct Resize {
    size: Size,
    interpolation: Interpolation,
    antialias: bool,
}

/// Builds `resize` from `{size, interpolation = bilinear, antialias = true}`.
pub fn build(options: &Value) -> Result<Box<dyn Processor>, String> {
    let o: Options = parse(options)?;
    Ok(Box::new(Resize { size: o.size, interpolation: o.interpolation, antialias: o.antialias }))
}

/// torchvision's output size of `resize(size)` for an `h x w` image: an int is the new smaller edge, the other
/// `int(size * long / short)`.
pub fn output_size(size: Size, h: usize, w: usize) -> (usize, usize) {
    match size {
        Size::Hw(oh, ow) => (oh, ow),
        Size::One(s) => {
            let (short, long) = if w <= h { (w, h) } else { (h, w) };
            let new_long = (s as f64 * long as f64 / short as f64) as usize;
            if w <= h {
                (new_long, s)
            } else {
                (s, new_long)
            }
        }
    }
}

impl Processor for Resize {
    fn name(&self) -> &str {
        "resize"
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        let (_, h, w) = image_input("resize", input)?;
        let (oh, ow) = output_size(self.size, h, w);
        // An int size keeps each image's aspect ratio: mixed sizes stay mixed.
        let fixed = matches!(self.size, Size::Hw(..)) || input.fixed;
        Ok(ShapeInfo { dims: with_hw(&input.dims, oh, ow), fixed })
    }
    fn apply(&self, sample: &mut Sample, scratch: &mut Vec<f32>, _rng: &mut Rng) -> Result<(), String> {
        let (_, h, w) = sample_chw("resize", sample)?;
        let out = output_size(self.size, h, w);
        let whole = CropBox { top: 0, left: 0, height: h, width: w };
        resize_crop(sample, scratch, whole, out, self.interpolation, self.antialias);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn output_sizes_and_shapes() {
        assert_eq!(output_size(Size::One(9), 13, 17), (9, 11));
        assert_eq!(output_size(Size::One(12), 9, 7), (15, 12));
        assert_eq!(output_size(Size::Hw(4, 5), 9, 7), (4, 5));
        let p = build(&json!({"size": 8})).unwrap();
        let mixed = ShapeInfo { dims: vec![3, 10, 20], fixed: false };
        assert_eq!(p.output_shape(&mixed).unwrap(), ShapeInfo { dims: vec![3, 8, 16], fixed: false });
        let p = build(&json!({"size": [8, 6], "interpolation": "bicubic"})).unwrap();
        assert_eq!(p.output_shape(&mixed).unwrap(), ShapeInfo::fixed(&[3, 8, 6]));
        assert_eq!(p.output_shape(&ShapeInfo::fixed(&[10, 20])).unwrap(), ShapeInfo::fixed(&[8, 6]));
        let e = p.output_shape(&ShapeInfo::fixed(&[64])).err().unwrap();
        assert!(e.contains("[C, H, W]") && e.contains("[64]"), "{e}");
    }

    #[test]
    fn steady_state_reuses_its_two_buffers() {
        // Both passes, and the height-only pass that swaps: after two samples no buffer is reallocated.
        for size in [json!([5, 7]), json!([5, 11]), json!([14, 4])] {
            let p = build(&json!({ "size": size })).unwrap();
            let (mut s, mut scratch) = (Sample::default(), Vec::new());
            let mut seen = Vec::new();
            for _ in 0..5 {
                s.reset(&[3, 9, 11]).fill(0.5);
                p.apply(&mut s, &mut scratch, &mut Rng::new(0)).unwrap();
                let mut ptrs = [s.data.as_ptr() as usize, scratch.as_ptr() as usize];
                ptrs.sort();
                seen.push(ptrs);
            }
            assert!(seen[2..].windows(2).all(|w| w[0] == w[1]), "{size}: {seen:?}");
        }
    }

    #[test]
    fn bad_options_name_the_key() {
        let e = build(&json!({"size": 0})).err().unwrap();
        assert!(e.contains("option `size`") && e.contains("positive"), "{e}");
        let e = build(&json!({"size": 8, "interpolation": "lanczos"})).err().unwrap();
        assert!(e.contains("option `interpolation`") && e.contains("bilinear") && e.contains("nearest"), "{e}");
        let e = build(&json!({"size": 8, "mode": "bilinear"})).err().unwrap();
        assert!(e.contains("unknown field `mode`") && e.contains("antialias"), "{e}");
        assert!(build(&json!({})).err().unwrap().contains("missing field `size`"));
    }
}
