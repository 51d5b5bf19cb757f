//! What the CUDA path can run today, checked when the run is assembled so an unsupported model fails with
//! exit 2 and a message instead of mid-run.

use ecstrain_components::{Graph, OpKind};

/// The name of an op kind, for messages.
fn op_name(op: &OpKind) -> &'static str {
    match op {
        OpKind::Linear { .. } => "linear",
        OpKind::Conv2d { .. } => "conv2d",
        OpKind::MaxPool2d { .. } => "max_pool2d",
        OpKind::AvgPool2d { .. } => "avg_pool2d",
        OpKind::AdaptiveAvgPool2d { .. } => "adaptive_avg_pool2d",
        OpKind::GlobalAvgPool { .. } => "global_avg_pool",
        OpKind::Reshape => "reshape",
        OpKind::Activation(_) => "activation",
        OpKind::Dropout { .. } => "dropout",
        OpKind::BatchNorm2d { .. } => "batch_norm2d",
        OpKind::LayerNorm { .. } => "layer_norm",
        OpKind::Softmax { .. } => "softmax",
        OpKind::Embedding { .. } => "embedding",
        OpKind::Add => "add",
        OpKind::Concat { .. } => "concat",
        OpKind::Attention { .. } => "attention",
        OpKind::Permute { .. } => "permute",
        OpKind::PrependToken { .. } => "prepend_token",
        OpKind::AddParam { .. } => "add_param",
        OpKind::TokenMean => "token_mean",
        OpKind::SelectToken { .. } => "select_token",
        OpKind::Upsample { .. } => "upsample",
        OpKind::VectorQuantize { .. } => "vector_quantize",
        OpKind::FakeQuantize { .. } => "fake_quantize",
    }
}

/// Whether the device executor implements `op`: every op of the graph IR except QAT's fake quantization,
/// which stays CPU-only (`run.qat` is rejected with `run.device: cuda` before the graph is built).
pub fn op_supported(op: &OpKind) -> bool {
    !matches!(op, OpKind::FakeQuantize { .. })
}

/// Optimizers with a fused device update (every built-in one).
pub const OPTIMIZERS: &[&str] = &["sgd", "adam", "adamw", "adamax", "nadam", "radam", "rmsprop", "adagrad", "adadelta"];

/// `Err` naming the first op of `graph` the device cannot run (and where it is).
pub fn check_graph(graph: &Graph) -> Result<(), String> {
    for (i, node) in graph.nodes.iter().enumerate() {
        if !op_supported(&node.op) {
            return Err(format!(
                "the CUDA executor cannot run op `{}` (node {i} of model `{}`): it runs every op except \
                 fake_quantize (quantization-aware training, run.qat), which is CPU-only; use run.device: cpu \
                 for this model",
                op_name(&node.op),
                graph.arch
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecstrain_kernels::ops::activation::Activation;

    /// Every op but fake quantization runs on the device, fused linears included.
    #[test]
    fn device_supports_all_but_fake_quantize() {
        assert!(op_supported(&OpKind::TokenMean));
        assert!(op_supported(&OpKind::Concat { axis: 0 }));
        assert!(op_supported(&OpKind::Attention { heads: 2, tokens: 5, dim: 8, causal: false }));
        let slice = ecstrain_components::ParamSlice { offset: 0, len: 6 };
        let w = ecstrain_components::ParamRef { entity: bevy_ecs::entity::Entity::PLACEHOLDER, slice };
        let lin = OpKind::Linear {
            rows: 1,
            in_features: 2,
            out_features: 3,
            weight: w,
            bias: None,
            act: Some(Activation::Gelu),
        };
        assert!(op_supported(&lin));
        assert!(!op_supported(&OpKind::FakeQuantize {
            amax: ecstrain_components::ParamSlice { offset: 0, len: 1 },
            averaging: 0.01
        }));
    }

    /// The registered ViT and (VQ-)autoencoder presets pass the assembly check on the device.
    #[test]
    fn vit_and_autoencoder_presets_run_on_the_device() {
        use crate::models::{autoencoder, vit, BuiltModel};
        type Build = fn(&serde_json::Value, &[usize]) -> Result<BuiltModel, String>;
        let mut cases: Vec<(Build, &str)> = vit::PRESETS.iter().map(|p| (vit::build as Build, p.1)).collect();
        cases.extend(autoencoder::PRESETS.iter().map(|p| (autoencoder::build as Build, p.1)));
        for (build, opts) in cases {
            let opts: serde_json::Value = serde_json::from_str(opts).unwrap();
            let shape = opts["input_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize);
            let m = build(&opts, &[shape.product::<usize>()]).unwrap();
            let mut world = bevy_ecs::world::World::new();
            let graph = m.builder.finish(&mut world, m.output, 0);
            assert_eq!(check_graph(&graph), Ok(()), "{opts}");
        }
    }
}
