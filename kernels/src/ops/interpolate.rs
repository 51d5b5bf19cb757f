//! Bicubic resizing of `[C, H, W]` planes, as PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`
//! (Keys' cubic convolution with a = -0.75, border pixels repeated, no antialiasing). Used to resize a ViT's
//! position-embedding grid when a checkpoint was trained at another resolution.

use crate::Float;

/// Keys' cubic convolution coefficient PyTorch uses.
const A: f64 = -0.75;

/// The four tap weights of a sample at fractional offset `t` in `[0, 1)` past the second tap.
fn cubic_weights(t: f64) -> [f64; 4] {
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0; // |x| <= 1
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A; // 1 < |x| < 2
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// First tap index and weights of output position `dst` when `inp` samples are resized to `out`.
fn taps(dst: usize, inp: usize, out: usize) -> (isize, [f64; 4]) {
    // align_corners=False: pixel centres line up, src = (dst + 0.5) * in / out - 0.5 (not clamped for cubic).
    let src = (dst as f64 + 0.5) * (inp as f64 / out as f64) - 0.5;
    let base = src.floor();
    (base as isize - 1, cubic_weights(src - base))
}

/// Resizes every `[H, W]` plane of `inp` (`[C, H, W]`) to `[OH, OW]` (overwrites `out`, `[C, OH, OW]`).
/// Sums run in f64.
pub fn bicubic_resize<T: Float>(out: &mut [T], inp: &[T], c: usize, h: usize, w: usize, oh: usize, ow: usize) {
    assert_eq!(inp.len(), c * h * w, "bicubic_resize: inp must be [C, H, W]");
    assert_eq!(out.len(), c * oh * ow, "bicubic_resize: out must be [C, OH, OW]");
    assert!(h > 0 && w > 0, "bicubic_resize: empty input plane");
    let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    for (plane_in, plane_out) in inp.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        for oy in 0..oh {
            let (y0, wy) = taps(oy, h, oh);
            for ox in 0..ow {
                let (x0, wx) = taps(ox, w, ow);
                let mut acc = 0.0;
                for (dy, wyv) in wy.iter().enumerate() {
                    let row = clamp(y0 + dy as isize, h) * w;
                    for (dx, wxv) in wx.iter().enumerate() {
                        acc += wyv * wxv * plane_in[row + clamp(x0 + dx as isize, w)].to_f64();
                    }
                }
                plane_out[oy * ow + ox] = T::from_f64(acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity_and_constants_stay_constant() {
        let x: Vec<f64> = (0..2 * 3 * 4).map(|i| (i as f64 * 0.37).sin()).collect();
        let mut y = vec![0.0; x.len()];
        bicubic_resize(&mut y, &x, 2, 3, 4, 3, 4);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-15);
        }
        // The weights sum to 1 and borders repeat, so a constant plane stays constant at any size.
        let mut z = vec![0.0; 7 * 5];
        bicubic_resize(&mut z, &[2.5f64; 4], 1, 2, 2, 7, 5);
        assert!(z.iter().all(|v| (v - 2.5).abs() < 1e-12), "{z:?}");
    }

    #[test]
    fn matches_pytorch_on_a_small_grid() {
        // torch.nn.functional.interpolate(torch.arange(4.).reshape(1, 1, 2, 2), size=(3, 3), mode="bicubic",
        // align_corners=False) in float64:
        let want = [
            -0.26041666666666613,
            0.3263888888888894,
            0.9131944444444454,
            0.9131944444444449,
            1.5,
            2.0868055555555562,
            2.086805555555557,
            2.673611111111112,
            3.2604166666666683,
        ];
        let mut y = vec![0.0f64; 9];
        bicubic_resize(&mut y, &[0.0, 1.0, 2.0, 3.0], 1, 2, 2, 3, 3);
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{y:?}");
        }
    }
}
