//! Image files -> planar 8-bit pixels: JPEG / PNG / BMP through the `image` crate, converted to 1 or 3
//! channels as PIL's `Image.convert("L" | "RGB")` does (the conversion torchvision's loaders apply), and a
//! plain bilinear resize for `engine data pack`.

use std::path::Path;

use image::{DynamicImage, ImageReader};

/// File extensions taken as images (compared case-insensitively), as torchvision's `IMG_EXTENSIONS` for the
/// formats decoded here.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp"];

/// Whether `path` has an image extension.
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// An 8-bit image, planar `[channels, height, width]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedImage {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Pixels, planar `[C, H, W]`.
    pub data: Vec<u8>,
}

impl DecodedImage {
    /// The image shape `[C, H, W]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Writes the pixels into `out` (`C * H * W` values) as f32 0..255.
    pub fn write_f32(&self, out: &mut [f32]) {
        for (d, &s) in out.iter_mut().zip(&self.data) {
            *d = f32::from(s);
        }
    }
}

/// `(height, width)` of an image file, read from its header only (nothing is decoded).
pub fn image_size(path: &Path) -> Result<(usize, usize), String> {
    let reader = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("{}: cannot read image: {e}", path.display()))?;
    let (w, h) =
        reader.into_dimensions().map_err(|e| format!("{}: corrupt or unsupported image: {e}", path.display()))?;
    Ok((h as usize, w as usize))
}

/// Decodes an image file into `channels` (1 or 3) planar channels. The format comes from the file's
/// contents, not its name. The error names the file.
pub fn decode_image(path: &Path, channels: usize) -> Result<DecodedImage, String> {
    let img = ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("{}: cannot read image: {e}", path.display()))?
        .decode()
        .map_err(|e| format!("{}: corrupt or unsupported image: {e}", path.display()))?;
    Ok(to_planar(img, channels))
}

/// PIL's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded): `convert("L")`.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Converts a decoded image to planar 8-bit with `channels` channels. As PIL converts: alpha is dropped (not
/// composited), grey is replicated to RGB, RGB becomes grey by [`luma`]. Images with more than 8 bits per
/// channel are reduced to 8 first.
fn to_planar(img: DynamicImage, channels: usize) -> DecodedImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let plane = width * height;
    let mut data = vec![0u8; channels * plane];
    let grey: Option<Vec<u8>> = match &img {
        DynamicImage::ImageLuma8(g) => Some(g.as_raw().clone()),
        DynamicImage::ImageLumaA8(g) => Some(g.as_raw().chunks_exact(2).map(|p| p[0]).collect()),
        DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => Some(img.to_luma8().into_raw()),
        _ => None,
    };
    match (grey, channels) {
        (Some(g), 1) => data.copy_from_slice(&g),
        (Some(g), _) => {
            for c in 0..channels {
                data[c * plane..(c + 1) * plane].copy_from_slice(&g);
            }
        }
        (None, _) => {
            let rgb = img.into_rgb8();
            for (i, p) in rgb.as_raw().chunks_exact(3).enumerate() {
                if channels == 1 {
                    data[i] = luma(p[0], p[1], p[2]);
                } else {
                    for c in 0..3 {
                        data[c * plane + i] = p[c];
                    }
                }
            }
        }
    }
    DecodedImage { channels, height, width, data }
}

