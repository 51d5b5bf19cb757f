//! `random_crop`: torchvision's `RandomCrop(size, padding, pad_if_needed, fill, padding_mode)`: optional
//! padding, then (with `pad_if_needed`) the shortfall of a too small image added on *both* sides as
//! torchvision does, then a uniformly placed `h x w` window.

use ecstrain_kernels::rng::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::super::sample::{Sample, ShapeInfo};
use super::image::{image_input, sample_chw, with_hw};
use super::options::{parse, Size};
use super::pad::{pad_crop, Padding, PaddingMode};
use super::resample::CropBox;
use super::Processor;

/// `random_crop` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    size: Size,
    #[serde(default)]
    padding: Padding,
    #[serde(default)]
    pad_if_needed: bool,
    #[serde(default)]
    fill: f64,
    #[serde(default)]
    padding_mode: PaddingMode,
}

/// Random fixed-size crops of (padded) image samples.
#[derive(Debug)]
pub struct RandomCrop {
    height: usize,
    width: usize,
    padding: Padding,
    pad_if_needed: bool,
    fill: f32,
    mode: PaddingMode,
}

/// Builds `random_crop` from `{size, padding = 0, pad_if_needed = false, fill = 0, padding_mode = constant}`.
pub fn build(options: &Value) -> Result<Box<dyn Processor>, String> {
    let o: Options = parse(options)?;
    if !o.fill.is_finite() {
        return Err(format!("`fill` must be a finite number, got {}", o.fill));
    }
    let (height, width) = o.size.square_or_hw();
    Ok(Box::new(RandomCrop {
        height,
        width,
        padding: o.padding,
        pad_if_needed: o.pad_if_needed,
        fill: o.fill as f32,
        mode: o.padding_mode,
    }))
}

impl RandomCrop {
    /// The padding an `h x w` image gets (the configured one plus `pad_if_needed`'s), checked: the padded
    /// image must hold the crop and the mirror modes need padding within the image size.
    pub fn padding_for(&self, h: usize, w: usize) -> Result<Padding, String> {
        let mut p = self.padding;
        let (mut ph, mut pw) = (h + p.top + p.bottom, w + p.left + p.right);
        if self.pad_if_needed {
            if ph < self.height {
                let d = self.height - ph;
                (p.top, p.bottom, ph) = (p.top + d, p.bottom + d, ph + 2 * d);
            }
            if pw < self.width {
                let d = self.width - pw;
                (p.left, p.right, pw) = (p.left + d, p.right + d, pw + 2 * d);
            }
        }
        if ph < self.height || pw < self.width {
            return Err(format!(
                "crop size {}x{} is larger than the {}image size {ph}x{pw} (set `pad_if_needed: true` or a \
                 smaller `size`)",
                self.height,
                self.width,
                if self.padding.any() { "padded " } else { "" }
            ));
        }
        p.check(self.mode, h, w)?;
        Ok(p)
    }

    /// The crop window in padded coordinates: top first, then left, each uniform over the valid positions.
    pub fn window(&self, h: usize, w: usize, p: Padding, rng: &mut Rng) -> CropBox {
        let (ph, pw) = (h + p.top + p.bottom, w + p.left + p.right);
        let top = if ph > self.height { rng.below((ph - self.height + 1) as u64) as usize } else { 0 };
        let left = if pw > self.width { rng.below((pw - self.width + 1) as u64) as usize } else { 0 };
        CropBox { top, left, height: self.height, width: self.width }
    }
}

impl Processor for RandomCrop {
    fn name(&self) -> &str {
        "random_crop"
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        let (_, h, w) = image_input("random_crop", input)?;
        if input.fixed {
            self.padding_for(h, w)?;
        }
        Ok(ShapeInfo::fixed(&with_hw(&input.dims, self.height, self.width)))
    }
    fn is_random(&self) -> bool {
        true
    }
    fn apply(&self, sample: &mut Sample, scratch: &mut Vec<f32>, rng: &mut Rng) -> Result<(), String> {
        let (_, h, w) = sample_chw("random_crop", sample)?;
        let p = self.padding_for(h, w)?;
        let b = self.window(h, w, p, rng);
        pad_crop(sample, scratch, p, self.mode, self.fill, b);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(h: usize, w: usize) -> Sample {
        let mut s = Sample::default();
        for (i, v) in s.reset(&[2, h, w]).iter_mut().enumerate() {
            *v = 1.0 + i as f32;
        }
        s
    }

    #[test]
    fn windows_are_seeded_and_cover_every_position() {
        let p = build(&json!({"size": [4, 4], "padding": 2, "fill": -1})).unwrap();
        let crop = |i: u64| {
            let mut s = image(6, 6);
            p.apply(&mut s, &mut Vec::new(), &mut Rng::derive(5, &[0xA06, 0, 1, i])).unwrap();
            assert_eq!(s.shape, vec![2, 4, 4]);
            s.data
        };
        assert_eq!(crop(3), crop(3));
        assert_ne!(crop(3), crop(4));
        // Padded 10x10 -> 7 positions per axis; every corner value (fill or a pixel) shows up.
        let mut corners = std::collections::BTreeSet::new();
        for i in 0..2000 {
            corners.insert(crop(i)[0] as i64);
        }
        assert!(corners.contains(&-1) && corners.contains(&1) && corners.contains(&15), "{corners:?}");
    }

    #[test]
    fn pad_if_needed_and_shape_errors() {
        let p = build(&json!({"size": 8, "pad_if_needed": true, "padding_mode": "edge"})).unwrap();
        assert_eq!(p.output_shape(&ShapeInfo::fixed(&[2, 5, 9])).unwrap(), ShapeInfo::fixed(&[2, 8, 8]));
        let mut s = image(5, 9);
        p.apply(&mut s, &mut Vec::new(), &mut Rng::new(1)).unwrap();
        assert_eq!(s.shape, vec![2, 8, 8]);
        let p = build(&json!({"size": 8})).unwrap();
        let e = p.output_shape(&ShapeInfo::fixed(&[2, 5, 9])).err().unwrap();
        assert!(e.contains("pad_if_needed") && e.contains("5x9"), "{e}");
        let mixed = ShapeInfo { dims: vec![2, 5, 9], fixed: false };
        assert_eq!(p.output_shape(&mixed).unwrap(), ShapeInfo::fixed(&[2, 8, 8]));
        assert!(p.apply(&mut image(5, 9), &mut Vec::new(), &mut Rng::new(1)).is_err());
        let p = build(&json!({"size": 4, "padding": 6, "padding_mode": "reflect"})).unwrap();
        assert!(p.output_shape(&ShapeInfo::fixed(&[1, 5, 5])).err().unwrap().contains("padding_mode reflect"));
        let e = build(&json!({"size": 4, "padding_mode": "wrap"})).err().unwrap();
        assert!(e.contains("option `padding_mode`") && e.contains("symmetric"), "{e}");
        let e = build(&json!({"size": 4, "padding": [1, 2, 3]})).err().unwrap();
        assert!(e.contains("option `padding`"), "{e}");
    }
}
