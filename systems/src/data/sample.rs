//! One sample on its way from a dataset through the processors into a batch row.

/// A sample's input values and their shape. Images are planar `[C, H, W]` (the layout PyTorch's tensors and
/// the models use); other samples have the dataset's shape (`[features]` for tabular rows). Values are f32
/// throughout: an 8-bit image arrives as 0..255 and `to_float` scales it to 0..1, as torchvision's
/// `ToTensor` does, but there is no rounding back to bytes between processors.
///
/// The buffers are reused from sample to sample (cleared, never shrunk), so a loader worker stops allocating
/// once it has seen its largest sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Values, row-major over `shape`.
    pub data: Vec<f32>,
    /// Shape of `data`.
    pub shape: Vec<usize>,
}

impl Sample {
    /// Replaces the contents with `shape` and room for its values (zeroed), returning the values to fill.
    pub fn reset(&mut self, shape: &[usize]) -> &mut [f32] {
        self.shape.clear();
        self.shape.extend_from_slice(shape);
        let n = shape.iter().product();
        self.data.clear();
        self.data.resize(n, 0.0);
        &mut self.data
    }

    /// `(channels, height, width)` of an image sample: `[C, H, W]`, or `[H, W]` as one channel. `None` for
    /// other ranks.
    pub fn chw(&self) -> Option<(usize, usize, usize)> {
        image_dims(&self.shape)
    }
}

/// `(channels, height, width)` of an image shape: `[C, H, W]`, or `[H, W]` as one channel.
pub fn image_dims(shape: &[usize]) -> Option<(usize, usize, usize)> {
    match *shape {
        [c, h, w] => Some((c, h, w)),
        [h, w] => Some((1, h, w)),
        _ => None,
    }
}

/// What is known about the samples' shape before any is read: the shape of the first sample, and whether
/// every sample has it. An image folder of mixed sizes is not `fixed` until a processor (a resize to a fixed
/// size, a crop) makes it so; the model can only be built on a fixed shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeInfo {
    /// Shape of the first sample (of every sample when `fixed`).
    pub dims: Vec<usize>,
    /// Whether all samples have `dims`.
    pub fixed: bool,
}

impl ShapeInfo {
    /// A shape every sample has.
    pub fn fixed(dims: &[usize]) -> ShapeInfo {
        ShapeInfo { dims: dims.to_vec(), fixed: true }
    }
}
