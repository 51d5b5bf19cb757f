//! Which values of the graph the device stores in half precision under autocast (`run.amp`), following
//! `torch.autocast`'s policy: matrix-product ops (linear layers, convolutions) write their outputs in the
//! autocast type; ops that keep their input's type (activations, dropout, reshapes, max and average pooling,
//! batch norm, nearest upsampling, the token mean, attention over a fused projection) follow it;
//! a sum or a concatenation is half when all its inputs are and f32 otherwise (type promotion: a half
//! residual branch joins an f32 stream in f32); everything else (layer norm, softmax, the losses) runs in f32, as autocast's f32
//! list puts it.
//!
//! One step past torch: an op that converts on store ([`converts_on_store`]: layer norm, vector quantization,
//! the token and axis shuffles) writes its output in half when every reader of it is a product. The products would round it on load anyway, so the forward is
//! the same bits; the copy rounded for the forward's products and again for their weight gradients is saved,
//! and the output gradient is rounded into half as torch's does when it flows back through autocast's cast.
//!
//! A value is stored in half only where every op that reads it has a half-storage kernel (the products and
//! the converting ops read either type; the type-following ops need their input and output in the same
//! type), so the plan never asks a kernel for a type it lacks: ops without half kernels read f32 values. The
//! graph's input arrives in f32; when every reader of it is a linear layer it is also kept in half (one
//! cast per forward, which the forward's products and the backward's weight gradients then read, as torch's
//! autocast casts it once and saves the half copy for the backward), where a convolution rounds it as its
//! im2col reads it anyway. The graph's output is stored as its producer writes it (a classifier's
//! logits in half, as torch's are under autocast): the device loss kernels read it in either type and round
//! its gradient once, after the f16 loss scale (autocast's f32 losses: the cast up is exact, the gradient
//! is rounded as it flows back through the cast); a host task gets it widened to f32. Parameters, their
//! gradients and optimizer state are f32 whatever the plan.

use ecstrain_components::{Graph, OpKind};
use ecstrain_kernels::cuda::StoreKind;

/// Whether an op's output follows its input's storage type (in half, these ops have kernels for it).
pub fn follows_input(op: &OpKind) -> bool {
    matches!(
        op,
        OpKind::Activation(_)
            | OpKind::Dropout { .. }
            | OpKind::Reshape
            | OpKind::MaxPool2d { .. }
            | OpKind::AvgPool2d { .. }
            | OpKind::GlobalAvgPool { .. }
            | OpKind::AdaptiveAvgPool2d { .. }
            | OpKind::BatchNorm2d { .. }
            | OpKind::Upsample { .. }
            | OpKind::TokenMean
            | OpKind::Attention { .. }
    )
}

/// Whether an op is a matrix product that writes the autocast type and reads its input in either type.
pub fn is_product(op: &OpKind) -> bool {
    matches!(op, OpKind::Linear { .. } | OpKind::Conv2d { .. })
}

/// Whether an op combines several inputs of any types as torch promotes them: half only when every input is
/// half, f32 otherwise (a sum, a concatenation).
pub fn promotes(op: &OpKind) -> bool {
    matches!(op, OpKind::Add | OpKind::Concat { .. })
}

/// Whether an op reads its input in either type and writes its output in either (an f32 computation or a
/// copy, rounded on store): layer norm, vector quantization (f32 distances; its output rows are f32 codebook
/// entries), and the token and axis shuffles. The plan stores its output in half
/// when every reader is a product, or when it [`keeps_type`] and its input is half.
pub fn converts_on_store(op: &OpKind) -> bool {
    matches!(
        op,
        OpKind::LayerNorm { .. }
            | OpKind::Permute { .. }
            | OpKind::SelectToken { .. }
            | OpKind::PrependToken { .. }
            | OpKind::VectorQuantize { .. }
    )
}

/// Whether a converting op keeps a half input's type where its readers allow (a permutation or a token
/// selection moves values without arithmetic, as torch's views keep their dtype). Layer norm computes in f32
/// and the class token is an f32 parameter (torch promotes the concatenation), so theirs do not.
pub fn keeps_type(op: &OpKind) -> bool {
    matches!(op, OpKind::Permute { .. } | OpKind::SelectToken { .. })
}

/// The storage type of every value of `graph` (indexed by value id) when the products autocast to `half`
/// (`None` or [`StoreKind::F32`]: every value f32). A value's gradient is stored in the value's type.
pub fn storage_plan(graph: &Graph, half: Option<StoreKind>) -> Vec<StoreKind> {
    let mut kinds = vec![StoreKind::F32; graph.values.len()];
    let Some(h) = half.filter(|&k| k != StoreKind::F32) else { return kinds };
    // Per value: may it be stored in half as far as its readers go? Decided from the last node back, so a
    // reader's own output is decided before its input (an element-wise reader keeps one type on both sides).
    let mut half_ok = vec![false; graph.values.len()];
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        node.inputs.iter().for_each(|v| readers[v.0].push(i));
    }
    for node in graph.nodes.iter().rev() {
        let v = node.output.0;
        half_ok[v] = readers[v].iter().all(|&r| {
            let reader = &graph.nodes[r];
            match &reader.op {
                // A sum reads either type (autocast promotes a half operand beside an f32 one).
                op if is_product(op) || converts_on_store(op) || promotes(op) => true,
                op if follows_input(op) => half_ok[reader.output.0],
                _ => false,
            }
        });
    }
    let only_products = |v: usize| !readers[v].is_empty() && readers[v].iter().all(|&r| is_product(&graph.nodes[r].op));
    let only_linear =
        !readers[0].is_empty() && readers[0].iter().all(|&r| matches!(graph.nodes[r].op, OpKind::Linear { .. }));
    if only_linear {
        kinds[0] = h;
    }
    for node in &graph.nodes {
        let v = node.output.0;
        kinds[v] = match &node.op {
            _ if !half_ok[v] => StoreKind::F32,
            op if is_product(op) => h,
            op if converts_on_store(op) && only_products(v) => h,
            op if keeps_type(op) && kinds[node.inputs[0].0] == h => h,
            op if promotes(op) && node.inputs.iter().all(|i| kinds[i.0] == h) => h,
            op if follows_input(op) => kinds[node.inputs[0].0],
            _ => StoreKind::F32,
        };
    }
    kinds
}
