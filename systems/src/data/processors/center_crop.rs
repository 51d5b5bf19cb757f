//! `center_crop`: torchvision's `CenterCrop(size)`: the central `h x w` window (the anchor rounded as Python's
//! `round`), the image first padded with zeros where it is smaller than the crop.

use ecstrain_kernels::rng::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::super::sample::{Sample, ShapeInfo};
use super::image::{image_input, sample_chw, with_hw};
use super::options::{parse, Size};
use super::pad::{pad_crop, Padding, PaddingMode};
use super::resample::CropBox;
use super::Processor;

/// `center_crop` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    size: Size,
}

/// Crops the centre of image samples to a fixed size.
#[derive(Debug)]
pub struct CenterCrop {
    height: usize,
    width: usize,
}

/// Builds `center_crop` from `{size}` (an int is a square).
pub fn build(options: &Value) -> Result<Box<dyn Processor>, String> {
    let o: Options = parse(options)?;
    let (height, width) = o.size.square_or_hw();
    Ok(Box::new(CenterCrop { height, width }))
}

/// The zero padding and the crop box (in padded coordinates) of a centre crop of `ch x cw` from `h x w`.
pub fn center_crop_box(h: usize, w: usize, ch: usize, cw: usize) -> (Padding, CropBox) {
    let before = |c: usize, n: usize| c.saturating_sub(n) / 2;
    let after = |c: usize, n: usize| c.saturating_sub(n).div_ceil(2);
    let pad = Padding { left: before(cw, w), top: before(ch, h), right: after(cw, w), bottom: after(ch, h) };
    let (ph, pw) = (h + pad.top + pad.bottom, w + pad.left + pad.right);
    let anchor = |n: usize, c: usize| ((n - c) as f64 / 2.0).round_ties_even() as usize;
    (pad, CropBox { top: anchor(ph, ch), left: anchor(pw, cw), height: ch, width: cw })
}

impl Processor for CenterCrop {
    fn name(&self) -> &str {
        "center_crop"
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        image_input("center_crop", input)?;
        Ok(ShapeInfo::fixed(&with_hw(&input.dims, self.height, self.width)))
    }
    fn apply(&self, sample: &mut Sample, scratch: &mut Vec<f32>, _rng: &mut Rng) -> Result<(), String> {
        let (_, h, w) = sample_chw("center_crop", sample)?;
        let (pad, b) = center_crop_box(h, w, self.height, self.width);
        pad_crop(sample, scratch, pad, PaddingMode::Constant, 0.0, b);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn boxes_and_options() {
        // Odd margins: Python's round(1.5) = 2, round(2.5) = 2.
        let (pad, b) = center_crop_box(13, 17, 10, 12);
        assert_eq!((pad, b), (Padding::default(), CropBox { top: 2, left: 2, height: 10, width: 12 }));
        let (pad, b) = center_crop_box(13, 17, 16, 12);
        assert_eq!(pad, Padding { left: 0, top: 1, right: 0, bottom: 2 });
        assert_eq!(b, CropBox { top: 0, left: 2, height: 16, width: 12 });
        let p = build(&json!({"size": 5})).unwrap();
        let mixed = ShapeInfo { dims: vec![3, 10, 20], fixed: false };
        assert_eq!(p.output_shape(&mixed).unwrap(), ShapeInfo::fixed(&[3, 5, 5]));
        assert!(build(&json!({"size": [3, 0]})).err().unwrap().contains("option `size`"));
    }
}
