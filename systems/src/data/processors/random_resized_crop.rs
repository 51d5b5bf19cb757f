//! `random_resized_crop`: torchvision's `RandomResizedCrop(size, scale, ratio, interpolation, antialias)`: a
//! box of random area (a fraction in `scale` of the image) and aspect ratio (log-uniform in `ratio`), with
//! torchvision's 10 attempts and its central-crop fallback, then resized to `size`.

use ecstrain_kernels::rng::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::super::sample::{Sample, ShapeInfo};
use super::image::{image_input, sample_chw, with_hw};
use super::options::{ordered_pair, parse, Size};
use super::resample::{resize_crop, CropBox, Interpolation};
use super::Processor;

fn default_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn default_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}
fn yes() -> bool {
    true
}

/// `random_resized_crop` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    size: Size,
    #[serde(default = "default_scale")]
    scale: [f64; 2],
    #[serde(default = "default_ratio")]
    ratio: [f64; 2],
    #[serde(default)]
    interpolation: Interpolation,
    #[serde(default = "yes")]
    antialias: bool,
}

/// Random crops resized to a fixed size.
#[derive(Debug)]
pub struct RandomResizedCrop {
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    interpolation: Interpolation,
    antialias: bool,
}

/// Builds `random_resized_crop` from `{size, scale = [0.08, 1], ratio = [3/4, 4/3], interpolation =
/// bilinear, antialias = true}`.
pub fn build(options: &Value) -> Result<Box<dyn Processor>, String> {
    let o: Options = parse(options)?;
    let scale = ordered_pair("scale", o.scale)?;
    let ratio = ordered_pair("ratio", o.ratio)?;
    if scale.0 <= 0.0 {
        return Err(format!("`scale` must be [min, max] with 0 < min <= max, got {:?}", o.scale));
    }
    if ratio.0 <= 0.0 {
        return Err(format!("`ratio` must be [min, max] with 0 < min <= max, got {:?}", o.ratio));
    }
    let (height, width) = o.size.square_or_hw();
    Ok(Box::new(RandomResizedCrop {
        height,
        width,
        scale,
        ratio,
        interpolation: o.interpolation,
        antialias: o.antialias,
    }))
}

/// Uniform in [lo, hi).
fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.next_f64()
}

/// torchvision's `RandomResizedCrop.get_params` for an `h x w` image, drawing from `rng`.
pub fn crop_params(h: usize, w: usize, scale: (f64, f64), ratio: (f64, f64), rng: &mut Rng) -> CropBox {
    let area = (h * w) as f64;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let cw = (target_area * aspect).sqrt().round_ties_even() as usize;
        let ch = (target_area / aspect).sqrt().round_ties_even() as usize;
        if 0 < cw && cw <= w && 0 < ch && ch <= h {
            let top = rng.below((h - ch + 1) as u64) as usize;
            let left = rng.below((w - cw + 1) as u64) as usize;
            return CropBox { top, left, height: ch, width: cw };
        }
    }
    fallback_box(h, w, ratio)
}

/// The central crop torchvision falls back to after 10 failed attempts: the whole image, narrowed to the
/// nearest allowed aspect ratio.
pub fn fallback_box(h: usize, w: usize, ratio: (f64, f64)) -> CropBox {
    let in_ratio = w as f64 / h as f64;
    let (ch, cw) = if in_ratio < ratio.0 {
        (((w as f64 / ratio.0).round_ties_even() as usize).clamp(1, h), w)
    } else if in_ratio > ratio.1 {
        (h, ((h as f64 * ratio.1).round_ties_even() as usize).clamp(1, w))
    } else {
        (h, w)
    };
    CropBox { top: (h - ch) / 2, left: (w - cw) / 2, height: ch, width: cw }
}

impl Processor for RandomResizedCrop {
    fn name(&self) -> &str {
        "random_resized_crop"
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        image_input("random_resized_crop", input)?;
        Ok(ShapeInfo::fixed(&with_hw(&input.dims, self.height, self.width)))
    }
    fn is_random(&self) -> bool {
        true
    }
    fn apply(&self, sample: &mut Sample, scratch: &mut Vec<f32>, rng: &mut Rng) -> Result<(), String> {
        let (_, h, w) = sample_chw("random_resized_crop", sample)?;
        let b = crop_params(h, w, self.scale, self.ratio, rng);
        resize_crop(sample, scratch, b, (self.height, self.width), self.interpolation, self.antialias);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn boxes_stay_inside_and_within_bounds() {
        let (scale, ratio) = ((0.08, 1.0), (0.75, 4.0 / 3.0));
        let mut fallbacks = 0;
        for (h, w) in [(13, 17), (64, 64), (9, 40), (40, 9), (3, 3)] {
            let fb = fallback_box(h, w, ratio);
            for i in 0..2000u64 {
                let mut rng = Rng::derive(1, &[h as u64, w as u64, i]);
                let b = crop_params(h, w, scale, ratio, &mut rng);
                assert!(b.height > 0 && b.width > 0 && b.top + b.height <= h && b.left + b.width <= w, "{b:?}");
                if b == fb {
                    fallbacks += 1;
                    continue;
                }
                // Rounding each side to whole pixels moves area and ratio by at most half a pixel per side.
                let area = (b.height * b.width) as f64 / (h * w) as f64;
                let (lo_h, hi_h) = (b.height as f64 - 0.5, b.height as f64 + 0.5);
                let (lo_w, hi_w) = (b.width as f64 - 0.5, b.width as f64 + 0.5);
                let px = (h * w) as f64;
                assert!(lo_h * lo_w / px <= scale.1 + 1e-9 && hi_h * hi_w / px >= scale.0 - 1e-9, "area {area}");
                assert!(lo_w / hi_h <= ratio.1 + 1e-9 && hi_w / lo_h >= ratio.0 - 1e-9, "{b:?}");
            }
        }
        // Falling back is rare except on the tiny and the very elongated images.
        assert!(fallbacks < 5 * 2000, "{fallbacks}");
        assert_eq!(fallback_box(9, 40, ratio), CropBox { top: 0, left: 14, height: 9, width: 12 });
        assert_eq!(fallback_box(40, 9, ratio), CropBox { top: 14, left: 0, height: 12, width: 9 });
    }

    #[test]
    fn same_key_same_crop_and_bad_options() {
        let p = build(&json!({"size": [4, 5]})).unwrap();
        let run_at = |epoch: u64, i: u64| {
            let mut s = Sample::default();
            for (k, v) in s.reset(&[3, 20, 24]).iter_mut().enumerate() {
                *v = (k % 13) as f32 / 13.0;
            }
            p.apply(&mut s, &mut Vec::new(), &mut Rng::derive(3, &[0xA06, 0, epoch, i])).unwrap();
            assert_eq!(s.shape, vec![3, 4, 5]);
            s.data
        };
        let run = |i: u64| run_at(2, i);
        assert_ne!(run_at(2, 7), run_at(3, 7));
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let e = build(&json!({"size": 4, "scale": [0.5, 0.1]})).err().unwrap();
        assert!(e.contains("`scale`"), "{e}");
        let e = build(&json!({"size": 4, "ratio": [0.0, 1.0]})).err().unwrap();
        assert!(e.contains("`ratio`"), "{e}");
        assert!(build(&json!({"size": 0})).err().unwrap().contains("option `size`"));
    }
}