/// Resizes to `height x width` by bilinear interpolation with half-pixel centres (PyTorch's
/// `interpolate(mode="bilinear", align_corners=False)` without antialiasing), rounding to the nearest byte.
pub fn resize_bilinear(img: &DecodedImage, height: usize, width: usize) -> DecodedImage {
    if (img.height, img.width) == (height, width) {
        return img.clone();
    }
    // Source coordinate and weight of each output row / column, computed once per axis.
    let axis = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
        let scale = n_in as f32 / n_out as f32;
        (0..n_out)
            .map(|o| {
                let s = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(img.height, height), axis(img.width, width));
    let mut data = vec![0u8; img.channels * height * width];
    for c in 0..img.channels {
        let src = &img.data[c * img.height * img.width..(c + 1) * img.height * img.width];
        let dst = &mut data[c * height * width..(c + 1) * height * width];
        for (oy, &(y0, y1, wy)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, wx)) in xs.iter().enumerate() {
                let p = |y: usize, x: usize| f32::from(src[y * img.width + x]);
                let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * wx;
                let bottom = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * wx;
                dst[oy * width + ox] = (top + (bottom - top) * wy).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    DecodedImage { channels: img.channels, height, width, data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Rgb, RgbImage, Rgba, RgbaImage};

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ecstrain-imgdec-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn converts_as_pil_does() {
        let d = dir("convert");
        // Values checked against PIL: Image.fromarray(rgb).convert("L") gives 124, 76, 2, 128.
        let px = [[10u8, 200, 30], [255, 0, 0], [1, 2, 3], [128, 129, 127]];
        let mut rgb = RgbImage::new(4, 1);
        for (i, p) in px.iter().enumerate() {
            rgb.put_pixel(i as u32, 0, Rgb(*p));
        }
        rgb.save(d.join("a.png")).unwrap();
        let grey = decode_image(&d.join("a.png"), 1).unwrap();
        assert_eq!((grey.shape(), grey.data.clone()), ([1, 1, 4], vec![124, 76, 2, 128]));
        let planar = decode_image(&d.join("a.png"), 3).unwrap();
        assert_eq!(planar.data, vec![10, 255, 1, 128, 200, 0, 2, 129, 30, 0, 3, 127]);
        // RGBA drops alpha; BMP decodes the same pixels.
        let mut rgba = RgbaImage::new(2, 1);
        rgba.put_pixel(0, 0, Rgba([10, 200, 30, 0]));
        rgba.put_pixel(1, 0, Rgba([255, 0, 0, 128]));
        rgba.save(d.join("b.png")).unwrap();
        assert_eq!(decode_image(&d.join("b.png"), 3).unwrap().data, vec![10, 255, 200, 0, 30, 0]);
        assert_eq!(decode_image(&d.join("b.png"), 1).unwrap().data, vec![124, 76]);
        rgb.save(d.join("a.bmp")).unwrap();
        assert_eq!(decode_image(&d.join("a.bmp"), 3).unwrap(), planar);
        // Grey replicates to three channels; the size comes from the header.
        let g = GrayImage::from_raw(2, 3, vec![1, 2, 3, 4, 5, 6]).unwrap();
        g.save(d.join("g.png")).unwrap();
        assert_eq!(image_size(&d.join("g.png")).unwrap(), (3, 2));
        let three = decode_image(&d.join("g.png"), 3).unwrap();
        assert_eq!((three.shape(), &three.data[6..12]), ([3, 3, 2], &[1, 2, 3, 4, 5, 6][..]));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_files_name_the_file() {
        let d = dir("corrupt");
        let mut rgb = RgbImage::new(8, 8);
        rgb.put_pixel(3, 3, Rgb([1, 2, 3]));
        rgb.save(d.join("ok.png")).unwrap();
        let bytes = std::fs::read(d.join("ok.png")).unwrap();
        std::fs::write(d.join("cut.png"), &bytes[..bytes.len() / 2]).unwrap();
        std::fs::write(d.join("text.jpg"), b"not an image").unwrap();
        for name in ["cut.png", "text.jpg", "missing.png"] {
            let e = decode_image(&d.join(name), 3).unwrap_err();
            assert!(e.contains(name), "{e}");
        }
        assert!(is_image_file(Path::new("a/B.JPEG")) && !is_image_file(Path::new("a/notes.txt")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bilinear_resize() {
        let img = DecodedImage { channels: 1, height: 2, width: 2, data: vec![0, 100, 200, 40] };
        assert_eq!(resize_bilinear(&img, 2, 2), img);
        // 2 -> 4: output centres at source -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
        let up = resize_bilinear(&img, 1, 4);
        // One output row samples source row 0.5: the mean of the two rows, (100, 70) across.
        assert_eq!(up.data, vec![100, 93, 78, 70]);
        let flat = DecodedImage { channels: 3, height: 5, width: 3, data: vec![7; 45] };
        assert!(resize_bilinear(&flat, 4, 9).data.iter().all(|&v| v == 7));
    }
}
