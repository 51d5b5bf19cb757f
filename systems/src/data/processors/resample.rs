//! The resampling kernel of `resize` and `random_resized_crop`: separable (width pass, then height pass), as
//! `torch.nn.functional.interpolate` computes it on float images, which is what torchvision's `resize` calls.
//!
//! - `antialias: true` with bilinear / bicubic: torch's `_upsample_*2d_aa`, PIL-style resampling. Each output
//!   pixel centre `scale * (o + 0.5)` gathers the input pixels within the filter's support (1 for the triangle,
//!   2 for the cubic with a = -0.5), the support and the filter argument stretched by the downscale factor when
//!   shrinking; weights normalised to sum 1. torch uses this kernel in both directions, so an upscale with
//!   antialias is *not* plain interpolation for bicubic (bilinear upscaling coincides: checked against
//!   torchvision in the reference tests).
//! - `antialias: false`: plain interpolation with `align_corners=False`, source `scale * (o + 0.5) - 0.5`;
//!   bilinear clamps the source at 0 and the second tap at the border, bicubic (a = -0.75) clamps every tap.
//! - nearest: torch's `nearest` mode, source `floor(o * scale)`.
//!
//! The arithmetic follows torch's precision (f32 scale and weights) so that the tap choices at exact
//! boundaries agree. Weight tables live in thread-local buffers that only grow.

use std::cell::RefCell;

use serde::Deserialize;

use super::super::sample::Sample;
use super::image::set_hw;

/// How pixel values between samples are reconstructed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// The nearest input pixel (torch's `nearest`).
    Nearest,
    /// Linear in each axis (the default, as torchvision's).
    #[default]
    Bilinear,
    /// Cubic convolution in each axis.
    Bicubic,
}

/// A crop box in pixels of the input image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// Resampling taps of one axis: for each output index, `width` (input index, weight) pairs. Windows shorter
/// than `width` are padded with zero weights on a valid index (adding `0 * x` changes no sum).
#[derive(Default)]
struct Taps {
    width: usize,
    index: Vec<usize>,
    weight: Vec<f32>,
}

thread_local! {
    static TAPS: RefCell<(Taps, Taps)> = RefCell::new(Default::default());
}

