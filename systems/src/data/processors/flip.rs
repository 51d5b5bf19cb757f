//! `random_horizontal_flip` and `random_vertical_flip`: mirror an image sample with probability `p`
//! (torchvision's `RandomHorizontalFlip(p)` / `RandomVerticalFlip(p)`: flipped when a uniform draw is < p).

use ecstrain_kernels::rng::Rng;
use serde::Deserialize;
use serde_json::Value;

use super::super::sample::{Sample, ShapeInfo};
use super::image::{image_input, sample_chw};
use super::options::parse;
use super::Processor;

fn half() -> f64 {
    0.5
}

/// Flip options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "half")]
    p: f64,
}

/// Which axis is mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axis {
    /// Left-right (columns reversed).
    Horizontal,
    /// Top-bottom (rows reversed).
    Vertical,
}

/// A random flip.
#[derive(Debug)]
pub struct RandomFlip {
    axis: Axis,
    p: f64,
}

fn build_axis(options: &Value, axis: Axis) -> Result<Box<dyn Processor>, String> {
    let o: Options = parse(options)?;
    if !(0.0..=1.0).contains(&o.p) {
        return Err(format!("`p` is a probability in [0, 1], got {}", o.p));
    }
    Ok(Box::new(RandomFlip { axis, p: o.p }))
}

/// Builds `random_horizontal_flip` from `{p = 0.5}`.
pub fn build_horizontal(options: &Value) -> Result<Box<dyn Processor>, String> {
    build_axis(options, Axis::Horizontal)
}

/// Builds `random_vertical_flip` from `{p = 0.5}`.
pub fn build_vertical(options: &Value) -> Result<Box<dyn Processor>, String> {
    build_axis(options, Axis::Vertical)
}

/// Mirrors an image (`[C, H, W]` values, rows of `w`) along `axis`, in place.
pub fn flip(data: &mut [f32], h: usize, w: usize, axis: Axis) {
    match axis {
        Axis::Horizontal => data.chunks_exact_mut(w).for_each(|row| row.reverse()),
        Axis::Vertical => {
            for plane in data.chunks_exact_mut(h * w) {
                for y in 0..h / 2 {
                    let (upper, lower) = plane.split_at_mut((h - 1 - y) * w);
                    upper[y * w..(y + 1) * w].swap_with_slice(&mut lower[..w]);
                }
            }
        }
    }
}

impl Processor for RandomFlip {
    fn name(&self) -> &str {
        match self.axis {
            Axis::Horizontal => "random_horizontal_flip",
            Axis::Vertical => "random_vertical_flip",
        }
    }
    fn output_shape(&self, input: &ShapeInfo) -> Result<ShapeInfo, String> {
        image_input(self.name(), input)?;
        Ok(input.clone())
    }
    fn is_random(&self) -> bool {
        true
    }
    fn apply(&self, sample: &mut Sample, _scratch: &mut Vec<f32>, rng: &mut Rng) -> Result<(), String> {
        let (_, h, w) = sample_chw(self.name(), sample)?;
        if rng.next_f64() < self.p {
            flip(&mut sample.data, h, w, self.axis);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flips_and_frequency() {
        let mut d: Vec<f32> = (0..12).map(|v| v as f32).collect();
        flip(&mut d, 3, 2, Axis::Vertical);
        assert_eq!(d[..6], [4.0, 5.0, 2.0, 3.0, 0.0, 1.0]);
        flip(&mut d, 3, 2, Axis::Horizontal);
        assert_eq!(d[..6], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]);
        for (p, axis) in [(0.5, "random_horizontal_flip"), (0.2, "random_vertical_flip")] {
            let horizontal = axis.contains("horizontal");
            let f = if horizontal { build_horizontal } else { build_vertical };
            let shape = if horizontal { vec![1, 2] } else { vec![2, 1] };
            let proc = f(&json!({"p": p})).unwrap();
            let n = 20000;
            let mut flipped = 0;
            for i in 0..n {
                let mut s = Sample { data: vec![0.0, 1.0], shape: shape.clone() };
                proc.apply(&mut s, &mut Vec::new(), &mut Rng::derive(9, &[0xA06, 0, 0, i])).unwrap();
                flipped += (s.data[0] == 1.0) as usize;
            }
            // 4.5 standard deviations of a binomial(20000, p).
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((flipped as f64 - n as f64 * p).abs() < 4.5 * sd, "{axis}: {flipped} of {n} at p {p}");
        }
        assert!(build_horizontal(&json!({"p": 1.5})).err().unwrap().contains("`p`"));
        assert!(build_vertical(&json!({"q": 0.5})).err().unwrap().contains("unknown field `q`"));
    }
}
