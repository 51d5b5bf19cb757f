//! A list of image files verified at open: the storage the `image_folder` and `annotations` datasets share.
//! Every file is decoded once, in parallel, when the split is opened, so a corrupt image is reported (or
//! skipped) before training starts; with `cache` the decoded pixels stay in memory (Ultralytics'
//! `cache: ram`), otherwise each read decodes the file again.

use std::path::PathBuf;

use rayon::prelude::*;

use super::image_decode::decode_image;
use super::sample::Sample;
use super::DataError;

/// How images are read: options shared by the image datasets (`datasets.<name>.channels`, `cache`,
/// `skip_corrupt`).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageReadOptions {
    /// Channels of every sample: 1 (grey) or 3 (RGB); images are converted as PIL's `convert` does.
    pub channels: usize,
    /// Keep the decoded 8-bit images in memory instead of decoding each read.
    pub cache: bool,
    /// Skip images that fail to decode (each is reported) instead of failing.
    pub skip_corrupt: bool,
}

impl Default for ImageReadOptions {
    fn default() -> Self {
        ImageReadOptions { channels: 3, cache: false, skip_corrupt: false }
    }
}

impl ImageReadOptions {
    /// Checks `channels`.
    pub fn check(&self) -> Result<(), String> {
        match self.channels {
            1 | 3 => Ok(()),
            c => Err(format!("channels: {c} is not supported; valid choices: 1 (grey), 3 (RGB)")),
        }
    }
}

/// What verifying one image keeps: its `(height, width)`, and its pixels when caching.
type Verified = ((usize, usize), Option<Vec<u8>>);

/// The verified images of one split.
pub struct ImageSet {
    paths: Vec<PathBuf>,
    /// `(height, width)` of each image.
    sizes: Vec<(usize, usize)>,
    channels: usize,
    cache: Option<Vec<Vec<u8>>>,
    first_shape: Vec<usize>,
    fixed: bool,
}

/// The images of a set that failed to decode and were skipped (`skip_corrupt`).
pub struct Skipped {
    /// Position in the list given to [`ImageSet::open`] of each image kept, in order.
    pub kept: Vec<usize>,
    /// The message of each image skipped (naming its file).
    pub errors: Vec<String>,
}

impl Skipped {
    /// The notice for the run's output: how many were skipped and which.
    pub fn notice(&self, what: &str) -> Option<String> {
        (!self.errors.is_empty()).then(|| {
            format!(
                "{what}: skipped {} corrupt image{} (skip_corrupt: true): {}",
                self.errors.len(),
                if self.errors.len() == 1 { "" } else { "s" },
                self.errors.join("; ")
            )
        })
    }
}

