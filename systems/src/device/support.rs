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

/// Whether the device executor implements `op`.
pub fn op_supported(op: &OpKind) -> bool {
    matches!(
        op,
        OpKind::Linear { act: None, .. }
            | OpKind::Conv2d { .. }
            | OpKind::MaxPool2d { .. }
            | OpKind::AvgPool2d { .. }
            | OpKind::AdaptiveAvgPool2d { .. }
            | OpKind::GlobalAvgPool { .. }
            | OpKind::Reshape
            | OpKind::Activation(_)
            | OpKind::Dropout { .. }
            | OpKind::BatchNorm2d { .. }
            | OpKind::LayerNorm { .. }
            | OpKind::Softmax { .. }
            | OpKind::Add
    )
}

/// Optimizers with a fused device update (every built-in one).
pub const OPTIMIZERS: &[&str] = &["sgd", "adam", "adamw", "adamax", "nadam", "radam", "rmsprop", "adagrad", "adadelta"];

/// `Err` naming the first op of `graph` the device cannot run yet (and where it is), with the ops it can.
pub fn check_graph(graph: &Graph) -> Result<(), String> {
    for (i, node) in graph.nodes.iter().enumerate() {
        if !op_supported(&node.op) {
            let what = match &node.op {
                OpKind::Linear { act: Some(_), .. } => "a fused linear + activation (model.fuse: true)".to_string(),
                op => format!("op `{}`", op_name(op)),
            };
            return Err(format!(
                "the CUDA executor cannot run {what} yet (node {i} of model `{}`); it runs linear, conv2d, \
                 max/avg/adaptive/global pooling, reshape, activations, dropout, batch_norm2d, layer_norm, softmax \
                 and add; use run.device: cpu for this model",
                graph.arch
            ));
        }
    }
    Ok(())
}
