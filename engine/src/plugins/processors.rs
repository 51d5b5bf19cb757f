//! Registry entries of the built-in processors (the per-sample transforms of `datasets.<name>.processors`),
//! each following its `torchvision.transforms.v2` namesake on float images.

use ecstrain_systems::data::processors::{
    center_crop, color_jitter, flip, normalize, random_crop, random_resized_crop, resize, scale, to_float,
};

use crate::app::{App, Plugin};
use crate::registry::{ProcessorBuildFn, ProcessorEntry};

/// The built-in processors.
pub struct BuiltinProcessors;

/// `(name, builder, doc)` of every built-in processor.
const PROCESSORS: &[(&str, ProcessorBuildFn, &str)] = &[
    ("to_float", to_float::build, "divide by 255: 8-bit values to [0, 1] (ToTensor); no options"),
    ("scale", scale::build, "x * factor + offset on every value; factor, offset = 0"),
    ("normalize", normalize::build, "(x - mean) / std per channel (one value: all channels); mean, std"),
    (
        "resize",
        resize::build,
        "resize images; size (int = smaller edge, or [h, w]), interpolation bilinear|bicubic|nearest, antialias = true",
    ),
    ("center_crop", center_crop::build, "central crop, zero-padded where the image is smaller; size (int or [h, w])"),
    (
        "random_resized_crop",
        random_resized_crop::build,
        "random area/aspect crop resized to size; scale = [0.08, 1], ratio = [3/4, 4/3], interpolation, antialias",
    ),
    ("random_horizontal_flip", flip::build_horizontal, "mirror left-right with probability p = 0.5"),
    ("random_vertical_flip", flip::build_vertical, "mirror top-bottom with probability p = 0.5"),
    (
        "random_crop",
        random_crop::build,
        "random crop; size, padding, pad_if_needed, fill, padding_mode constant|edge|reflect|symmetric",
    ),
    (
        "color_jitter",
        color_jitter::build,
        "random brightness, contrast, saturation, hue (images in [0, 1]) in a random order",
    ),
];

impl Plugin for BuiltinProcessors {
    fn build(&self, app: &mut App) {
        for &(name, build, doc) in PROCESSORS {
            app.registry.register_processor(name, ProcessorEntry { build, doc });
        }
    }
}