impl ImageSet {
    /// Decodes every image once (in parallel) to verify it and learn its size. A corrupt image is an error
    /// naming the file, unless `options.skip_corrupt`, when it is left out and listed in the returned
    /// [`Skipped`]. An empty list, or one where every image was skipped, is fine here: the caller decides.
    pub fn open(paths: Vec<PathBuf>, options: &ImageReadOptions) -> Result<(ImageSet, Skipped), DataError> {
        options.check()?;
        let channels = options.channels;
        // Only the sizes are kept (and the pixels with `cache`), so verifying a folder larger than memory
        // holds one decoded image per worker at a time.
        let decoded: Vec<Result<Verified, String>> = paths
            .par_iter()
            .map(|p| decode_image(p, channels).map(|img| ((img.height, img.width), options.cache.then_some(img.data))))
            .collect();
        let bad: Vec<&String> = decoded.iter().filter_map(|r| r.as_ref().err()).collect();
        if !bad.is_empty() && !options.skip_corrupt {
            let more = match bad.len() {
                1 => String::new(),
                n => format!(" (and {} more corrupt images)", n - 1),
            };
            return Err(format!("{}{more}; fix or remove it, or set skip_corrupt: true to skip such images", bad[0]));
        }
        let mut skipped = Skipped { kept: Vec::with_capacity(paths.len()), errors: Vec::new() };
        let mut kept_paths = Vec::with_capacity(paths.len());
        let mut sizes = Vec::with_capacity(paths.len());
        let mut cache = options.cache.then(|| Vec::with_capacity(paths.len()));
        for (i, (path, r)) in paths.into_iter().zip(decoded).enumerate() {
            match r {
                Ok((size, pixels)) => {
                    skipped.kept.push(i);
                    kept_paths.push(path);
                    sizes.push(size);
                    if let (Some(c), Some(p)) = (&mut cache, pixels) {
                        c.push(p);
                    }
                }
                Err(m) => skipped.errors.push(m),
            }
        }
        let first = sizes.first().copied().unwrap_or((0, 0));
        let fixed = sizes.iter().all(|&s| s == first);
        let set = ImageSet {
            paths: kept_paths,
            sizes,
            channels,
            cache,
            first_shape: vec![channels, first.0, first.1],
            fixed,
        };
        Ok((set, skipped))
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The file of image `index`.
    pub fn path(&self, index: usize) -> &std::path::Path {
        &self.paths[index]
    }

    /// `[C, H, W]` of the first image.
    pub fn first_shape(&self) -> &[usize] {
        &self.first_shape
    }

    /// Whether all images have the same size.
    pub fn fixed(&self) -> bool {
        self.fixed
    }

    /// `[C, H, W]` of image `index`.
    pub fn shape(&self, index: usize) -> [usize; 3] {
        let (h, w) = self.sizes[index];
        [self.channels, h, w]
    }

    /// Reads image `index` as f32 0..255 into `out`, from the cache or by decoding its file again.
    pub fn read(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        let shape = self.shape(index);
        let dst = out.reset(&shape);
        self.read_into(index, dst)
    }

    /// Reads image `index` into `dst` (exactly its `C * H * W` values).
    fn read_into(&self, index: usize, dst: &mut [f32]) -> Result<(), DataError> {
        match &self.cache {
            Some(c) => {
                for (d, &s) in dst.iter_mut().zip(&c[index]) {
                    *d = f32::from(s);
                }
                Ok(())
            }
            None => {
                let img = decode_image(&self.paths[index], self.channels)?;
                if img.shape() != self.shape(index) {
                    return Err(format!(
                        "{}: the image is now {:?}, it was {:?} when the dataset was opened (the file changed)",
                        self.paths[index].display(),
                        img.shape(),
                        self.shape(index)
                    ));
                }
                img.write_f32(dst);
                Ok(())
            }
        }
    }

    /// Reads the images `indices` (all of one size) into consecutive rows of `out`, decoding in parallel.
    pub fn read_rows(&self, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        let len: usize = self.first_shape.iter().product();
        if out.len() != indices.len() * len {
            return Err(format!("image batch buffer holds {} values, expected {}", out.len(), indices.len() * len));
        }
        let one = |(row, &i): (&mut [f32], &usize)| {
            if self.shape(i) != self.shape(indices[0]) || row.len() != self.shape(i).iter().product::<usize>() {
                return Err(format!(
                    "{}: image of shape {:?} in a batch of {:?} images",
                    self.paths[i].display(),
                    self.shape(i),
                    self.first_shape
                ));
            }
            self.read_into(i, row)
        };
        // A cached read is a cheap copy; decoding is worth spreading over the pool even for a few rows.
        if self.cache.is_some() && out.len() < (1 << 16) {
            out.chunks_mut(len.max(1)).zip(indices).try_for_each(one)
        } else {
            out.par_chunks_mut(len.max(1)).zip(indices.par_iter()).try_for_each(one)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    #[test]
    fn verifies_caches_and_skips() {
        let d = std::env::temp_dir().join(format!("ecstrain-imgset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut a = RgbImage::new(3, 2);
        a.put_pixel(2, 1, Rgb([9, 8, 7]));
        a.save(d.join("a.png")).unwrap();
        RgbImage::new(4, 4).save(d.join("b.png")).unwrap();
        std::fs::write(d.join("bad.png"), b"\x89PNG garbage").unwrap();
        let paths = vec![d.join("a.png"), d.join("bad.png"), d.join("b.png")];
        let e = ImageSet::open(paths.clone(), &ImageReadOptions::default()).err().unwrap();
        assert!(e.contains("bad.png") && e.contains("skip_corrupt: true"), "{e}");
        for cache in [false, true] {
            let o = ImageReadOptions { cache, skip_corrupt: true, ..Default::default() };
            let (set, skipped) = ImageSet::open(paths.clone(), &o).unwrap();
            assert_eq!(skipped.kept, vec![0, 2]);
            assert!(skipped.notice("train").unwrap().contains("skipped 1 corrupt image"));
            assert_eq!((set.len(), set.first_shape(), set.fixed()), (2, &[3, 2, 3][..], false));
            let mut s = Sample::default();
            set.read(0, &mut s).unwrap();
            assert_eq!(s.shape, vec![3, 2, 3]);
            // Pixel (x 2, y 1) of each plane: index c * 6 + 1 * 3 + 2.
            assert_eq!([s.data[5], s.data[11], s.data[17]], [9.0, 8.0, 7.0]);
            let mut rows = vec![0.0; 18 * 2];
            set.read_rows(&[0, 0], &mut rows).unwrap();
            assert_eq!(&rows[18..], &s.data[..]);
            assert!(set.read_rows(&[0, 1], &mut rows).is_err());
        }
        let e = ImageSet::open(vec![], &ImageReadOptions { channels: 2, ..Default::default() }).err().unwrap();
        assert!(e.contains("channels: 2") && e.contains("1 (grey), 3 (RGB)"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
