//! torchvision's colour adjustments on float images in [0, 1] (planar `[C, H, W]`, C = 1 or 3), the ops of
//! `color_jitter`: `adjust_brightness`, `adjust_contrast`, `adjust_saturation`, `adjust_hue` of
//! `torchvision.transforms.v2.functional`, with their clamping to [0, 1] and their 1-channel behaviour
//! (saturation and hue leave gray images alone). The f32 operation order follows torchvision's.

/// torchvision's luma weights (`_rgb_to_grayscale_image`: 0.2989, not 0.299).
const LUMA: [f32; 3] = [0.2989, 0.587, 0.114];

fn gray(r: f32, g: f32, b: f32) -> f32 {
    r * LUMA[0] + g * LUMA[1] + b * LUMA[2]
}

/// `_blend(x, y, ratio)`: `x * ratio + y * (1 - ratio)` clamped to [0, 1].
fn blend(x: f32, y: f32, ratio: f32, other: f32) -> f32 {
    (x * ratio + y * other).clamp(0.0, 1.0)
}

/// Multiplies every value by `factor` and clamps to [0, 1].
pub fn adjust_brightness(data: &mut [f32], factor: f64) {
    let f = factor as f32;
    for v in data {
        *v = (*v * f).clamp(0.0, 1.0);
    }
}

/// Blends the image with the mean of its grayscale version (of itself for one channel).
pub fn adjust_contrast(data: &mut [f32], channels: usize, factor: f64) {
    let n = data.len() / channels;
    let mean = if channels == 3 {
        let (r, rest) = data.split_at(n);
        let (g, b) = rest.split_at(n);
        r.iter().zip(g).zip(b).map(|((&r, &g), &b)| gray(r, g, b) as f64).sum::<f64>() / n as f64
    } else {
        data.iter().map(|&v| v as f64).sum::<f64>() / data.len() as f64
    } as f32;
    let (ratio, other) = (factor as f32, (1.0 - factor) as f32);
    for v in data {
        *v = blend(*v, mean, ratio, other);
    }
}

/// Blends each pixel with its gray value; no-op on one channel.
pub fn adjust_saturation(data: &mut [f32], channels: usize, factor: f64) {
    if channels != 3 {
        return;
    }
    let n = data.len() / 3;
    let (ratio, other) = (factor as f32, (1.0 - factor) as f32);
    let (r, rest) = data.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let l = gray(*r, *g, *b);
        *r = blend(*r, l, ratio, other);
        *g = blend(*g, l, ratio, other);
        *b = blend(*b, l, ratio, other);
    }
}

/// torch's `remainder` for floats (the sign of the divisor).
fn remainder(a: f32, b: f32) -> f32 {
    let m = a % b;
    if m != 0.0 && ((b < 0.0) != (m < 0.0)) {
        m + b
    } else {
        m
    }
}

/// torchvision's `_rgb2hsv` of one pixel.
fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    let eqc = maxc == minc;
    let range = maxc - minc;
    let s = range / if eqc { 1.0 } else { maxc };
    let div = if eqc { 1.0 } else { range };
    let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
    let h = if maxc == r {
        bc - gc
    } else if maxc == g {
        rc + 2.0 - bc
    } else {
        gc + 4.0 - rc
    };
    // torch multiplies by the f64 1/6 cast to f32.
    let h = (h * (1.0f64 / 6.0) as f32 + 1.0) % 1.0;
    (h, s, maxc)
}

/// torchvision's `_hsv2rgb` of one pixel.
fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let i = (i as i32).rem_euclid(6);
    let sxf = s * f;
    let one_minus_s = 1.0 - s;
    let q = ((1.0 - sxf) * v).clamp(0.0, 1.0);
    let t = ((sxf + one_minus_s) * v).clamp(0.0, 1.0);
    let p = (one_minus_s * v).clamp(0.0, 1.0);
    match i {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Rotates the hue by `factor` turns (in [-0.5, 0.5]) through HSV; no-op on one channel.
pub fn adjust_hue(data: &mut [f32], channels: usize, factor: f64) {
    if channels != 3 {
        return;
    }
    let n = data.len() / 3;
    let f = factor as f32;
    let (r, rest) = data.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (h, s, v) = rgb_to_hsv(*r, *g, *b);
        (*r, *g, *b) = hsv_to_rgb(remainder(h + f, 1.0), s, v);
    }
}

/// The four jitter ops by torchvision's index (0 brightness, 1 contrast, 2 saturation, 3 hue).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JitterFactors {
    /// Brightness factor, if jittered.
    pub brightness: Option<f64>,
    /// Contrast factor, if jittered.
    pub contrast: Option<f64>,
    /// Saturation factor, if jittered.
    pub saturation: Option<f64>,
    /// Hue shift, if jittered.
    pub hue: Option<f64>,
}

/// ColorJitter's transform with drawn parameters: the ops in `order` (a permutation of 0..4), each skipped
/// when its factor is `None`.
pub fn jitter(data: &mut [f32], channels: usize, order: [u8; 4], f: &JitterFactors) {
    for op in order {
        match op {
            0 => f.brightness.inspect(|&x| adjust_brightness(data, x)),
            1 => f.contrast.inspect(|&x| adjust_contrast(data, channels, x)),
            2 => f.saturation.inspect(|&x| adjust_saturation(data, channels, x)),
            _ => f.hue.inspect(|&x| adjust_hue(data, channels, x)),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trip_and_gray_is_unchanged() {
        for (r, g, b) in [(0.2, 0.5, 0.9), (0.9, 0.1, 0.4), (0.3, 0.3, 0.3), (1.0, 0.0, 0.0), (0.5, 0.5, 0.1)] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() < 1e-6 && (g - g2).abs() < 1e-6 && (b - b2).abs() < 1e-6, "{r} {g} {b}");
        }
        let mut px = [0.4f32, 0.4, 0.4];
        adjust_hue(&mut px, 3, 0.3);
        adjust_saturation(&mut px, 3, 1.7);
        // torchvision's luma weights sum to 0.9999, so a gray pixel moves by that much under saturation.
        assert!(px.iter().all(|&v| (v - 0.4).abs() < 5e-5), "{px:?}");
        let mut one = [0.2f32, 0.9];
        adjust_hue(&mut one, 1, 0.3);
        adjust_saturation(&mut one, 1, 0.0);
        assert_eq!(one, [0.2, 0.9]);
        assert_eq!(remainder(-0.25, 1.0), 0.75);
    }
}
