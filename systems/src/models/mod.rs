//! Built-in model builders. Each turns the `model:` options of a config (everything but `arch` and `type`)
//! and the dataset's per-sample input shape into a graph; the engine registers them by name.

pub mod autoencoder;
pub mod cnn;
pub mod mlp;
pub mod resnet;
pub mod sequential;
pub mod vit;

use crate::graph::GraphBuilder;
use ecstrain_components::ValueId;

/// What a model builder returns: the builder holding its layers and parameters, and the output value.
pub struct BuiltModel {
    /// Layers and parameters, ready for [`GraphBuilder::finish`].
    pub builder: GraphBuilder,
    /// The value the task reads.
    pub output: ValueId,
}

/// A model builder: `(options, per-sample input shape) -> model`, or a message naming the offending key.
pub type ModelBuildFn = fn(&serde_json::Value, &[usize]) -> Result<BuiltModel, String>;

/// Appends an MLP as a PyTorch `nn.Sequential` named `prefix`: per hidden width `Linear -> act [-> Dropout]`,
/// then `Linear(.., output_size)`, named `prefix.0`, `prefix.1`, ... Returns the output value. Shared by the
/// `mlp` body and the `cnn` head so both name their parameters the same way.
#[allow(clippy::too_many_arguments)]
pub fn linear_stack(
    g: &mut GraphBuilder,
    mut x: ValueId,
    prefix: &str,
    hidden_sizes: &[usize],
    output_size: usize,
    act: ecstrain_components::Activation,
    dropout: f64,
    bias: bool,
) -> Result<ValueId, String> {
    let e = |e: crate::graph::GraphError| format!("model: {e}");
    let mut idx = 0;
    for &h in hidden_sizes {
        x = g.linear(&format!("{prefix}.{idx}"), x, h, bias).map_err(e)?;
        x = g.activation(&format!("{prefix}.{}", idx + 1), x, act);
        idx += 2;
        if dropout > 0.0 {
            x = g.dropout(&format!("{prefix}.{idx}"), x, dropout).map_err(e)?;
            idx += 1;
        }
    }
    g.linear(&format!("{prefix}.{idx}"), x, output_size, bias).map_err(e)
}

/// Deserialises builder options, turning serde's message into one that names the section and, for a value of
/// the wrong type or out of range, the key (`model.causal: invalid type: string "maybe", expected a boolean`).
/// serde_json's own message has no path; the key is the one whose removal takes that error away. Unknown
/// keys keep serde's `section: unknown field ..., expected ...` form, which already names the key and lists the
/// valid ones (and which `engine::config::keys` reads).
pub fn parse_options<T: serde::de::DeserializeOwned>(section: &str, v: &serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v.clone()).map_err(|e| {
        let msg = e.to_string();
        let culprit = match v.as_object() {
            Some(obj) if !msg.starts_with("unknown field") => obj.keys().find(|k| {
                let mut rest = obj.clone();
                rest.remove(*k);
                match serde_json::from_value::<T>(serde_json::Value::Object(rest)) {
                    Ok(_) => true,
                    Err(e) => e.to_string().starts_with(&format!("missing field `{k}`")),
                }
            }),
            _ => None,
        };
        match culprit {
            Some(k) => format!("{section}.{k}: {msg}"),
            None => format!("{section}: {msg}"),
        }
    })
}

/// An image model's graph builder, its input viewed as `[C, H, W]`, and `(C, H, W)`.
pub type ImageInput = (GraphBuilder, ValueId, (usize, usize, usize));

/// The model input viewed as an image: `input_shape` (`[C, H, W]`, from the config) or the data's own shape,
/// with flat data of the same element count reshaped (node `input`). Returns the builder and the image value.
pub fn image_input(arch: &str, input_shape: Option<&[usize]>, data_shape: &[usize]) -> Result<ImageInput, String> {
    let data_numel: usize = data_shape.iter().product();
    let shape = input_shape.map(<[usize]>::to_vec).unwrap_or_else(|| data_shape.to_vec());
    let [c, h, w] = shape[..] else {
        return Err(format!(
            "model.input_shape must be [C, H, W] with sizes >= 1, got {shape:?} (data samples: {data_shape:?})"
        ));
    };
    if c == 0 || h == 0 || w == 0 {
        return Err(format!("model.input_shape must be [C, H, W] with sizes >= 1, got {shape:?}"));
    }
    if c * h * w != data_numel {
        return Err(format!(
            "model.input_shape {shape:?} has {} elements but the training data has {data_numel} per sample (shape {data_shape:?})",
            c * h * w
        ));
    }
    let mut g = GraphBuilder::new(arch, data_shape);
    let mut x = g.input();
    if data_shape != shape.as_slice() {
        x = g.reshape("input", x, &shape).map_err(|e| format!("model: {e}"))?;
    }
    Ok((g, x, (c, h, w)))
}

/// Parses `model.activation`, listing the valid names on error.
pub fn parse_activation(name: &str) -> Result<ecstrain_components::Activation, String> {
    ecstrain_components::Activation::parse(name).ok_or_else(|| {
        format!(
            "model.activation: unknown activation `{name}`; valid choices: {}",
            ecstrain_components::Activation::NAMES.join(", ")
        )
    })
}

/// A `[kernel x kernel]` convolution spec with "same" padding for odd kernels.
pub fn conv_spec(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
) -> ecstrain_components::Conv2dSpec {
    ecstrain_components::Conv2dSpec {
        in_channels,
        out_channels,
        kernel: (kernel, kernel),
        stride: (stride, stride),
        padding: (kernel / 2, kernel / 2),
        dilation: (1, 1),
        groups: 1,
    }
}
