//! `val_reconstructions.png`: the first validation samples of the last pass next to the model's reconstructions
//! (Ultralytics' `val_batch0_pred.jpg` for image-to-image models), targets on the top row, outputs below, one
//! column per sample.
//!
//! Each column is mapped to 0..255 by the joint minimum and maximum of its target and output, so a column's two
//! tiles are on one scale whatever normalisation the processors applied. Tiles are enlarged by a whole factor
//! (nearest neighbour) to at least [`MIN_TILE`] pixels, so 8x8 digits stay visible.

use bevy_ecs::prelude::*;

/// Samples kept per validation pass (columns of the image).
pub const MAX_SAMPLES: usize = 8;
/// Smallest tile edge in pixels after enlargement.
pub const MIN_TILE: usize = 64;
/// Pixels between tiles and around the grid.
const GAP: usize = 4;
/// Background grey.
const BACKGROUND: u8 = 40;

/// The first validation samples of the latest pass and their reconstructions, kept by the reconstruction task
/// (one allocation when the run is built: up to [`MAX_SAMPLES`] rows of each).
#[derive(Resource, Debug)]
pub struct ReconstructionSamples {
    /// `(channels, height, width)` of one sample; channels 1 (grey) or 3 (RGB).
    pub image: (usize, usize, usize),
    /// Targets, `[kept, C*H*W]`.
    pub targets: Vec<f32>,
    /// Model outputs, `[kept, C*H*W]`.
    pub outputs: Vec<f32>,
    /// Rows kept in this pass (0 until its first batch).
    pub kept: usize,
}

impl ReconstructionSamples {
    /// Room for [`MAX_SAMPLES`] samples of `image`.
    pub fn new(image: (usize, usize, usize)) -> Self {
        let len = MAX_SAMPLES * image.0 * image.1 * image.2;
        ReconstructionSamples { image, targets: vec![0.0; len], outputs: vec![0.0; len], kept: 0 }
    }

    /// Keeps the first rows of a batch (`targets` and `outputs` hold `n` samples each) when none are kept yet in
    /// this pass.
    pub fn keep_first(&mut self, targets: &[f32], outputs: &[f32], n: usize) {
        if self.kept > 0 || n == 0 {
            return;
        }
        let numel = self.image.0 * self.image.1 * self.image.2;
        let k = n.min(MAX_SAMPLES);
        self.targets[..k * numel].copy_from_slice(&targets[..k * numel]);
        self.outputs[..k * numel].copy_from_slice(&outputs[..k * numel]);
        self.kept = k;
    }
}

/// The whole enlargement factor that brings an edge of `h` x `w` to at least [`MIN_TILE`].
fn scale_for(h: usize, w: usize) -> usize {
    MIN_TILE.div_ceil(h.min(w).max(1)).max(1)
}

/// Draws the grid: RGB bytes and `(width, height)`. `None` when nothing was kept.
pub fn reconstruction_grid(s: &ReconstructionSamples) -> Option<(Vec<u8>, (u32, u32))> {
    let (c, h, w) = s.image;
    if s.kept == 0 || !(c == 1 || c == 3) {
        return None;
    }
    let f = scale_for(h, w);
    let (th, tw) = (h * f, w * f);
    let width = GAP + s.kept * (tw + GAP);
    let height = GAP + 2 * (th + GAP);
    let mut rgb = vec![BACKGROUND; width * height * 3];
    let numel = c * h * w;
    for col in 0..s.kept {
        let target = &s.targets[col * numel..(col + 1) * numel];
        let output = &s.outputs[col * numel..(col + 1) * numel];
        // One scale per column, over both tiles; non-finite outputs draw as black.
        let (lo, hi) = target
            .iter()
            .chain(output)
            .filter(|v| v.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let byte = |v: f32| if v.is_finite() { ((v - lo) / span * 255.0).round().clamp(0.0, 255.0) as u8 } else { 0 };
        for (row, tile) in [target, output].into_iter().enumerate() {
            let (x0, y0) = (GAP + col * (tw + GAP), GAP + row * (th + GAP));
            for y in 0..th {
                for x in 0..tw {
                    let (sy, sx) = (y / f, x / f);
                    let px = ((y0 + y) * width + x0 + x) * 3;
                    for ch in 0..3 {
                        // Grey images fill all three channels.
                        let plane = if c == 1 { 0 } else { ch };
                        rgb[px + ch] = byte(tile[(plane * h + sy) * w + sx]);
                    }
                }
            }
        }
    }
    Some((rgb, (width as u32, height as u32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_share_a_scale_and_tiles_are_enlarged() {
        let mut s = ReconstructionSamples::new((1, 2, 2));
        // Two samples; the second batch is ignored (the first batch of a pass is kept).
        s.keep_first(&[0.0, 1.0, 2.0, 4.0, -1.0, -1.0, -1.0, -1.0], &[4.0, 2.0, 1.0, 0.0, -1.0, -1.0, -1.0, 1.0], 2);
        s.keep_first(&[9.0; 4], &[9.0; 4], 1);
        assert_eq!(s.kept, 2);
        let (rgb, (w, h)) = reconstruction_grid(&s).unwrap();
        let f = 32; // 2-pixel edges enlarged to 64
        assert_eq!((w as usize, h as usize), (GAP + 2 * (2 * f + GAP), GAP + 2 * (2 * f + GAP)));
        let at = |x: usize, y: usize| rgb[(y * w as usize + x) * 3];
        // Column 0 spans 0..4: target pixel (0, 1) = 1.0 -> 64; output pixel (1, 1) = 0.0 -> 0.
        assert_eq!(at(GAP + f, GAP), 64);
        assert_eq!(at(GAP + f + 5, GAP + 2 * f + GAP + f + 7), 0);
        assert_eq!(at(GAP, GAP + 2 * f + GAP), 255);
        // Column 1 spans -1..1: its target is all black, its last output pixel white.
        let x1 = GAP + 2 * f + GAP;
        assert_eq!(at(x1, GAP), 0);
        assert_eq!(at(x1 + 2 * f - 1, GAP + 2 * f + GAP + 2 * f - 1), 255);
        assert_eq!(at(0, 0), BACKGROUND);
        // Grey fills every channel; an RGB sample keeps its planes.
        assert_eq!(rgb[(GAP * w as usize + GAP + f) * 3 + 2], 64);
        let mut s = ReconstructionSamples::new((3, 1, 1));
        s.keep_first(&[1.0, 0.0, 0.0], &[0.0, 0.0, 1.0], 1);
        let (rgb, (w, _)) = reconstruction_grid(&s).unwrap();
        let p = (GAP * w as usize + GAP) * 3;
        assert_eq!(&rgb[p..p + 3], &[255, 0, 0]);
    }

    #[test]
    fn nothing_kept_draws_nothing() {
        assert!(reconstruction_grid(&ReconstructionSamples::new((1, 4, 4))).is_none());
        let mut s = ReconstructionSamples::new((2, 1, 1));
        s.keep_first(&[0.0, 1.0], &[0.0, 1.0], 1);
        assert!(reconstruction_grid(&s).is_none(), "two channels are not an image");
    }
}
