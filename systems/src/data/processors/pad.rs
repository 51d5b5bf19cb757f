//! Padding then cropping in one pass, shared by `random_crop` and `center_crop`: torchvision's `pad(img,
//! padding, fill, padding_mode)` followed by `crop(top, left, height, width)` of the padded image, without
//! materialising the padded image.

use serde::Deserialize;
use serde_json::Value;

use super::super::sample::Sample;
use super::image::set_hw;
use super::resample::CropBox;

/// How the border is filled, as torchvision's `padding_mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaddingMode {
    /// The `fill` value.
    #[default]
    Constant,
    /// The nearest border pixel repeated.
    Edge,
    /// Mirrored without repeating the border pixel (`dcb|abcd|cba`); padding must be smaller than the image.
    Reflect,
    /// Mirrored with the border pixel repeated (`cba|abcd|dcb`); padding at most the image size.
    Symmetric,
}

impl PaddingMode {
    /// The input index for position `v` (relative to the image's first pixel) along an axis of `n` pixels;
    /// `None` for the fill value. Padding has been checked against the image size, so one reflection suffices.
    fn source(self, v: i64, n: usize) -> Option<usize> {
        let n = n as i64;
        if (0..n).contains(&v) {
            return Some(v as usize);
        }
        let i = match self {
            PaddingMode::Constant => return None,
            PaddingMode::Edge => v.clamp(0, n - 1),
            PaddingMode::Reflect => {
                if v < 0 {
                    -v
                } else {
                    2 * (n - 1) - v
                }
            }
            PaddingMode::Symmetric => {
                if v < 0 {
                    -v - 1
                } else {
                    2 * n - 1 - v
                }
            }
        };
        Some(i.clamp(0, n - 1) as usize)
    }
}

/// Padding widths in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Value")]
pub struct Padding {
    /// Columns added on the left.
    pub left: usize,
    /// Rows added on top.
    pub top: usize,
    /// Columns added on the right.
    pub right: usize,
    /// Rows added at the bottom.
    pub bottom: usize,
}

/// The most pixels one side may be padded by: far past any image, and small enough that padded sizes never
/// overflow (a padding of 2^63 wrapped round to a tiny image in the messages).
pub const MAX_PADDING: usize = 1 << 20;

impl TryFrom<Value> for Padding {
    type Error = String;
    /// torchvision's spellings: one number for all sides, `[left/right, top/bottom]`, or
    /// `[left, top, right, bottom]`.
    fn try_from(v: Value) -> Result<Padding, String> {
        let bad = || {
            format!(
                "must be a non-negative integer (at most {MAX_PADDING} pixels), [left/right, top/bottom] or [left, \
                 top, right, bottom], got {v}"
            )
        };
        let n = |x: &Value| x.as_u64().filter(|&n| n <= MAX_PADDING as u64).map(|n| n as usize).ok_or_else(bad);
        let p = |l, t, r, b| Padding { left: l, top: t, right: r, bottom: b };
        match &v {
            Value::Array(a) => match a.len() {
                1 => {
                    let x = n(&a[0])?;
                    Ok(p(x, x, x, x))
                }
                2 => {
                    let (lr, tb) = (n(&a[0])?, n(&a[1])?);
                    Ok(p(lr, tb, lr, tb))
                }
                4 => Ok(p(n(&a[0])?, n(&a[1])?, n(&a[2])?, n(&a[3])?)),
                _ => Err(bad()),
            },
            other => {
                let x = n(other)?;
                Ok(p(x, x, x, x))
            }
        }
    }
}

impl Padding {
    /// Whether any side is padded.
    pub fn any(&self) -> bool {
        self.left + self.top + self.right + self.bottom > 0
    }

    /// Checks the padding against an `h x w` image for `mode` (torchvision fails the same cases).
    pub fn check(&self, mode: PaddingMode, h: usize, w: usize) -> Result<(), String> {
        let (limit, what, name) = match mode {
            PaddingMode::Reflect => (0, "smaller than", "reflect"),
            PaddingMode::Symmetric => (1, "at most", "symmetric"),
            _ => return Ok(()),
        };
        if self.left.max(self.right) >= w + limit || self.top.max(self.bottom) >= h + limit {
            return Err(format!(
                "padding_mode {name} needs padding {what} the image size; padding (left {}, top {}, right {}, \
                 bottom {}) on an image of {h}x{w}",
                self.left, self.top, self.right, self.bottom
            ));
        }
        Ok(())
    }
}

