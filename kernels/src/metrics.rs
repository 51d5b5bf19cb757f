//! Image-quality metrics for validating reconstruction tasks: PSNR and SSIM.
//!
//! Both take the f32 prediction and target buffers of a batch of images and accumulate in f64, because the
//! result is a small difference of large sums (SSIM's variances are `E[x^2] - E[x]^2`) and an epoch
//! averages many batches. Each function returns the SUM of the per-image values over the batch, so the
//! caller can add the sums of every batch and divide by the number of images once at the end of the epoch
//! (a plain mean of batch means would weight a short last batch wrongly).
//!
//! Nothing allocates: SSIM needs a scratch buffer of [`ssim_scratch_len`] f64 values, passed by the caller.

/// Sum over the `n` images of the per-image PSNR, `10 log10(data_range^2 / mse_i)` in dB.
///
/// pred, target: [n, per_image] (any image shape, flattened).
///
/// `mse_i` is the mean squared error over the `per_image` elements of image `i`. This is the mean of the
/// per-image PSNRs (once the caller divides by the image count), NOT the PSNR of the MSE pooled over all
/// images; the two differ because log is concave. `mse_i` is clamped below at `1e-10 * data_range^2`, so a
/// perfect reconstruction scores 100 dB rather than infinity, which would poison the epoch average.
pub fn psnr_sum(pred: &[f32], target: &[f32], n: usize, per_image: usize, data_range: f64) -> f64 {
    assert_eq!(pred.len(), n * per_image, "psnr_sum: pred length");
    assert_eq!(target.len(), n * per_image, "psnr_sum: target length");
    assert!(per_image > 0, "psnr_sum: empty images");
    assert!(data_range > 0.0, "psnr_sum: data_range must be positive");
    let range2 = data_range * data_range;
    let floor = 1e-10 * range2;
    pred.chunks_exact(per_image)
        .zip(target.chunks_exact(per_image))
        .map(|(p, t)| {
            let sse: f64 = p
                .iter()
                .zip(t)
                .map(|(&a, &b)| {
                    let d = a as f64 - b as f64;
                    d * d
                })
                .sum();
            let mse = (sse / per_image as f64).max(floor);
            10.0 * (range2 / mse).log10()
        })
        .sum()
}

/// Standard deviation of SSIM's Gaussian window (Wang et al. 2004).
const SSIM_SIGMA: f64 = 1.5;

/// Radius of the Gaussian filter: scipy's `int(truncate * sigma + 0.5)` with skimage's `truncate = 3.5`,
/// i.e. 5, an 11-tap filter. It does not shrink for small images: only the crop does (see [`ssim_sum`]).
const SSIM_RADIUS: usize = 5;

/// Number of filter taps, `2 * SSIM_RADIUS + 1`.
const SSIM_TAPS: usize = 2 * SSIM_RADIUS + 1;

/// skimage's `win_size` for an `h x w` image: `min(11, h, w)` rounded down to odd. 11 is what skimage
/// derives from sigma 1.5 when `gaussian_weights=True`; it refuses images smaller than `win_size`, so
/// smaller images are scored with the largest odd window that fits (7 for 8x8 images).
fn ssim_win(h: usize, w: usize) -> usize {
    let v = SSIM_TAPS.min(h).min(w);
    if v % 2 == 1 {
        v
    } else {
        v - 1
    }
}

/// Pixels cropped from each border of the SSIM map before averaging: `(win_size - 1) / 2`.
fn ssim_pad(h: usize, w: usize) -> usize {
    (ssim_win(h, w) - 1) / 2
}

/// The normalised 11-tap Gaussian, exactly scipy's `_gaussian_kernel1d(1.5, 0, 5)`:
/// `exp(-x^2 / (2 sigma^2))` for x in -5..=5, divided by its sum.
fn gaussian_taps() -> [f64; SSIM_TAPS] {
    let mut g = [0.0; SSIM_TAPS];
    let mut sum = 0.0;
    for (k, v) in g.iter_mut().enumerate() {
        let x = k as f64 - SSIM_RADIUS as f64;
        *v = (-0.5 / (SSIM_SIGMA * SSIM_SIGMA) * x * x).exp();
        sum += *v;
    }
    for v in &mut g {
        *v /= sum;
    }
    g
}