/// torch's antialiasing triangle filter.
fn triangle(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Keys' cubic convolution kernel for |x| < 1.
fn cubic1(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

/// Keys' cubic convolution kernel for 1 <= |x| < 2.
fn cubic2(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// torch's antialiasing cubic filter (a = -0.5, as PIL).
fn cubic_aa(x: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        cubic1(x, -0.5)
    } else if x < 2.0 {
        cubic2(x, -0.5)
    } else {
        0.0
    }
}

impl Taps {
    /// Taps from `in_len` samples to `out_len`; input indices are shifted by `offset` (the crop's origin).
    fn build(&mut self, in_len: usize, out_len: usize, interp: Interpolation, antialias: bool, offset: usize) {
        self.index.clear();
        self.weight.clear();
        // torch: area_pixel_compute_scale in f32.
        let scale = in_len as f32 / out_len as f32;
        let last = in_len - 1;
        match (interp, antialias) {
            (Interpolation::Nearest, _) => {
                self.width = 1;
                for o in 0..out_len {
                    let i = if out_len == in_len {
                        o
                    } else if out_len == 2 * in_len {
                        o >> 1
                    } else {
                        ((o as f32 * scale).floor() as usize).min(last)
                    };
                    self.index.push(i + offset);
                    self.weight.push(1.0);
                }
            }
            (Interpolation::Bilinear, false) => {
                self.width = 2;
                for o in 0..out_len {
                    let real = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                    let i0 = (real as usize).min(last);
                    let l1 = (real - i0 as f32).clamp(0.0, 1.0);
                    let i1 = if i0 < last { i0 + 1 } else { i0 };
                    self.index.extend([i0 + offset, i1 + offset]);
                    self.weight.extend([1.0 - l1, l1]);
                }
            }
            (Interpolation::Bicubic, false) => {
                self.width = 4;
                let a = -0.75;
                for o in 0..out_len {
                    let real = scale * (o as f32 + 0.5) - 0.5;
                    let fl = real.floor();
                    let t = real - fl;
                    let base = fl as i64;
                    for k in 0..4 {
                        self.index.push((base - 1 + k).clamp(0, last as i64) as usize + offset);
                    }
                    let t2 = 1.0 - t;
                    self.weight.extend([cubic2(t + 1.0, a), cubic1(t, a), cubic1(t2, a), cubic2(t2 + 1.0, a)]);
                }
            }
            (interp, true) => {
                let (half, filter): (f32, fn(f32) -> f32) = match interp {
                    Interpolation::Bicubic => (2.0, cubic_aa),
                    _ => (1.0, triangle),
                };
                let support = if scale >= 1.0 { half * scale } else { half };
                let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
                self.width = support.ceil() as usize * 2 + 1;
                for o in 0..out_len {
                    // Mixed precision as torch: the centre is computed in f64 and stored as f32.
                    let center = (scale as f64 * (o as f64 + 0.5)) as f32;
                    let xmin = (((center - support) as f64 + 0.5) as i64).max(0) as usize;
                    let xmax = (((center + support) as f64 + 0.5) as i64).min(in_len as i64) as usize;
                    let start = self.weight.len();
                    let mut total = 0.0f32;
                    for j in xmin..xmax {
                        let wt = filter((((j as f32 - center) as f64 + 0.5) * invscale as f64) as f32);
                        self.index.push(j + offset);
                        self.weight.push(wt);
                        total += wt;
                    }
                    if total != 0.0 {
                        for wt in &mut self.weight[start..] {
                            *wt /= total;
                        }
                    }
                    let pad = xmin.min(last) + offset;
                    for _ in (xmax - xmin)..self.width {
                        self.index.push(pad);
                        self.weight.push(0.0);
                    }
                }
            }
        }
    }

    /// One output row of the width pass: `dst[o] = sum_k w[o, k] * src[idx[o, k]]`.
    fn apply_row(&self, src: &[f32], dst: &mut [f32]) {
        let w = self.width;
        for ((d, idx), wt) in dst.iter_mut().zip(self.index.chunks_exact(w)).zip(self.weight.chunks_exact(w)) {
            let mut acc = src[idx[0]] * wt[0];
            for k in 1..w {
                acc += src[idx[k]] * wt[k];
            }
            *d = acc;
        }
    }
}

/// The height pass: rows of `src` (`channels` planes of `rows` rows of `row_len`; the taps' indices count
/// rows within a plane) combined into `dst` (`channels` planes of `out_rows` rows).
fn height_pass(taps: &Taps, src: &[f32], rows: usize, row_len: usize, channels: usize, dst: &mut [f32]) {
    let w = taps.width;
    let out_rows = taps.index.len() / w;
    for c in 0..channels {
        let plane = &src[c * rows * row_len..(c + 1) * rows * row_len];
        let out_plane = &mut dst[c * out_rows * row_len..(c + 1) * out_rows * row_len];
        for ((d, idx), wt) in
            out_plane.chunks_exact_mut(row_len).zip(taps.index.chunks_exact(w)).zip(taps.weight.chunks_exact(w))
        {
            let first = &plane[idx[0] * row_len..(idx[0] + 1) * row_len];
            for (d, &s) in d.iter_mut().zip(first) {
                *d = s * wt[0];
            }
            for k in 1..w {
                let row = &plane[idx[k] * row_len..(idx[k] + 1) * row_len];
                let wk = wt[k];
                for (d, &s) in d.iter_mut().zip(row) {
                    *d += s * wk;
                }
            }
        }
    }
}

/// Crops `b` out of the image sample and resizes it to `out_h x out_w`: torchvision's
/// `resized_crop(img, top, left, height, width, size, interpolation, antialias)` (and `resize` with the whole
/// image as the box). The result replaces `sample`'s data (`scratch` holds the intermediate, and the two are
/// swapped rather than copied where possible). `b` must lie inside the image.
pub fn resize_crop(
    sample: &mut Sample,
    scratch: &mut Vec<f32>,
    b: CropBox,
    (out_h, out_w): (usize, usize),
    interp: Interpolation,
    antialias: bool,
) {
    let (c, h, w) = sample.chw().expect("resize_crop on an image sample");
    assert!(b.top + b.height <= h && b.left + b.width <= w && b.height > 0 && b.width > 0, "crop box inside");
    let whole = b == CropBox { top: 0, left: 0, height: h, width: w };
    if whole && (out_h, out_w) == (h, w) {
        return;
    }
    TAPS.with_borrow_mut(|(tx, ty)| {
        let rows_identity = b.height == out_h;
        let cols_identity = b.width == out_w;
        if cols_identity && b.left == 0 && b.width == w && !rows_identity {
            // Only the height changes and every column is kept: one pass straight from the sample.
            ty.build(b.height, out_h, interp, antialias, b.top);
            scratch.clear();
            scratch.resize(c * out_h * out_w, 0.0);
            height_pass(ty, &sample.data, h, w, c, scratch);
        } else {
            // Width pass over the box's rows into scratch: [c, b.height, out_w].
            if !cols_identity {
                tx.build(b.width, out_w, interp, antialias, b.left);
            }
            scratch.clear();
            scratch.resize(c * b.height * out_w, 0.0);
            for ch in 0..c {
                for r in 0..b.height {
                    let src = &sample.data[(ch * h + b.top + r) * w..][..w];
                    let dst = &mut scratch[(ch * b.height + r) * out_w..][..out_w];
                    if cols_identity {
                        dst.copy_from_slice(&src[b.left..b.left + out_w]);
                    } else {
                        tx.apply_row(src, dst);
                    }
                }
            }
            if !rows_identity {
                // Height pass back into the sample's buffer (its input is no longer needed).
                ty.build(b.height, out_h, interp, antialias, 0);
                sample.data.clear();
                sample.data.resize(c * out_h * out_w, 0.0);
                height_pass(ty, scratch, b.height, out_w, c, &mut sample.data);
                set_hw(sample, out_h, out_w);
                return;
            }
        }
        std::mem::swap(&mut sample.data, scratch);
    });
    set_hw(sample, out_h, out_w);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(c: usize, h: usize, w: usize) -> Sample {
        let mut s = Sample::default();
        for (i, v) in s.reset(&[c, h, w]).iter_mut().enumerate() {
            *v = ((i * 37) % 11) as f32 / 10.0;
        }
        s
    }

    #[test]
    fn constant_images_stay_constant_and_weights_sum_to_one() {
        for interp in [Interpolation::Nearest, Interpolation::Bilinear, Interpolation::Bicubic] {
            for aa in [false, true] {
                for (oh, ow) in [(3, 4), (17, 9), (8, 8), (30, 31)] {
                    let mut s = Sample::default();
                    s.reset(&[2, 8, 8]).fill(0.75);
                    let mut scratch = Vec::new();
                    let b = CropBox { top: 1, left: 2, height: 6, width: 5 };
                    resize_crop(&mut s, &mut scratch, b, (oh, ow), interp, aa);
                    assert_eq!(s.shape, vec![2, oh, ow]);
                    assert!(s.data.iter().all(|v| (v - 0.75).abs() < 1e-6), "{interp:?} {aa} {oh}x{ow}");
                }
            }
        }
    }

    #[test]
    fn identity_and_crop_only() {
        let mut s = image(3, 5, 6);
        let orig = s.clone();
        let mut scratch = Vec::new();
        let whole = CropBox { top: 0, left: 0, height: 5, width: 6 };
        resize_crop(&mut s, &mut scratch, whole, (5, 6), Interpolation::Bicubic, true);
        assert_eq!(s, orig);
        let b = CropBox { top: 1, left: 2, height: 3, width: 4 };
        resize_crop(&mut s, &mut scratch, b, (3, 4), Interpolation::Bilinear, true);
        assert_eq!(s.shape, vec![3, 3, 4]);
        for c in 0..3 {
            for y in 0..3 {
                for x in 0..4 {
                    assert_eq!(s.data[(c * 3 + y) * 4 + x], orig.data[(c * 5 + y + 1) * 6 + x + 2]);
                }
            }
        }
    }

    #[test]
    fn two_by_two_upscale_of_nearest_repeats_pixels() {
        let mut s = image(1, 2, 3);
        let orig = s.clone();
        let mut scratch = Vec::new();
        let whole = CropBox { top: 0, left: 0, height: 2, width: 3 };
        resize_crop(&mut s, &mut scratch, whole, (4, 6), Interpolation::Nearest, false);
        for y in 0..4 {
            for x in 0..6 {
                assert_eq!(s.data[y * 6 + x], orig.data[(y / 2) * 3 + x / 2]);
            }
        }
    }
}
