//! Shape helpers of the image processors: `[C, H, W]` or `[H, W]` samples, resized or cropped in place.

use super::super::sample::{image_dims, Sample, ShapeInfo};

/// `(channels, height, width)` of the input shape, or the message an image processor gives for other shapes.
pub fn image_input(name: &str, input: &ShapeInfo) -> Result<(usize, usize, usize), String> {
    image_dims(&input.dims).ok_or_else(|| image_shape_error(name, &input.dims))
}

/// `(channels, height, width)` of a sample, or the message for a sample that is not an image.
pub fn sample_chw(name: &str, sample: &Sample) -> Result<(usize, usize, usize), String> {
    sample.chw().ok_or_else(|| image_shape_error(name, &sample.shape))
}

fn image_shape_error(name: &str, dims: &[usize]) -> String {
    format!("{name} needs image samples [C, H, W] or [H, W], got {dims:?}")
}

/// `dims` (an image shape) with its last two sizes replaced: the rank (`[H, W]` or `[C, H, W]`) is kept.
pub fn with_hw(dims: &[usize], h: usize, w: usize) -> Vec<usize> {
    let mut d = dims.to_vec();
    let n = d.len();
    d[n - 2] = h;
    d[n - 1] = w;
    d
}

/// Sets a sample's spatial size after its data was replaced by a `[C, h, w]` image.
pub fn set_hw(sample: &mut Sample, h: usize, w: usize) {
    let n = sample.shape.len();
    sample.shape[n - 2] = h;
    sample.shape[n - 1] = w;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(with_hw(&[3, 4, 5], 7, 8), vec![3, 7, 8]);
        assert_eq!(with_hw(&[4, 5], 7, 8), vec![7, 8]);
        let e = image_input("resize", &ShapeInfo::fixed(&[784])).err().unwrap();
        assert!(e.contains("resize") && e.contains("[784]"), "{e}");
        assert_eq!(image_input("x", &ShapeInfo::fixed(&[5, 6])).unwrap(), (1, 5, 6));
    }
}