/// Pads the image sample by `pad` in `mode` (`fill` for `Constant`) and keeps the box `b` of the padded
/// image, which must lie inside it. The result replaces the sample's data (written into `scratch`, then
/// swapped).
pub fn pad_crop(sample: &mut Sample, scratch: &mut Vec<f32>, pad: Padding, mode: PaddingMode, fill: f32, b: CropBox) {
    let (c, h, w) = sample.chw().expect("pad_crop on an image sample");
    debug_assert!(b.top + b.height <= h + pad.top + pad.bottom && b.left + b.width <= w + pad.left + pad.right);
    if !pad.any() && b == (CropBox { top: 0, left: 0, height: h, width: w }) {
        return;
    }
    let (bh, bw) = (b.height, b.width);
    // Output columns [x0, x1) come from inside the image, copied as one run; the rest are border pixels.
    let shift = b.left as i64 - pad.left as i64;
    let x0 = (-shift).clamp(0, bw as i64) as usize;
    let x1 = (w as i64 - shift).clamp(x0 as i64, bw as i64) as usize;
    scratch.clear();
    scratch.resize(c * bh * bw, 0.0);
    for ch in 0..c {
        for y in 0..bh {
            let dst = &mut scratch[(ch * bh + y) * bw..][..bw];
            let Some(sy) = mode.source(b.top as i64 + y as i64 - pad.top as i64, h) else {
                dst.fill(fill);
                continue;
            };
            let src = &sample.data[(ch * h + sy) * w..][..w];
            if x1 > x0 {
                let s0 = (x0 as i64 + shift) as usize;
                dst[x0..x1].copy_from_slice(&src[s0..s0 + (x1 - x0)]);
            }
            for x in (0..x0).chain(x1..bw) {
                dst[x] = mode.source(x as i64 + shift, w).map_or(fill, |sx| src[sx]);
            }
        }
    }
    std::mem::swap(&mut sample.data, scratch);
    set_hw(sample, bh, bw);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mirrored_indices_follow_torchvision() {
        // A row a b c d (0..4) padded by 3 on the left and right.
        let row = |m: PaddingMode| (-3..7).map(|v| m.source(v, 4).map_or(-1, |i| i as i64)).collect::<Vec<_>>();
        assert_eq!(row(PaddingMode::Reflect), vec![3, 2, 1, 0, 1, 2, 3, 2, 1, 0]);
        assert_eq!(row(PaddingMode::Symmetric), vec![2, 1, 0, 0, 1, 2, 3, 3, 2, 1]);
        assert_eq!(row(PaddingMode::Edge), vec![0, 0, 0, 0, 1, 2, 3, 3, 3, 3]);
        assert_eq!(row(PaddingMode::Constant), vec![-1, -1, -1, 0, 1, 2, 3, -1, -1, -1]);
    }

    #[test]
    fn padding_spellings_and_limits() {
        let p = |v| Padding::try_from(v);
        assert_eq!(p(json!(2)).unwrap(), Padding { left: 2, top: 2, right: 2, bottom: 2 });
        assert_eq!(p(json!([1, 2])).unwrap(), Padding { left: 1, top: 2, right: 1, bottom: 2 });
        assert_eq!(p(json!([1, 2, 3, 4])).unwrap(), Padding { left: 1, top: 2, right: 3, bottom: 4 });
        assert!(p(json!([1, 2, 3])).is_err() && p(json!(-1)).is_err());
        assert!(p(json!(MAX_PADDING)).is_ok());
        let e = p(json!([1, i64::MAX])).unwrap_err();
        assert!(e.contains("at most 1048576 pixels"), "{e}");
        let four = Padding { left: 4, top: 0, right: 0, bottom: 0 };
        assert!(four.check(PaddingMode::Reflect, 5, 4).is_err());
        assert!(four.check(PaddingMode::Symmetric, 5, 4).is_ok());
        assert!(four.check(PaddingMode::Edge, 1, 1).is_ok());
    }
}
