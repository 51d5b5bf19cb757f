//! `autoencoder`: a convolutional autoencoder, and with `codes > 0` a VQ-VAE (van den Oord et al. 2017).
//!
//! Encoder: per entry of `channels`, a 3x3 convolution with stride 2 (halving H and W) and the activation;
//! then a 1x1 convolution to `latent_dim` channels (the bottleneck). With `codes > 0` the latent is
//! vector-quantised against a `[codes, latent_dim]` codebook (straight-through estimator; its codebook and
//! `beta`-weighted commitment losses join the task's loss, weighted by `run.vq_weight`). Decoder: a 1x1
//! convolution back to the last width, then per width in reverse: nearest 2x upsampling, a 3x3 convolution and
//! the activation; a final 3x3 convolution to the input channels and the optional output activation.
//!
//! Names follow a PyTorch module with `encoder` / `decoder` `nn.Sequential`s and a `quantizer` whose codebook
//! is an `nn.Embedding` (`quantizer.embedding.weight`).

use serde::Deserialize;

use super::{conv_spec, parse_options, BuiltModel};
use crate::graph::GraphError;

/// Options of the `autoencoder` model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AutoencoderOptions {
    /// Per-sample input shape `[C, H, W]` (flat data of the same size is viewed in it); default: the data's.
    #[serde(default)]
    pub input_shape: Option<Vec<usize>>,
    /// Widths of the downsampling convolutions (each halves H and W).
    #[serde(default = "default_channels")]
    pub channels: Vec<usize>,
    /// Channels of the latent (the code dimension of a VQ-VAE).
    #[serde(default = "default_latent")]
    pub latent_dim: usize,
    /// Codebook size; 0 for a plain autoencoder.
    #[serde(default)]
    pub codes: usize,
    /// Weight of the commitment loss inside the VQ loss.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Activation after every hidden convolution.
    #[serde(default = "default_activation")]
    pub activation: String,
    /// Activation of the reconstruction (`none`, or an activation name such as `sigmoid` for data in [0, 1]).
    #[serde(default = "default_none")]
    pub output_activation: String,
}

fn default_channels() -> Vec<usize> {
    vec![16, 32]
}
fn default_latent() -> usize {
    16
}
fn default_beta() -> f64 {
    0.25
}
fn default_activation() -> String {
    "relu".into()
}
fn default_none() -> String {
    "none".into()
}

/// Presets selectable with `model.type`.
pub const PRESETS: &[(&str, &str)] = &[
    ("digits", r#"{"input_shape": [1, 8, 8], "channels": [32, 64], "latent_dim": 8, "output_activation": "sigmoid"}"#),
    (
        "digits_vq",
        r#"{"input_shape": [1, 8, 8], "channels": [32, 64], "latent_dim": 16, "codes": 64, "output_activation": "sigmoid"}"#,
    ),
];

/// Builds the autoencoder graph for samples of `data_shape`.
pub fn build(options: &serde_json::Value, data_shape: &[usize]) -> Result<BuiltModel, String> {
    let o: AutoencoderOptions = parse_options("model", options)?;
    let act = super::parse_activation(&o.activation)?;
    let out_act = match o.output_activation.as_str() {
        "none" => None,
        other => {
            Some(super::parse_activation(other).map_err(|e| e.replace("model.activation", "model.output_activation"))?)
        }
    };
    if o.channels.is_empty() || o.channels.contains(&0) || o.latent_dim == 0 {
        return Err("model.channels needs at least one width, and every width and latent_dim must be >= 1".into());
    }
    let (mut g, mut x, (c, h, w)) = super::image_input("autoencoder", o.input_shape.as_deref(), data_shape)?;
    let down = 1usize << o.channels.len();
    if !h.is_multiple_of(down) || !w.is_multiple_of(down) {
        return Err(format!(
            "model.channels: {} downsampling stages need H and W divisible by {down}, the image is {h}x{w}",
            o.channels.len()
        ));
    }
    let e = |e: GraphError| format!("model: {e}");
    let mut idx = 0;
    for &width in &o.channels {
        let cin = g.shape(x)[0];
        x = g.conv2d(&format!("encoder.{idx}"), x, conv_spec(cin, width, 3, 2), true).map_err(e)?;
        x = g.activation(&format!("encoder.{}", idx + 1), x, act);
        idx += 2;
    }
    let last = *o.channels.last().expect("checked non-empty");
    x = g.conv2d(&format!("encoder.{idx}"), x, conv_spec(last, o.latent_dim, 1, 1), true).map_err(e)?;
    if o.codes > 0 {
        x = g.vector_quantize("quantizer", x, o.codes, o.beta).map_err(e)?;
    }
    x = g.conv2d("decoder.0", x, conv_spec(o.latent_dim, last, 1, 1), true).map_err(e)?;
    x = g.activation("decoder.1", x, act);
    let mut idx = 2;
    let widths: Vec<usize> = o.channels.iter().rev().skip(1).copied().chain(std::iter::once(o.channels[0])).collect();
    for &width in &widths {
        let cin = g.shape(x)[0];
        x = g.upsample(&format!("decoder.{idx}"), x, (2, 2)).map_err(e)?;
        x = g.conv2d(&format!("decoder.{}", idx + 1), x, conv_spec(cin, width, 3, 1), true).map_err(e)?;
        x = g.activation(&format!("decoder.{}", idx + 2), x, act);
        idx += 3;
    }
    let cin = g.shape(x)[0];
    x = g.conv2d(&format!("decoder.{idx}"), x, conv_spec(cin, c, 3, 1), true).map_err(e)?;
    if let Some(a) = out_act {
        x = g.activation(&format!("decoder.{}", idx + 1), x, a);
    }
    Ok(BuiltModel { builder: g, output: x })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reconstructs_the_input_shape_with_and_without_a_codebook() {
        for codes in [0, 32] {
            let m = build(&json!({"input_shape": [1, 8, 8], "codes": codes}), &[64]).unwrap();
            let mut world = bevy_ecs::world::World::new();
            let graph = m.builder.finish(&mut world, m.output, 0);
            assert_eq!(graph.output_shape(), &[1, 8, 8]);
            let has_vq = graph.nodes.iter().any(|n| matches!(n.op, ecstrain_components::OpKind::VectorQuantize { .. }));
            assert_eq!(has_vq, codes > 0);
        }
    }

    #[test]
    fn rejects_images_the_stages_cannot_halve() {
        let e = build(&json!({"input_shape": [1, 6, 6], "channels": [8, 8]}), &[36]).err().unwrap();
        assert!(e.contains("divisible by 4"), "{e}");
        let e = build(&json!({"input_shape": [1, 8, 8], "output_activation": "soft"}), &[64]).err().unwrap();
        assert!(e.contains("model.output_activation") && e.contains("sigmoid"), "{e}");
    }
}