/// scipy.ndimage `mode='reflect'` (half-sample symmetric, `d c b a | a b c d | d c b a`) index of position
/// `i` (may be negative or past the end) on an axis of length `len`. The extension has period `2 len`,
/// which also covers axes shorter than the filter radius, where scipy reflects more than once.
#[inline]
fn reflect(i: isize, len: usize) -> usize {
    let period = 2 * len as isize;
    let m = i.rem_euclid(period) as usize;
    if m < len {
        m
    } else {
        2 * len - 1 - m
    }
}

/// Length of the f64 scratch buffer [`ssim_sum`] needs for images of shape [c, h, w]:
/// `5 * (h - 2 pad) * w` with `pad = (win_size - 1) / 2`, the vertically filtered x, y, x^2, y^2 and xy on
/// the rows kept by the crop. Channels are processed one after the other and reuse it, so it does not
/// grow with `c`.
pub fn ssim_scratch_len(c: usize, h: usize, w: usize) -> usize {
    let _ = c;
    assert!(h > 0 && w > 0, "ssim_scratch_len: empty image");
    5 * (h - 2 * ssim_pad(h, w)) * w
}

/// Sum over the `n` images of the per-image SSIM (Wang et al. 2004), each the mean over the `c` channels of
/// the mean of the channel's cropped SSIM map.
///
/// pred, target: [n, c, h, w]; scratch: at least [`ssim_scratch_len`]`(c, h, w)` f64 values (contents
/// ignored and overwritten).
///
/// Matches scikit-image's `structural_similarity(target_i, pred_i, win_size=win, gaussian_weights=True,
/// sigma=1.5, use_sample_covariance=False, data_range=data_range, channel_axis=0)` with
/// `win = min(11, h, w)` rounded down to odd (SSIM is symmetric in its two images), that is:
/// - `C1 = (0.01 L)^2`, `C2 = (0.03 L)^2` with `L = data_range`;
/// - local means, (population) variances and covariance from `scipy.ndimage.gaussian_filter(sigma=1.5,
///   truncate=3.5, mode='reflect')` over the whole channel: an 11-tap separable Gaussian normalised to sum
///   1, with half-sample symmetric padding. The filter keeps its 11 taps whatever the image size, as in
///   skimage, whose `win_size` only sets the crop when `gaussian_weights=True`;
/// - the SSIM map averaged over the interior left after cropping `(win - 1) / 2` pixels from every border
///   (5 for images of at least 11x11; 3 for 8x8 images, leaving a 2x2 interior).
///
/// Only the interior is filtered, since the cropped border never reaches the average.
#[allow(clippy::too_many_arguments)]
pub fn ssim_sum(
    pred: &[f32],
    target: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    data_range: f64,
    scratch: &mut [f64],
) -> f64 {
    let plane = h * w;
    assert_eq!(pred.len(), n * c * plane, "ssim_sum: pred length");
    assert_eq!(target.len(), n * c * plane, "ssim_sum: target length");
    assert!(c > 0 && h > 0 && w > 0, "ssim_sum: empty image");
    assert!(data_range > 0.0, "ssim_sum: data_range must be positive");
    let need = ssim_scratch_len(c, h, w);
    assert!(scratch.len() >= need, "ssim_sum: scratch has {} values, needs {need}", scratch.len());

    let pad = ssim_pad(h, w);
    // Interior (kept) rows and columns of the SSIM map.
    let (ih, iw) = (h - 2 * pad, w - 2 * pad);
    let g = gaussian_taps();
    let c1 = (0.01 * data_range) * (0.01 * data_range);
    let c2 = (0.03 * data_range) * (0.03 * data_range);
    // Five planes of [ih, w]: filtered x, y, x^2, y^2, xy.
    let (sx, rest) = scratch[..need].split_at_mut(ih * w);
    let (sy, rest) = rest.split_at_mut(ih * w);
    let (sxx, rest) = rest.split_at_mut(ih * w);
    let (syy, sxy) = rest.split_at_mut(ih * w);

    let mut total = 0.0;
    for img in 0..n {
        let mut img_sum = 0.0;
        for ch in 0..c {
            let off = (img * c + ch) * plane;
            // x is the target, y the prediction; the value is symmetric in the two.
            let x = &target[off..off + plane];
            let y = &pred[off..off + plane];

            // Vertical pass (scipy filters axis 0 first) on the kept rows, over every column: the
            // horizontal pass below reads reflected columns, which are real columns of this result.
            for r in 0..ih {
                let row = r + pad;
                for col in 0..w {
                    let (mut ax, mut ay, mut axx, mut ayy, mut axy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                    for (k, &gk) in g.iter().enumerate() {
                        let src = reflect(row as isize + k as isize - SSIM_RADIUS as isize, h);
                        let a = x[src * w + col] as f64;
                        let b = y[src * w + col] as f64;
                        ax += gk * a;
                        ay += gk * b;
                        axx += gk * a * a;
                        ayy += gk * b * b;
                        axy += gk * a * b;
                    }
                    let i = r * w + col;
                    sx[i] = ax;
                    sy[i] = ay;
                    sxx[i] = axx;
                    syy[i] = ayy;
                    sxy[i] = axy;
                }
            }

            // Horizontal pass on the kept columns, then the SSIM map, accumulated straight into its mean.
            let mut map_sum = 0.0;
            for r in 0..ih {
                let base = r * w;
                for cc in 0..iw {
                    let col = cc + pad;
                    let (mut ux, mut uy, mut uxx, mut uyy, mut uxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                    for (k, &gk) in g.iter().enumerate() {
                        let i = base + reflect(col as isize + k as isize - SSIM_RADIUS as isize, w);
                        ux += gk * sx[i];
                        uy += gk * sy[i];
                        uxx += gk * sxx[i];
                        uyy += gk * syy[i];
                        uxy += gk * sxy[i];
                    }
                    // Population (biased) moments: use_sample_covariance=False, as in Wang et al.
                    let vx = uxx - ux * ux;
                    let vy = uyy - uy * uy;
                    let vxy = uxy - ux * uy;
                    let num = (2.0 * ux * uy + c1) * (2.0 * vxy + c2);
                    let den = (ux * ux + uy * uy + c1) * (vx + vy + c2);
                    map_sum += num / den;
                }
            }
            img_sum += map_sum / (ih * iw) as f64;
        }
        total += img_sum / c as f64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// Deterministic test images, built identically by the Python script quoted in `matches_skimage`:
    /// `x` a smooth pattern in [0.1, 0.9], `y = x` plus a high-frequency "noise" of amplitude 0.08, both
    /// rounded to f32. Returns (x, y) as [c, h, w].
    fn pattern(c: usize, h: usize, w: usize, seed: f64) -> (Vec<f32>, Vec<f32>) {
        let mut x = Vec::with_capacity(c * h * w);
        let mut y = Vec::with_capacity(c * h * w);
        for k in 0..c {
            for i in 0..h {
                for j in 0..w {
                    let (i, j, k) = (i as f64, j as f64, k as f64);
                    let a = 0.5 + 0.4 * (0.37 * i + 0.23 * j + 1.1 * k + seed).sin();
                    let b = a + 0.08 * (12.9898 * i + 78.233 * j + 3.7 * k + 2.0 * seed).sin();
                    x.push(a as f32);
                    y.push(b as f32);
                }
            }
        }
        (x, y)
    }

    fn ssim_one(pred: &[f32], target: &[f32], c: usize, h: usize, w: usize, range: f64) -> f64 {
        let mut scratch = vec![f64::NAN; ssim_scratch_len(c, h, w)];
        ssim_sum(pred, target, 1, c, h, w, range, &mut scratch)
    }

    #[test]
    fn psnr_hand_values() {
        // Constant error 0.1 with range 1: mse 0.01 -> 10 log10(100) = 20 dB.
        let t = [0.2f32, 0.5, 0.7, 0.9];
        let p: Vec<f32> = t.iter().map(|&v| v + 0.1).collect();
        let got = psnr_sum(&p, &t, 1, 4, 1.0);
        // The f32 buffers hold 0.1 only approximately; 1e-5 dB covers that.
        assert!((got - 20.0).abs() < 1e-5, "{got}");
        // Perfect reconstruction: mse clamped at 1e-10 L^2 -> exactly 100 dB, for any range.
        assert_eq!(psnr_sum(&t, &t, 1, 4, 1.0), 100.0);
        assert!((psnr_sum(&t, &t, 1, 4, 255.0) - 100.0).abs() < 1e-12);
        // Range 2, error 0.5 on one of 4 elements: mse 0.0625 -> 10 log10(4 / 0.0625) = 10 log10(64).
        // (Values exact in f32, so the check can be tight.)
        let t2 = [0.25f32, 0.5, 0.75, 1.0];
        let p2 = [0.75f32, 0.5, 0.75, 1.0];
        let want = 10.0 * 64f64.log10();
        assert!((psnr_sum(&p2, &t2, 1, 4, 2.0) - want).abs() < 1e-12);
        // Per-image averaging: images of 20 dB and 100 dB sum to 120 (pooled MSE would give ~23 dB).
        let pp: Vec<f32> = p.iter().chain(&t).copied().collect();
        let tt: Vec<f32> = t.iter().chain(&t).copied().collect();
        let two = psnr_sum(&pp, &tt, 2, 4, 1.0);
        assert!((two - 120.0).abs() < 1e-5, "{two}");
    }

    #[test]
    fn ssim_identical_is_one() {
        for &(c, h, w) in &[(1, 8, 8), (3, 16, 16), (2, 3, 5), (1, 1, 1)] {
            let (x, _) = pattern(c, h, w, 0.5);
            let s = ssim_one(&x, &x, c, h, w, 1.0);
            assert!((s - 1.0).abs() < 1e-12, "{c}x{h}x{w}: {s}");
        }
    }

    #[test]
    fn matches_skimage() {
        // Produced with scikit-image 0.26.0 / scipy 1.17.1, float64 inputs (the f32 values widened):
        //
        //   import math, numpy as np
        //   from skimage.metrics import structural_similarity
        //   def pattern(c, h, w, seed):
        //       x = np.empty((c, h, w)); y = np.empty((c, h, w))
        //       for k in range(c):
        //           for i in range(h):
        //               for j in range(w):
        //                   a = 0.5 + 0.4 * math.sin(0.37 * i + 0.23 * j + 1.1 * k + seed)
        //                   b = a + 0.08 * math.sin(12.9898 * i + 78.233 * j + 3.7 * k + 2.0 * seed)
        //                   x[k, i, j] = a; y[k, i, j] = b
        //       return x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
        //   def win(h, w):
        //       v = min(11, h, w); return v if v % 2 == 1 else v - 1
        //   for (c, h, w, seed, L) in [(1, 8, 8, 0.0, 1.0), (3, 16, 16, 1.0, 1.0), (2, 11, 13, 2.0, 2.0),
        //                              (2, 3, 5, 3.0, 1.0), (1, 20, 9, 4.0, 1.0)]:
        //       x, y = pattern(c, h, w, seed)
        //       print(structural_similarity(x, y, win_size=win(h, w), gaussian_weights=True, sigma=1.5,
        //                                   use_sample_covariance=False, data_range=L, channel_axis=0))
        //
        // 8x8 uses win 7 (2x2 interior); 3x5 has fewer rows than the filter radius, so scipy reflects twice.
        let cases: [(usize, usize, usize, f64, f64, f64); 5] = [
            (1, 8, 8, 0.0, 1.0, 0.9300450362524315),
            (3, 16, 16, 1.0, 1.0, 0.9331085433074552),
            (2, 11, 13, 2.0, 2.0, 0.934990603046084),
            (2, 3, 5, 3.0, 1.0, 0.8659686339171189),
            (1, 20, 9, 4.0, 1.0, 0.9403591834503904),
        ];
        for &(c, h, w, seed, range, want) in &cases {
            let (x, y) = pattern(c, h, w, seed);
            let got = ssim_one(&y, &x, c, h, w, range);
            assert_close(&format!("ssim {c}x{h}x{w}"), &[got], &[want], 0.0, 1e-6);
            // Symmetric in its two images.
            let swapped = ssim_one(&x, &y, c, h, w, range);
            assert!((got - swapped).abs() < 1e-12);
        }
    }

    #[test]
    fn sums_over_images() {
        let (c, h, w) = (3, 16, 16);
        let (x0, y0) = pattern(c, h, w, 1.0);
        let (x1, y1) = pattern(c, h, w, 7.0);
        let s0 = ssim_one(&y0, &x0, c, h, w, 1.0);
        let s1 = ssim_one(&y1, &x1, c, h, w, 1.0);
        let p0 = psnr_sum(&y0, &x0, 1, c * h * w, 1.0);
        let p1 = psnr_sum(&y1, &x1, 1, c * h * w, 1.0);
        let x: Vec<f32> = x0.iter().chain(&x1).copied().collect();
        let y: Vec<f32> = y0.iter().chain(&y1).copied().collect();
        // A larger scratch than needed is fine.
        let mut scratch = vec![f64::NAN; ssim_scratch_len(c, h, w) + 7];
        let s = ssim_sum(&y, &x, 2, c, h, w, 1.0, &mut scratch);
        assert!((s - (s0 + s1)).abs() < 1e-12, "{s} vs {}", s0 + s1);
        let p = psnr_sum(&y, &x, 2, c * h * w, 1.0);
        assert!((p - (p0 + p1)).abs() < 1e-9, "{p} vs {}", p0 + p1);
    }
}
