//! Forward and backward execution of a [`Graph`] on planned buffers.
//!
//! [`Activations`] holds one buffer per value and one gradient buffer per value, sized once for the largest
//! batch (`capacity`); a smaller batch uses the leading rows. Per-node state the backward needs (max-pool
//! argmax, normalisation statistics, attention probabilities, codebook assignments) lives in per-node
//! buffers planned at the same time. Nothing is allocated per step. Value 0 (the input) has no buffer: it is
//! read from the batch, and no gradient flows into it.
//!
//! Gradient conventions (as the kernels): parameter gradients accumulate into the [`Grads`] arena (so
//! micro-batches of an accumulation window add up); activation gradients overwrite, except that a value read
//! by several ops (a residual branch point) receives the sum: the first consumer visited by the backward
//! writes, later ones compute into a scratch buffer and add it.
//!
//! [`Grads`]: ecstrain_components::Grads

use std::time::Instant;

use bevy_ecs::prelude::*;
use ecstrain_components::{Conv2dSpec, Graph, Mode, Node, OpKind, Pool2dSpec, ValueId};
use ecstrain_kernels::ops;
use ecstrain_kernels::rng::Rng;

use super::profile::OpProfile;

/// Statistics of an op that contributes its own loss term (a VQ layer): read by the task for logging.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AuxStats {
    /// The op's unweighted loss (`codebook + beta * commitment` for VQ).
    pub loss: f64,
    /// Codebook perplexity of the batch.
    pub perplexity: f64,
}

/// Planned activation and activation-gradient buffers for a graph.
#[derive(Resource, Debug)]
pub struct Activations {
    /// Rows (samples) each buffer can hold.
    pub capacity: usize,
    /// `values[v]`: `[capacity, numel(v)]`; empty for the input value.
    pub values: Vec<Vec<f32>>,
    /// `grads[v]`: same shapes as `values`.
    pub grads: Vec<Vec<f32>>,
    /// `saved[node]`: float state a node's backward reads (normalisation statistics, attention q/k/v and
    /// probabilities); empty for most nodes.
    pub saved: Vec<Vec<f32>>,
    /// `indices[node]`: integer state (max-pool argmax; VQ code indices followed by per-code counts).
    pub indices: Vec<Vec<u32>>,
    /// `ids[node]`: an embedding's token ids of the last forward, as integers.
    pub ids: Vec<Vec<i64>>,
    /// `aux[node]`: statistics of loss-contributing ops of the last forward.
    pub aux: Vec<Option<AuxStats>>,
    /// Weight the task gives the auxiliary losses (`vq_weight`); the backward adds their gradients scaled by it.
    pub aux_weight: f32,
    /// Scratch shared by the ops that need it in turn (convolution columns, attention gradients).
    pub scratch: Vec<f32>,
    /// Gradient staging for values with several consumers, sized for the largest value.
    pub grad_tmp: Vec<f32>,
    /// Per value: whether the current backward has written its gradient yet.
    pub written: Vec<bool>,
    /// Per-node timings, recorded only when set (`run.profile`).
    pub profile: Option<OpProfile>,
    /// `conv_pool[node]`: for a convolution whose only reader is the max pool right after it, that pool (and
    /// the ReLU right after the pool, when it is the pool's only reader): the nodes run as one fused kernel
    /// (`ops::conv2d::conv2d_maxpool_*`, bit-identical to the separate ops), so the convolution's
    /// full-resolution output and its gradient never go through memory (the skipped values' buffers stay
    /// planned for a forward with a [`NodeOverride`], which runs every node on its own). Planned by
    /// [`Activations::plan`]; clear it to run every node on its own.
    pub conv_pool: Vec<Option<ConvPool>>,
    /// `attention_queries[node]`: for an attention whose output only [`OpKind::SelectToken`] nodes read (a
    /// ViT's last block feeding its class token to the head), the leading query rows they need: only those
    /// rows are computed, forward and backward (`ops::attention::attention_fused_forward_queries`; the other
    /// rows are never read). The token count for every other attention; unused for other nodes. Applied when
    /// the [`Activations::conv_pool`] fusions are (no [`NodeOverride`]). Planned by [`Activations::plan`].
    pub attention_queries: Vec<usize>,
    /// `linear_lead[node]`: for a linear layer whose only reader is an attention computing fewer query rows
    /// than it has tokens ([`Activations::attention_queries`]), the outputs that attention reads: the key and
    /// value columns on every token, the query columns on its leading rows only. Only those are computed,
    /// forward and backward (`ops::linear_lead`; a third of a ViT's last q/k/v projection is never read).
    /// Applied when the attention's query rows are. Planned by [`Activations::plan`] ([`linear_lead_columns`]).
    pub linear_lead: Vec<Option<ops::linear_lead::LeadColumns>>,
    /// `attention_pool[node]`: for an attention computing few query rows ([`Activations::attention_queries`],
    /// no causal mask) whose q/k/v projection is a [`Activations::linear_lead`] layer, that projection, and
    /// for the projection that attention: the two run as one op (`ops::attention_pool`: the scores and the
    /// output computed through the projection's weights, without projecting keys and values on every token),
    /// forward and backward, when that does less work ([`ops::attention_pool::PoolShape::pays`]). Within
    /// rounding of the two nodes. Applied when the query rows are. Planned by [`Activations::plan`]
    /// ([`attention_pools`]).
    pub attention_pool: Vec<Option<usize>>,
    /// Whether the last forward ran the [`Activations::conv_pool`] pairs fused (the backward must match it).
    pub fused_forward: bool,
    /// `grad_needed[value]`: whether the backward computes the value's gradient ([`gradient_needed`]): not for
    /// the model input and what is computed from it alone, as PyTorch's `requires_grad` propagates.
    pub grad_needed: Vec<bool>,
    /// `value_source[value]`: the value whose buffer holds this value's data ([`value_sources`]): itself, or
    /// for a reshape's output the reshape's (resolved) input, which readers then read in place.
    pub value_source: Vec<usize>,
    /// `shares_grad[node]`: whether an [`OpKind::Add`]'s backward may hand its output gradient to its first
    /// input and let its second input's producer read it from there ([`add_gradient_shares`]). Planned by
    /// [`Activations::plan`]; clear it to copy instead.
    pub shares_grad: Vec<bool>,
    /// `linear_residual[node]`: for a linear layer whose only reader is the add right after it (a residual
    /// branch's last layer), that add: the forward runs both as one kernel (`ops::linear_residual`, bitwise
    /// the pair), writing the add's output directly; the linear layer's own output is never written (its
    /// backward reads only its input, the add's reads nothing). Applied, like [`Activations::conv_pool`],
    /// when no [`NodeOverride`] runs. Planned by [`Activations::plan`] ([`linear_residual_pairs`]).
    pub linear_residual: Vec<Option<usize>>,
    /// `residual_norm[node]`: for a [`Activations::linear_residual`] pair whose add is read by the layer norm
    /// right after it (a transformer's residual stream entering the next layer norm), that layer norm: the
    /// fused kernel also normalises each block of rows of the sum while it is in cache
    /// (`ops::linear_residual::linear_residual_norm_forward`, bitwise the three ops). The sum is still
    /// written (the stream has other readers). Planned by [`Activations::plan`] ([`residual_norms`]).
    pub residual_norm: Vec<Option<usize>>,
    /// `token_stem[node]`: for a 2-D transpose that starts a ViT's token stem (patch features `[C, P]` ->
    /// tokens `[P, C]`, then the class token prepended, then the position embedding added, each the sole
    /// reader of the one before), the nodes it runs with ([`token_stems`]): forward, one pass per sample writes
    /// `[cls; x^T] + pos` into the add's output; backward, the add's output gradient gives the two parameter
    /// gradients and, transposed, the input's. Bitwise the three nodes (the same adds in the same order, the
    /// rest copies). Applied, like [`Activations::conv_pool`], when no [`NodeOverride`] runs.
    pub token_stem: Vec<Option<TokenStem>>,
    /// `patch_stem[node]`: for a patch-embedding convolution (kernel equal to the stride, no padding, no
    /// dilation, one group) whose image needs no gradient and whose output goes through a reshape to
    /// `[D, P]` into a token stem ([`Activations::token_stem`]), that stem's transpose: the five nodes run as
    /// one op (`ops::patch_stem`; the patches gathered, one product writing the token rows, one pass for the
    /// bias, class token and position embedding), forward and backward. Within float rounding of the separate
    /// nodes. Applied, like [`Activations::conv_pool`], when no [`NodeOverride`] runs ([`patch_stems`]).
    pub patch_stem: Vec<Option<usize>>,
    /// `select_after_norm[node]`: a class-token select whose input's only other reader is a layer norm earlier
    /// in the graph (a ViT's pruned last block reads the residual stream both ways), and that layer norm: the
    /// select maps to the norm and the norm to the select. The backward visits the select first; instead of
    /// zeroing the whole input gradient to write its rows (the norm then adding onto it), the select is left
    /// to the norm, which writes the gradient and then adds the select's rows (the same sums). Planned by
    /// [`Activations::plan`] ([`select_after_norm`]); clear it to run the select on its own.
    pub select_after_norm: Vec<Option<usize>>,
    /// `grad_slot[value]`: during a backward, the value whose gradient buffer holds this value's gradient:
    /// itself, or the first input of the add that shared its gradient with it.
    pub grad_slot: Vec<usize>,
}

/// How many node inputs read each value (a node reading a value twice counts twice).
/// Per value, the indices of the nodes that read it, in graph order (built once: scanning every node for
/// each value's readers made planning quadratic in depth, 27 s for a 4,000-block ViT).
pub fn readers_of(graph: &Graph) -> Vec<Vec<usize>> {
    let mut readers = vec![Vec::new(); graph.values.len()];
    for (i, n) in graph.nodes.iter().enumerate() {
        for v in &n.inputs {
            if readers[v.0].last() != Some(&i) {
                readers[v.0].push(i);
            }
        }
    }
    readers
}

fn reader_counts(graph: &Graph) -> Vec<usize> {
    let mut readers = vec![0usize; graph.values.len()];
    graph.nodes.iter().flat_map(|n| &n.inputs).for_each(|v| readers[v.0] += 1);
    readers
}

/// Whether `next` reads `prev`'s output as its first input and nothing else reads it, and that output is not
/// the graph output (the task reads it): the condition for running the two as one kernel.
fn sole_first_reader(graph: &Graph, readers: &[usize], prev: &Node, next: &Node) -> bool {
    next.inputs[0] == prev.output && readers[prev.output.0] == 1 && prev.output != graph.output
}

/// The nodes a token-stem transpose runs ([`Activations::token_stem`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenStem {
    /// The class-token prepend (node `transpose + 1`).
    pub prepend: usize,
    /// The position-embedding add (node `transpose + 2`).
    pub add: usize,
}

/// The token stems the executor fuses: `stems[t] = Some(..)` when node `t` transposes a per-sample `[C, P]`
/// value, node `t + 1` prepends a token to its output, node `t + 2` adds a parameter to that, each reads the
/// one before and is its only reader, and neither intermediate value is the graph output.
pub fn token_stems(graph: &Graph) -> Vec<Option<TokenStem>> {
    let readers = reader_counts(graph);
    let sole_reader = |prev: &Node, next: &Node| sole_first_reader(graph, &readers, prev, next);
    let mut stems = vec![None; graph.nodes.len()];
    for (t, w) in graph.nodes.windows(3).enumerate() {
        let transpose =
            matches!(&w[0].op, OpKind::Permute { in_shape, perm } if in_shape.len() == 2 && perm[..] == [1, 0]);
        if transpose
            && matches!(w[1].op, OpKind::PrependToken { .. })
            && matches!(w[2].op, OpKind::AddParam { .. })
            && sole_reader(&w[0], &w[1])
            && sole_reader(&w[1], &w[2])
        {
            stems[t] = Some(TokenStem { prepend: t + 1, add: t + 2 });
        }
    }
    stems
}

/// Per node, the add a linear layer runs fused ([`Activations::linear_residual`]): `Some(idx + 1)` when node
/// `idx` is a linear layer without a fused activation, node `idx + 1` adds its output to another value, nothing
/// else reads that output, and it is not the graph output.
pub fn linear_residual_pairs(graph: &Graph) -> Vec<Option<usize>> {
    let readers = reader_counts(graph);
    let mut pairs = vec![None; graph.nodes.len()];
    for (i, w) in graph.nodes.windows(2).enumerate() {
        let (lin, add) = (&w[0], &w[1]);
        let y = lin.output;
        if matches!(lin.op, OpKind::Linear { act: None, .. })
            && matches!(add.op, OpKind::Add)
            && add.inputs.contains(&y)
            && add.inputs[0] != add.inputs[1]
            && readers[y.0] == 1
            && y != graph.output
        {
            pairs[i] = Some(i + 1);
        }
    }
    pairs
}

/// Per node, the layer norm a [`linear_residual_pairs`] pair runs fused ([`Activations::residual_norm`]):
/// `Some(idx + 2)` when node `idx + 2` is a layer norm of the add's output over its `OC`-wide rows.
pub fn residual_norms(graph: &Graph) -> Vec<Option<usize>> {
    let pairs = linear_residual_pairs(graph);
    let mut norms = vec![None; graph.nodes.len()];
    for (i, pair) in pairs.iter().enumerate() {
        let (Some(a), Some(ln)) = (*pair, graph.nodes.get(i + 2)) else { continue };
        let (OpKind::Linear { out_features, .. }, OpKind::LayerNorm { dim, .. }) = (&graph.nodes[i].op, &ln.op) else {
            continue;
        };
        if ln.inputs.first() == Some(&graph.nodes[a].output) && dim == out_features {
            norms[i] = Some(i + 2);
        }
    }
    norms
}

/// Per node, whether an add `y = x0 + x1` may share its output gradient between its inputs instead of
/// copying it: the backward moves `dy` into `x0`'s gradient buffer and `x1`'s producer reads it from there
/// (a residual block's branch, `x0` the residual stream). Both gradients are `dy` at that moment; sharing
/// is sound when nothing changes `x0`'s gradient before that producer's backward has read it, i.e. when:
/// - `x1` has no other reader (its gradient is exactly `dy`), is not the graph output, and differs from `x0`;
/// - its producer's backward only reads its output gradient (ops that rewrite it in place or hand the
///   buffer on are excluded) and does not read `x0` (it would add into the buffer it reads);
/// - no node between that producer and the add reads or writes `x0` (their backwards, which run in between,
///   would add into it).
///
/// Whether `x0`'s gradient is still unwritten is checked when the add's backward runs.
pub fn add_gradient_shares(graph: &Graph) -> Vec<bool> {
    let readers = reader_counts(graph);
    let producer = |v: ValueId| graph.nodes.iter().position(|n| n.output == v);
    let conv_pool = conv_pool_pairs(graph);
    // Ops whose backward takes the output gradient as a plain read-only slice.
    let reads_dy_only = |op: &OpKind| {
        matches!(
            op,
            OpKind::Linear { act: None, .. }
                | OpKind::Conv2d { .. }
                | OpKind::Attention { .. }
                | OpKind::LayerNorm { .. }
                | OpKind::BatchNorm2d { .. }
                | OpKind::Activation(_)
                | OpKind::Dropout { .. }
                | OpKind::Permute { .. }
        )
    };
    graph
        .nodes
        .iter()
        .enumerate()
        .map(|(a, node)| {
            let (OpKind::Add, [x0, x1]) = (&node.op, node.inputs.as_slice()) else { return false };
            if x0 == x1 || x0.0 == 0 || *x1 == graph.output || *x0 == graph.output || readers[x1.0] != 1 {
                return false;
            }
            let Some(p) = producer(*x1) else { return false };
            let touches_x0 = |n: &Node| n.output == *x0 || n.inputs.contains(x0);
            p < a
                && reads_dy_only(&graph.nodes[p].op)
                && conv_pool[p].is_none()
                && !absorbed(&conv_pool, p)
                && !graph.nodes[p].inputs.contains(x0)
                && !graph.nodes[p + 1..a].iter().any(touches_x0)
        })
        .collect()
}

/// Per value, the value whose buffer holds its data. A reshape changes no element, so its output is read
/// straight from its input's buffer (resolved through chains of reshapes, down to the model input), and the
/// reshape itself copies nothing; PyTorch's `view` does the same. The graph output keeps its own buffer
/// (the task reads it), and so does everything else.
pub fn value_sources(graph: &Graph) -> Vec<usize> {
    let mut source: Vec<usize> = (0..graph.values.len()).collect();
    for node in &graph.nodes {
        if matches!(node.op, OpKind::Reshape) && node.output != graph.output {
            source[node.output.0] = source[node.inputs[0].0];
        }
    }
    source
}

/// Per value, whether a parameter lies upstream of it, so that its gradient leads to a parameter gradient:
/// false for the model input and for values computed from it alone (an input reshape, a normalisation without
/// parameters), whose gradients the backward skips. The graph output always counts as needed (the task writes
/// its gradient).
pub fn gradient_needed(graph: &Graph) -> Vec<bool> {
    let mut needed = vec![false; graph.values.len()];
    for node in &graph.nodes {
        needed[node.output.0] = !node.op.params().is_empty() || node.inputs.iter().any(|v| needed[v.0]);
    }
    needed[graph.output.0] = true;
    needed
}

/// Per node, the leading query rows an attention node must compute (see [`Activations::attention_queries`]);
/// 0 for other nodes.
pub fn attention_query_rows(graph: &Graph) -> Vec<usize> {
    let readers_of = readers_of(graph);
    graph
        .nodes
        .iter()
        .map(|node| {
            let OpKind::Attention { tokens, .. } = node.op else { return 0 };
            let selects: Option<Vec<usize>> = readers_of[node.output.0]
                .iter()
                .map(|&r| match graph.nodes[r].op {
                    OpKind::SelectToken { index } => Some(index + 1),
                    _ => None,
                })
                .collect();
            match selects {
                Some(rows) if node.output != graph.output && !rows.is_empty() => {
                    rows.into_iter().max().unwrap_or(tokens).min(tokens)
                }
                _ => tokens,
            }
        })
        .collect()
}

/// Per node, the outputs a linear layer computes when its only reader is an attention that computes fewer
/// query rows than it has tokens ([`Activations::linear_lead`]): the attention's query columns (the first
/// `dim` of its `[T, 3 * dim]` input) on its leading query rows only. `None` for every other node.
pub fn linear_lead_columns(graph: &Graph) -> Vec<Option<ops::linear_lead::LeadColumns>> {
    let readers = reader_counts(graph);
    let readers_of = readers_of(graph);
    let queries = attention_query_rows(graph);
    let mut lead = vec![None; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let OpKind::Linear { rows, out_features, act: None, .. } = node.op else { continue };
        let y = node.output;
        if readers[y.0] != 1 || y == graph.output {
            continue;
        }
        let Some(&a) = readers_of[y.0].first() else { continue };
        if let OpKind::Attention { tokens, dim, .. } = graph.nodes[a].op {
            if queries[a] < tokens && rows == tokens && out_features == 3 * dim {
                lead[i] = Some(ops::linear_lead::LeadColumns { cols: dim, rows: queries[a], group: tokens });
            }
        }
    }
    lead
}

/// Per node, the pooled attentions and their projections (see [`Activations::attention_pool`]).
pub fn attention_pools(graph: &Graph) -> Vec<Option<usize>> {
    let lead = linear_lead_columns(graph);
    let queries = attention_query_rows(graph);
    let mut pools = vec![None; graph.nodes.len()];
    for (l, node) in graph.nodes.iter().enumerate() {
        if lead[l].is_none() {
            continue;
        }
        // linear_lead_columns picked a projection whose sole reader is an attention.
        let Some(a) = graph.nodes.iter().position(|n| n.inputs.contains(&node.output)) else { continue };
        let causal = matches!(graph.nodes[a].op, OpKind::Attention { causal: true, .. });
        if !causal && pool_shape(graph, a, l, queries[a], 1).pays() {
            pools[a] = Some(l);
            pools[l] = Some(a);
        }
    }
    pools
}

/// The sizes of the pooled attention node `a` over its projection `l`, for `n` samples.
fn pool_shape(graph: &Graph, a: usize, l: usize, queries: usize, n: usize) -> ops::attention_pool::PoolShape {
    match (&graph.nodes[a].op, &graph.nodes[l].op) {
        (OpKind::Attention { heads, tokens, dim, .. }, OpKind::Linear { in_features, .. }) => {
            ops::attention_pool::PoolShape {
                samples: n,
                tokens: *tokens,
                width: *in_features,
                heads: *heads,
                head_dim: dim / heads,
                queries,
            }
        }
        _ => unreachable!("attention_pools pairs an attention with a linear layer"),
    }
}

/// A token stem's class token and position embedding.
fn stem_params(graph: &Graph, stem: TokenStem) -> (&ecstrain_components::ParamRef, &ecstrain_components::ParamRef) {
    match (&graph.nodes[stem.prepend].op, &graph.nodes[stem.add].op) {
        (OpKind::PrependToken { token }, OpKind::AddParam { param }) => (token, param),
        _ => unreachable!("token_stems pairs a transpose with a prepend and a parameter add"),
    }
}

/// The patch embeddings the executor runs with their token stems ([`Activations::patch_stem`]):
/// `stems[c] = Some(t)` when node `c` is a patch-embedding convolution of an image that needs no gradient,
/// node `c + 1` reshapes its output (its only reader) and node `t = c + 2` starts a token stem reading that.
pub fn patch_stems(graph: &Graph) -> Vec<Option<usize>> {
    let (readers, needed, tokens) = (reader_counts(graph), gradient_needed(graph), token_stems(graph));
    let mut stems = vec![None; graph.nodes.len()];
    for (c, w) in graph.nodes.windows(3).enumerate() {
        let OpKind::Conv2d { spec, in_hw, .. } = &w[0].op else { continue };
        if ops::patch_stem::is_patch_embedding(&conv_geom(spec, *in_hw, 1))
            && !needed[w[0].inputs[0].0]
            && matches!(w[1].op, OpKind::Reshape)
            && sole_first_reader(graph, &readers, &w[0], &w[1])
            && sole_first_reader(graph, &readers, &w[1], &w[2])
            && tokens[c + 2].is_some()
        {
            stems[c] = Some(c + 2);
        }
    }
    stems
}

/// The select / layer-norm pairs whose backward the norm finishes ([`Activations::select_after_norm`]).
pub fn select_after_norm(graph: &Graph) -> Vec<Option<usize>> {
    let readers = reader_counts(graph);
    let mut pairs = vec![None; graph.nodes.len()];
    for (s, node) in graph.nodes.iter().enumerate() {
        let v = node.inputs[0];
        if !matches!(node.op, OpKind::SelectToken { .. }) || v.0 == 0 || v == graph.output || readers[v.0] != 2 {
            continue;
        }
        let norm =
            graph.nodes[..s].iter().position(|n| n.inputs.contains(&v) && matches!(n.op, OpKind::LayerNorm { .. }));
        if let Some(l) = norm {
            (pairs[s], pairs[l]) = (Some(l), Some(s));
        }
    }
    pairs
}

/// Adds the gradient rows of the class-token select `s` (its output gradient) onto its input's gradient,
/// which its layer norm has just written ([`Activations::select_after_norm`]).
fn add_select_rows(graph: &Graph, dvals: &mut [Vec<f32>], grad_slot: &[usize], s: usize, n: usize) {
    let OpKind::SelectToken { index } = graph.nodes[s].op else { unreachable!("select_after_norm pairs a select") };
    let (v, o) = (graph.nodes[s].inputs[0], graph.nodes[s].output);
    let (d, per) = (graph.values[o.0].numel(), graph.values[v.0].numel());
    let [dx, dy] = dvals.get_disjoint_mut([v.0, grad_slot[o.0]]).expect("a select's input and output differ");
    for (xs, ys) in dx[..n * per].chunks_exact_mut(per).zip(dy[..n * d].chunks_exact(d)) {
        ops::add::add_assign(&mut xs[index * d..(index + 1) * d], ys);
    }
}

/// The nodes a convolution runs fused ([`Activations::conv_pool`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvPool {
    /// The max pool over the convolution's output (node `conv + 1`).
    pub pool: usize,
    /// The ReLU over the pool's output (node `conv + 2`), when fused too.
    pub relu: Option<usize>,
}

/// The convolution + max pool (+ ReLU) groups the executor fuses: `groups[conv] = Some(..)` when node
/// `conv + 1` is a max pool over `conv`'s output, nothing else reads that output, and it is not the graph's
/// output; the ReLU at `conv + 2` joins under the same conditions on the pool's output.
pub fn conv_pool_pairs(graph: &Graph) -> Vec<Option<ConvPool>> {
    let readers = reader_counts(graph);
    // `next` reads `prev`'s output and nothing else does.
    let sole_reader = |prev: &Node, next: &Node| sole_first_reader(graph, &readers, prev, next);
    let mut groups = vec![None; graph.nodes.len()];
    for (i, w) in graph.nodes.windows(2).enumerate() {
        let (conv, pool) = (&w[0], &w[1]);
        if matches!(conv.op, OpKind::Conv2d { .. })
            && matches!(pool.op, OpKind::MaxPool2d { .. })
            && sole_reader(conv, pool)
        {
            let relu = graph.nodes.get(i + 2).filter(|r| {
                matches!(r.op, OpKind::Activation(ecstrain_components::Activation::Relu)) && sole_reader(pool, r)
            });
            groups[i] = Some(ConvPool { pool: i + 1, relu: relu.map(|_| i + 2) });
        }
    }
    groups
}

/// Whether node `idx` is run by a fused convolution before it (a pool or ReLU of a [`ConvPool`]).
fn absorbed(conv_pool: &[Option<ConvPool>], idx: usize) -> bool {
    let by = |back: usize| idx.checked_sub(back).and_then(|c| conv_pool[c]);
    by(1).is_some_and(|g| g.pool == idx) || by(2).is_some_and(|g| g.relu == Some(idx))
}

/// Length of one attention node's saved probabilities (and of its backward scratch) for `n` samples.
pub(crate) fn attention_len(heads: usize, tokens: usize, n: usize) -> usize {
    ops::attention::attention_att_len(n, heads, tokens)
}

impl Activations {
    /// Plans buffers for batches of up to `capacity` samples.
    pub fn plan(graph: &Graph, capacity: usize) -> Activations {
        let numel = |v: ValueId| graph.values[v.0].numel();
        // Only values some node writes get buffers: the input is read from the batch, and a value a fusion
        // rewrite left without a producer is never read.
        let mut produced = vec![false; graph.values.len()];
        graph.nodes.iter().for_each(|n| produced[n.output.0] = true);
        let sizes: Vec<usize> =
            graph.values.iter().enumerate().map(|(i, v)| if produced[i] { v.numel() * capacity } else { 0 }).collect();
        // A value read from another's buffer needs none of its own (its gradient still has one).
        let value_source = value_sources(graph);
        let value_sizes: Vec<usize> =
            sizes.iter().enumerate().map(|(i, &n)| if value_source[i] == i { n } else { 0 }).collect();
        let mut saved = vec![Vec::new(); graph.nodes.len()];
        let mut indices = vec![Vec::new(); graph.nodes.len()];
        let mut aux = vec![None; graph.nodes.len()];
        let mut ids = vec![Vec::new(); graph.nodes.len()];
        let mut scratch = 0;
        let conv_pool = conv_pool_pairs(graph);
        let (attention_pool, queries) = (attention_pools(graph), attention_query_rows(graph));
        for (idx, node) in graph.nodes.iter().enumerate() {
            match &node.op {
                OpKind::Conv2d { spec, in_hw, .. } if conv_pool[idx].is_some() => {
                    scratch = scratch.max(conv_geom(spec, *in_hw, capacity).maxpool_scratch_len())
                }
                OpKind::MaxPool2d { .. } => indices[idx] = vec![0; sizes[node.output.0]],
                // The second half's weight gradient of a row-split backward; for a fused activation, what its
                // backward reads (its derivative, or ReLU's input) is kept too.
                OpKind::Linear { rows, in_features, out_features, act, .. } => {
                    if act.is_some() {
                        saved[idx] = vec![0.0; sizes[node.output.0]];
                    }
                    let len =
                        ops::linear::linear_backward_split_scratch_len(capacity * rows, *in_features, *out_features);
                    scratch = scratch.max(len)
                }
                OpKind::Conv2d { spec, in_hw, .. } => {
                    let g = conv_geom(spec, *in_hw, capacity);
                    scratch = scratch.max(g.col_len());
                    if ops::patch_stem::is_patch_embedding(&g) {
                        scratch = scratch.max(ops::patch_stem::patch_stem_scratch_len(&g));
                    }
                }
                OpKind::BatchNorm2d { channels, .. } => saved[idx] = vec![0.0; 2 * channels],
                OpKind::LayerNorm { dim, .. } => saved[idx] = vec![0.0; 2 * capacity * numel(node.output) / dim],
                OpKind::Attention { heads, tokens, .. } => {
                    // Pooled, the same buffers hold its state instead (the unfused forward still needs them).
                    let pooled = attention_pool[idx]
                        .map_or(0, |l| pool_shape(graph, idx, l, queries[idx], capacity).state_len());
                    let len = attention_len(*heads, *tokens, capacity).max(pooled);
                    saved[idx] = vec![0.0; len];
                    scratch = scratch.max(len);
                }
                OpKind::Embedding { .. } => ids[idx] = vec![0; capacity * numel(node.inputs[0])],
                // The scale the forward used, for the straight-through backward.
                OpKind::FakeQuantize { .. } => saved[idx] = vec![0.0; 1],
                OpKind::VectorQuantize { codes, positions, .. } => {
                    indices[idx] = vec![0; capacity * positions + codes];
                    aux[idx] = Some(AuxStats::default());
                }
                _ => {}
            }
        }
        let largest = sizes.iter().copied().max().unwrap_or(0).max(capacity * numel(ValueId(0)));
        Activations {
            capacity,
            values: value_sizes.iter().map(|&n| vec![0.0; n]).collect(),
            grads: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            saved,
            indices,
            ids,
            aux,
            aux_weight: 1.0,
            scratch: vec![0.0; scratch],
            grad_tmp: vec![0.0; largest],
            written: vec![false; graph.values.len()],
            profile: None,
            conv_pool,
            attention_queries: queries,
            linear_lead: linear_lead_columns(graph),
            attention_pool,
            fused_forward: false,
            grad_needed: gradient_needed(graph),
            value_source,
            shares_grad: add_gradient_shares(graph),
            linear_residual: linear_residual_pairs(graph),
            residual_norm: residual_norms(graph),
            token_stem: token_stems(graph),
            patch_stem: patch_stems(graph),
            select_after_norm: select_after_norm(graph),
            grad_slot: (0..graph.values.len()).collect(),
        }
    }

    /// Bytes held by the plan (for the model summary).
    pub fn bytes(&self) -> usize {
        4 * (self.values.iter().map(Vec::len).sum::<usize>()
            + self.grads.iter().map(Vec::len).sum::<usize>()
            + self.saved.iter().map(Vec::len).sum::<usize>()
            + self.indices.iter().map(Vec::len).sum::<usize>()
            + 2 * self.ids.iter().map(Vec::len).sum::<usize>()
            + self.scratch.len()
            + self.grad_tmp.len())
    }

    /// The first `n` rows of value `v` from the last forward: the batch `input` for the model input (and
    /// reshapes of it), otherwise the buffer that holds the value ([`Self::value_source`]: a reshape's output
    /// lives in its input's buffer). Read values through this, not `values[v]`.
    pub fn value<'a>(&'a self, graph: &Graph, input: &'a [f32], v: ValueId, n: usize) -> &'a [f32] {
        value_rows(graph, &self.values, &self.value_source, input, v, n)
    }

    /// The valid part of the graph output for a batch of `n` rows.
    pub fn output<'a>(&'a self, graph: &Graph, n: usize) -> &'a [f32] {
        &self.values[graph.output.0][..n * graph.values[graph.output.0].numel()]
    }

    /// Sum of the auxiliary losses of the last forward (0 when the graph has none).
    pub fn aux_loss(&self) -> f64 {
        self.aux.iter().flatten().map(|a| a.loss).sum()
    }
}

/// Kernel geometry of a convolution node for a batch of `n`.
pub fn conv_geom(spec: &Conv2dSpec, in_hw: (usize, usize), n: usize) -> ops::conv2d::Conv2dGeom {
    ops::conv2d::Conv2dGeom {
        n,
        c: spec.in_channels,
        h: in_hw.0,
        w: in_hw.1,
        oc: spec.out_channels,
        kh: spec.kernel.0,
        kw: spec.kernel.1,
        stride: spec.stride,
        padding: spec.padding,
        dilation: spec.dilation,
        groups: spec.groups,
    }
}

/// Kernel geometry of a pooling node for a batch of `n`.
pub fn pool_geom(spec: &Pool2dSpec, in_chw: (usize, usize, usize), n: usize) -> ops::pool::Pool2dGeom {
    ops::pool::Pool2dGeom {
        n,
        c: in_chw.0,
        h: in_chw.1,
        w: in_chw.2,
        kh: spec.kernel.0,
        kw: spec.kernel.1,
        stride: spec.stride,
        padding: spec.padding,
    }
}

/// Seed of the dropout mask of the dropout node writing value `value` at micro-step `micro_step`: a pure
/// function so backward recomputes the forward mask and a resumed run draws the same masks. Keyed by the
/// output value, not the node's position, so graph rewrites that remove other nodes keep every mask.
pub fn dropout_seed(run_seed: u64, micro_step: u64, value: usize) -> u64 {
    Rng::derive(run_seed, &[0xD0, micro_step, value as u64]).next_u64()
}

/// The batch-including shape and permutation of a per-sample permute, on the stack.
pub(crate) fn batched_perm(n: usize, in_shape: &[usize], perm: &[usize]) -> ([usize; 8], [usize; 8], usize) {
    let r = in_shape.len() + 1;
    assert!(r <= 8, "permute of rank {} (at most 7 per-sample axes)", r - 1);
    let (mut shape, mut p) = ([0usize; 8], [0usize; 8]);
    shape[0] = n;
    shape[1..r].copy_from_slice(in_shape);
    for (a, &src) in perm.iter().enumerate() {
        p[a + 1] = src + 1;
    }
    (shape, p, r)
}

/// `(outer, inner)` of a concatenation input: rows before the axis (times the batch) and the contiguous run
/// it contributes to each row.
pub(crate) fn concat_runs(shape: &[usize], axis: usize, n: usize) -> (usize, usize) {
    (n * shape[..axis].iter().product::<usize>(), shape[axis..].iter().product())
}

/// The first `n` rows of value `v`: the batch input for value 0, its planned buffer otherwise.
fn value_rows<'a>(
    graph: &Graph,
    values: &'a [Vec<f32>],
    source: &[usize],
    input: &'a [f32],
    v: ValueId,
    n: usize,
) -> &'a [f32] {
    let len = n * graph.values[v.0].numel();
    match source[v.0] {
        0 => &input[..len],
        s => &values[s][..len],
    }
}

/// Computes chosen nodes in place of the float kernels during a forward pass: the int8 kernels of a
/// quantized model, for instance. The backward knows nothing of it, so an override is for inference (or must
/// leave the state the float node's backward reads).
pub trait NodeOverride: Send {
    /// Writes node `idx`'s output `y` (`[n, ...]`) from its first input `x` and returns true, or returns false
    /// to let the float kernel run.
    fn run(&mut self, idx: usize, node: &Node, x: &[f32], y: &mut [f32], n: usize) -> bool;
}

/// Runs the graph forward on `n` rows of `input` (`[n, numel(input)]`) with parameters `params`; in training
/// mode batch norms update their running statistics in `buffers`.
#[allow(clippy::too_many_arguments)] // the buffers of one pass; a struct would only rename them
pub fn forward(
    graph: &Graph,
    params: &[f32],
    buffers: &mut [f32],
    acts: &mut Activations,
    input: &[f32],
    n: usize,
    mode: Mode,
    seed: u64,
) {
    forward_with(graph, params, buffers, acts, input, n, mode, seed, None)
}

/// [`forward`] with the nodes `hook` claims computed by it.
#[allow(clippy::too_many_arguments)] // the buffers of one pass; a struct would only rename them
pub fn forward_with(
    graph: &Graph,
    params: &[f32],
    buffers: &mut [f32],
    acts: &mut Activations,
    input: &[f32],
    n: usize,
    mode: Mode,
    seed: u64,
    mut hook: Option<&mut dyn NodeOverride>,
) {
    assert!(n <= acts.capacity, "batch of {n} exceeds the planned capacity {}", acts.capacity);
    let cap = acts.capacity;
    let input = &input[..n * graph.values[0].numel()];
    // An override may claim a convolution, so its pool then reads the output the override wrote.
    let fuse = hook.is_none();
    acts.fused_forward = fuse;
    let Activations {
        values,
        saved,
        indices,
        ids,
        aux,
        scratch,
        profile,
        conv_pool,
        attention_queries,
        linear_lead,
        attention_pool,
        value_source,
        linear_residual,
        residual_norm,
        token_stem,
        patch_stem,
        ..
    } = acts;
    let numel = |v: ValueId| graph.values[v.0].numel();
    let p = |r: &ecstrain_components::ParamRef| &params[r.slice.range()];
    // Nodes before this index were run by a fused convolution.
    let mut skip_to = 0;
    // The node being timed and when it started: closed at the top of the next iteration (so every `continue`
    // is covered) and after the loop.
    let mut timing: Option<(usize, Instant)> = None;
    for (idx, node) in graph.nodes.iter().enumerate() {
        if let Some(prof) = profile.as_mut() {
            if let Some((i, t)) = timing.replace((idx, Instant::now())) {
                prof.add_forward(i, mode, t);
            }
        }
        if idx < skip_to {
            continue;
        }
        // A pooled attention's projection is run by the attention (next).
        if let (true, Some(a), OpKind::Linear { .. }) = (fuse, attention_pool[idx], &node.op) {
            if let Some(prof) = profile.as_mut() {
                prof.absorbed_by[idx] = Some(a);
            }
            continue;
        }
        // (Only while its token stem is planned: clearing that plan runs the nodes apart.)
        let patch = patch_stem[idx].and_then(|t| token_stem[t]);
        if let (true, Some(stem), OpKind::Conv2d { spec, in_hw, weight, bias, .. }) = (fuse, patch, &node.op) {
            let (token, param) = stem_params(graph, stem);
            let out_v = graph.nodes[stem.add].output;
            let mut out_buf = std::mem::take(&mut values[out_v.0]);
            let y = &mut out_buf[..n * numel(out_v)];
            let x = value_rows(graph, values, value_source, input, node.inputs[0], n);
            let g = conv_geom(spec, *in_hw, n);
            let s = &mut scratch[..ops::patch_stem::patch_stem_scratch_len(&g)];
            let b = bias.as_ref().map(p);
            ops::patch_stem::patch_stem_forward(y, x, p(weight), b, p(token), p(param), s, &g);
            values[out_v.0] = out_buf;
            if let Some(prof) = profile.as_mut() {
                prof.absorbed_by[idx + 1..=stem.add].iter_mut().for_each(|a| *a = Some(idx));
            }
            skip_to = stem.add + 1;
            continue;
        }
        if let (true, Some(group)) = (fuse, conv_pool[idx]) {
            let (OpKind::Conv2d { spec, in_hw, weight, bias, .. }, OpKind::MaxPool2d { spec: pspec, in_chw }) =
                (&node.op, &graph.nodes[group.pool].op)
            else {
                unreachable!("conv_pool pairs a convolution with a max pool")
            };
            // The group's last node's output: the pool's, or the ReLU's.
            let last = group.relu.unwrap_or(group.pool);
            let out_v = graph.nodes[last].output;
            let mut out_buf = std::mem::take(&mut values[out_v.0]);
            let y = &mut out_buf[..n * numel(out_v)];
            let x = value_rows(graph, values, value_source, input, node.inputs[0], n);
            let (g, pg) = (conv_geom(spec, *in_hw, n), pool_geom(pspec, *in_chw, n));
            let am = &mut indices[group.pool][..y.len()];
            let s = &mut scratch[..g.maxpool_scratch_len()];
            let (w, b, relu) = (p(weight), bias.as_ref().map(p), group.relu.is_some());
            ops::conv2d::conv2d_maxpool_forward(y, am, x, w, b, s, &g, &pg, relu);
            values[out_v.0] = out_buf;
            if let Some(prof) = profile.as_mut() {
                prof.absorbed_by[group.pool] = Some(idx);
                if let Some(r) = group.relu {
                    prof.absorbed_by[r] = Some(idx);
                }
            }
            skip_to = last + 1;
            continue;
        }
        // A value read from another's buffer (a reshape's output) needs no work.
        if value_source[node.output.0] != node.output.0 {
            continue;
        }
        if let (true, Some(stem), OpKind::Permute { in_shape, .. }) = (fuse, token_stem[idx], &node.op) {
            let (token, param) = stem_params(graph, stem);
            let out_v = graph.nodes[stem.add].output;
            let mut out_buf = std::mem::take(&mut values[out_v.0]);
            let y = &mut out_buf[..n * numel(out_v)];
            let x = value_rows(graph, values, value_source, input, node.inputs[0], n);
            ops::token_stem::token_stem_forward(y, x, p(token), p(param), in_shape[0], in_shape[1]);
            values[out_v.0] = out_buf;
            if let Some(prof) = profile.as_mut() {
                prof.absorbed_by[stem.prepend] = Some(idx);
                prof.absorbed_by[stem.add] = Some(idx);
            }
            skip_to = stem.add + 1;
            continue;
        }
        if let (true, Some(a), OpKind::Linear { rows, in_features, out_features, weight, bias, .. }) =
            (fuse, linear_residual[idx], &node.op)
        {
            // The add's output, written directly: residual + (x @ w^T + b).
            let add = &graph.nodes[a];
            let residual_v = if add.inputs[0] == node.output { add.inputs[1] } else { add.inputs[0] };
            let mut out_buf = std::mem::take(&mut values[add.output.0]);
            // The layer norm reading the sum, if fused: its output buffer is moved out too.
            let norm_node = residual_norm[idx];
            let mut ln_buf = norm_node.map_or_else(Vec::new, |l| std::mem::take(&mut values[graph.nodes[l].output.0]));
            let y = &mut out_buf[..n * numel(add.output)];
            let x = value_rows(graph, values, value_source, input, node.inputs[0], n);
            let r = value_rows(graph, values, value_source, input, residual_v, n);
            let (rows, c, oc) = (n * rows, *in_features, *out_features);
            let b = bias.as_ref().map(p);
            let mut last = a;
            match (norm_node, norm_node.map(|l| &graph.nodes[l].op)) {
                (Some(l), Some(OpKind::LayerNorm { eps, weight: ln_w, bias: ln_b, .. })) => {
                    // Each block of rows normalised right after its sum is written.
                    let ln_out = graph.nodes[l].output;
                    let half = saved[l].len() / 2;
                    let (sm, sr) = saved[l].split_at_mut(half);
                    let norm = ops::linear::NormOut {
                        out: &mut ln_buf[..n * numel(ln_out)],
                        save_mean: &mut sm[..rows],
                        save_rstd: &mut sr[..rows],
                        weight: ln_w.as_ref().map(p),
                        bias: ln_b.as_ref().map(p),
                        eps: *eps,
                    };
                    ops::linear_residual::linear_residual_norm_forward(y, norm, x, p(weight), b, r, rows, c, oc);
                    values[ln_out.0] = std::mem::take(&mut ln_buf);
                    last = l;
                }
                _ => {
                    ops::linear_residual::linear_residual_forward(y, x, p(weight), b, r, rows, c, oc);
                    if let Some(l) = norm_node {
                        values[graph.nodes[l].output.0] = ln_buf; // (not reached: the plan picks layer norms)
                    }
                }
            }
            values[add.output.0] = out_buf;
            if let Some(prof) = profile.as_mut() {
                prof.absorbed_by[a] = Some(idx);
                prof.absorbed_by[last] = Some(idx);
            }
            skip_to = last + 1;
            continue;
        }
        // The output buffer is moved out while the node runs, so the inputs can be borrowed from `values`.
        let mut out_buf = std::mem::take(&mut values[node.output.0]);
        let y = &mut out_buf[..n * numel(node.output)];
        let read = |i: usize| value_rows(graph, values, value_source, input, node.inputs[i], n);
        let x = read(0);
        if let Some(h) = hook.as_deref_mut() {
            if h.run(idx, node, x, y, n) {
                values[node.output.0] = out_buf;
                continue;
            }
        }
        match &node.op {
            OpKind::Linear { rows, in_features, out_features, weight, bias, act } => {
                let b = bias.as_ref().map(p);
                let (rows, c, oc) = (n * rows, *in_features, *out_features);
                match (act, linear_lead[idx].filter(|_| fuse)) {
                    (None, Some(lead)) => ops::linear_lead::linear_lead_forward(y, x, p(weight), b, lead, rows, c, oc),
                    (None, None) => ops::linear::linear_forward(y, x, p(weight), b, rows, c, oc),
                    (Some(a), _) => {
                        // Only a training forward is followed by a backward that reads what is kept.
                        let keep = (mode == Mode::Train).then(|| &mut saved[idx][..y.len()]);
                        ops::linear_act::linear_act_forward(y, keep, x, p(weight), b, *a, rows, c, oc)
                    }
                }
            }
            OpKind::Conv2d { spec, in_hw, weight, bias, .. } => {
                let g = conv_geom(spec, *in_hw, n);
                let b = bias.as_ref().map(p);
                ops::conv2d::conv2d_forward(y, x, p(weight), b, &mut scratch[..g.col_len()], &g);
            }
            OpKind::MaxPool2d { spec, in_chw } => {
                let am = &mut indices[idx][..y.len()];
                ops::pool::max_pool2d_forward(y, am, x, &pool_geom(spec, *in_chw, n))
            }
            OpKind::AvgPool2d { spec, in_chw } => ops::pool::avg_pool2d_forward(y, x, &pool_geom(spec, *in_chw, n)),
            OpKind::GlobalAvgPool { in_chw: (c, h, w) } => ops::pool::global_avg_pool_forward(y, x, n, *c, *h, *w),
            OpKind::AdaptiveAvgPool2d { in_chw: (c, h, w), out_hw: (oh, ow) } => {
                ops::pool::adaptive_avg_pool2d_forward(y, x, n, *c, *h, *w, *oh, *ow)
            }
            OpKind::Reshape => y.copy_from_slice(x),
            OpKind::Activation(act) => ops::activation::activation_forward(*act, y, x),
            OpKind::Dropout { p: prob } => {
                if mode == Mode::Train && *prob > 0.0 {
                    ops::dropout::dropout_forward(y, x, *prob, dropout_seed(seed, 0, node.output.0));
                } else {
                    y.copy_from_slice(x);
                }
            }
            OpKind::BatchNorm2d { channels: c, hw, eps, momentum, weight, bias, stats } => {
                let (w, b) = (weight.as_ref().map(p), bias.as_ref().map(p));
                let (rm, rest) = buffers[stats.range()].split_at_mut(*c);
                let (rv, tracked) = rest.split_at_mut(*c);
                if mode == Mode::Train {
                    let (sm, si) = saved[idx].split_at_mut(*c);
                    ops::batch_norm::batch_norm_forward_train(y, sm, si, rm, rv, x, w, b, n, *c, *hw, *eps, *momentum);
                    tracked[0] += 1.0;
                } else {
                    ops::batch_norm::batch_norm_forward_eval(y, x, rm, rv, w, b, n, *c, *hw, *eps);
                }
            }
            OpKind::LayerNorm { dim, eps, weight, bias } => {
                let rows = y.len() / dim;
                let half = saved[idx].len() / 2;
                let (sm, sr) = saved[idx].split_at_mut(half);
                let (w, b) = (weight.as_ref().map(p), bias.as_ref().map(p));
                ops::layer_norm::layer_norm_forward(y, &mut sm[..rows], &mut sr[..rows], x, w, b, rows, *dim, *eps);
            }
            OpKind::Softmax { dim } => ops::softmax::softmax_forward(y, x, y.len() / dim, *dim),
            OpKind::Embedding { vocab, dim, weight } => {
                let ids = &mut ids[idx][..x.len()];
                ops::embedding::ids_from_f32(ids, x);
                // Ids from data were checked against the vocabulary when the run was assembled; ids computed
                // inside a graph would be a model-building error.
                ops::embedding::embedding_forward(y, ids, p(weight), *vocab, *dim)
                    .expect("embedding ids are checked when the run is assembled");
            }
            OpKind::Add => ops::add::add_forward(y, x, read(1)),
            OpKind::Concat { axis } => {
                let (rows, _) = concat_runs(&graph.values[node.output.0].shape, *axis, n);
                let row_len = y.len() / rows.max(1);
                let mut at = 0;
                for (i, &v) in node.inputs.iter().enumerate() {
                    let (_, run) = concat_runs(&graph.values[v.0].shape, *axis, n);
                    let src = read(i);
                    for r in 0..rows {
                        y[r * row_len + at..r * row_len + at + run].copy_from_slice(&src[r * run..(r + 1) * run]);
                    }
                    at += run;
                }
            }
            OpKind::Attention { heads, tokens: t, dim: d, causal } => {
                // Heads are read straight out of the fused [T, 3, H, D/H] projection and written merged.
                if let Some(l) = attention_pool[idx].filter(|_| fuse) {
                    // Through the projection's weights, from its input.
                    let OpKind::Linear { weight, bias, .. } = &graph.nodes[l].op else {
                        unreachable!("attention_pools pairs an attention with a linear layer")
                    };
                    let s = pool_shape(graph, idx, l, attention_queries[idx], n);
                    let z = value_rows(graph, values, value_source, input, graph.nodes[l].inputs[0], n);
                    let st = &mut saved[idx][..s.state_len()];
                    ops::attention_pool::attention_pool_forward(y, st, z, p(weight), bias.as_ref().map(p), s);
                } else {
                    let att = &mut saved[idx][..attention_len(*heads, *t, n)];
                    let q = if fuse { attention_queries[idx] } else { *t };
                    ops::attention::attention_fused_forward_queries(y, att, x, n, *heads, *t, d / heads, *causal, q);
                }
            }
            OpKind::Permute { in_shape, perm } => {
                let (shape, perm, r) = batched_perm(n, in_shape, perm);
                ops::permute::permute(y, x, &shape[..r], &perm[..r]).expect("shapes checked at build");
            }
            OpKind::PrependToken { token } => {
                let (tok, d) = (p(token), token.slice.len);
                let per_in = numel(node.inputs[0]);
                for (ys, xs) in y.chunks_exact_mut(per_in + d).zip(x.chunks_exact(per_in)) {
                    ys[..d].copy_from_slice(tok);
                    ys[d..].copy_from_slice(xs);
                }
            }
            OpKind::AddParam { param } => {
                let add = p(param);
                for (ys, xs) in y.chunks_exact_mut(add.len()).zip(x.chunks_exact(add.len())) {
                    ops::add::add_forward(ys, xs, add);
                }
            }
            OpKind::TokenMean => {
                let d = numel(node.output);
                let t = numel(node.inputs[0]) / d;
                // f64 accumulation: the mean of a few hundred tokens stays exact to f32 rounding.
                ops::token_mean::token_mean_forward(y, x, n, t, d);
            }
            OpKind::SelectToken { index } => {
                let d = numel(node.output);
                let per_in = numel(node.inputs[0]);
                for (ys, xs) in y.chunks_exact_mut(d).zip(x.chunks_exact(per_in)) {
                    ys.copy_from_slice(&xs[index * d..(index + 1) * d]);
                }
            }
            OpKind::Upsample { factor: (fh, fw), in_chw: (c, h, w) } => {
                ops::upsample::upsample_nearest2d_forward(y, x, n, *c, *h, *w, *fh, *fw)
            }
            OpKind::FakeQuantize { amax, averaging } => {
                let a = &mut buffers[amax.range()][0];
                if mode == Mode::Train {
                    let batch = ecstrain_kernels::quant::qparams::amax(x);
                    // The first batch sets the range; later ones move it by the averaging constant.
                    *a = if *a == 0.0 { batch } else { *a + (*averaging as f32) * (batch - *a) };
                }
                let scale = ecstrain_kernels::quant::qparams::scale_from_amax(*a);
                saved[idx][0] = scale;
                ecstrain_kernels::quant::fake_quant::fake_quant_per_tensor_forward(y, x, scale);
            }
            OpKind::VectorQuantize { codebook, codes, dim, positions, beta } => {
                let (ind, counts) = indices[idx].split_at_mut(cap * positions);
                let stats = ops::vector_quantize::vq_forward(
                    y,
                    &mut ind[..n * positions],
                    counts,
                    x,
                    p(codebook),
                    n,
                    *dim,
                    *positions,
                    *codes,
                );
                aux[idx] =
                    Some(AuxStats { loss: (1.0 + beta) * stats.mse as f64, perplexity: stats.perplexity as f64 });
            }
        }
        values[node.output.0] = out_buf;
    }
    if let Some(prof) = profile.as_mut() {
        if let Some((i, t)) = timing {
            prof.add_forward(i, mode, t);
        }
        prof.end_forward(mode);
    }
}

/// Two disjoint mutable parameter-gradient slices (a weight and its bias) from one arena.
fn weight_and_bias(
    grads: &mut [f32],
    w: std::ops::Range<usize>,
    b: Option<std::ops::Range<usize>>,
) -> (&mut [f32], Option<&mut [f32]>) {
    match b {
        None => (&mut grads[w], None),
        Some(b) if b.start >= w.end => {
            let (lo, hi) = grads.split_at_mut(b.start);
            (&mut lo[w], Some(&mut hi[..b.len()]))
        }
        Some(b) => {
            assert!(w.start >= b.end, "weight and bias slices overlap");
            let (lo, hi) = grads.split_at_mut(w.start);
            (&mut hi[..w.len()], Some(&mut lo[b]))
        }
    }
}

/// Gradient slices of two optional parameters (a norm's weight and bias), either of which may be absent.
fn optional_pair<'a>(
    grads: &'a mut [f32],
    w: Option<&ecstrain_components::ParamRef>,
    b: Option<&ecstrain_components::ParamRef>,
) -> (Option<&'a mut [f32]>, Option<&'a mut [f32]>) {
    match (w, b) {
        (Some(w), b) => {
            let (dw, db) = weight_and_bias(grads, w.slice.range(), b.map(|b| b.slice.range()));
            (Some(dw), db)
        }
        (None, Some(b)) => (None, Some(&mut grads[b.slice.range()])),
        (None, None) => (None, None),
    }
}

/// Where an input's gradient goes during the backward: straight into its buffer the first time, through
/// the staging buffer and an add when another consumer has already written it.
struct GradSink<'a> {
    dvals: &'a mut [Vec<f32>],
    tmp: &'a mut [f32],
    written: &'a mut [bool],
    /// [`Activations::grad_needed`].
    needed: &'a [bool],
}

impl GradSink<'_> {
    /// Calls `f` with the gradient slice of value `v` (`len` elements), or `None` for the model input and
    /// values whose gradient is not needed.
    fn with(&mut self, v: ValueId, len: usize, f: impl FnOnce(Option<&mut [f32]>)) {
        if v.0 == 0 || !self.needed[v.0] {
            f(None);
        } else if self.written[v.0] {
            f(Some(&mut self.tmp[..len]));
            ops::add::add_assign(&mut self.dvals[v.0][..len], &self.tmp[..len]);
        } else {
            f(Some(&mut self.dvals[v.0][..len]));
            self.written[v.0] = true;
        }
    }

    /// Like [`Self::with`] for kernels that always write an input gradient: the model input's goes to the
    /// staging buffer and is dropped.
    fn with_required(&mut self, v: ValueId, len: usize, f: impl FnOnce(&mut [f32])) {
        if v.0 == 0 || !self.needed[v.0] {
            f(&mut self.tmp[..len]);
        } else {
            self.with(v, len, |dx| f(dx.expect("not the input")));
        }
    }

    /// Like [`Self::with_required`] for kernels that add their input gradient onto the buffer themselves when
    /// asked (`f`'s flag): when another reader's part arrived first, no staging buffer and no separate add
    /// pass. The sum is the same as staging's: `existing + term`.
    fn with_accumulating(&mut self, v: ValueId, len: usize, f: impl FnOnce(&mut [f32], bool)) {
        if v.0 == 0 || !self.needed[v.0] {
            f(&mut self.tmp[..len], false);
        } else {
            f(&mut self.dvals[v.0][..len], self.written[v.0]);
            self.written[v.0] = true;
        }
    }

    /// Routes the node's whole output gradient `dy_buf` (first `len` elements valid) unchanged into `v`'s
    /// gradient when `v` has not been written yet and its buffer has the same size: the buffers are swapped
    /// instead of copied (the output's gradient is read by no other node). Otherwise a copy or an add.
    fn pass_through_owned(&mut self, v: ValueId, dy_buf: &mut Vec<f32>, len: usize) {
        if v.0 != 0 && self.needed[v.0] && !self.written[v.0] && self.dvals[v.0].len() == dy_buf.len() {
            std::mem::swap(&mut self.dvals[v.0], dy_buf);
            self.written[v.0] = true;
        } else {
            self.pass_through(v, &dy_buf[..len]);
        }
    }

    /// Routes `dy` unchanged into `v`'s gradient (an identity's backward): a copy or an add, no staging.
    fn pass_through(&mut self, v: ValueId, dy: &[f32]) {
        if v.0 == 0 || !self.needed[v.0] {
        } else if self.written[v.0] {
            ops::add::add_assign(&mut self.dvals[v.0][..dy.len()], dy);
        } else {
            self.dvals[v.0][..dy.len()].copy_from_slice(dy);
            self.written[v.0] = true;
        }
    }
}

/// Runs the graph backward for `n` rows. The caller (the task's loss system) has written the gradient of the
/// loss with respect to the output into `acts.grads[graph.output]`. Parameter gradients accumulate into `grads`.
/// `seed` must be the one given to [`forward`] for the same micro-batch.
#[allow(clippy::too_many_arguments)] // the buffers of one pass; a struct would only rename them
pub fn backward(
    graph: &Graph,
    params: &[f32],
    grads: &mut [f32],
    acts: &mut Activations,
    input: &[f32],
    n: usize,
    mode: Mode,
    seed: u64,
) {
    backward_releasing(graph, params, grads, acts, input, n, mode, seed, None);
}

/// Per node, the end of the gradient-arena prefix that the backward may still write once it reaches that node:
/// the largest end offset of the parameters of nodes `0..=idx` (the backward visits nodes in reverse). Everything
/// past it is final. The arena is laid out in graph order, so the cuts fall node by node from the end.
pub fn gradient_cuts(graph: &Graph) -> Vec<usize> {
    let mut end = 0;
    graph
        .nodes
        .iter()
        .map(|node| {
            end = node.op.params().iter().map(|p| p.slice.offset + p.slice.len).fold(end, usize::max);
            end
        })
        .collect()
}

/// Hands each finished part of the gradient arena to a consumer while the backward goes on (the data-parallel
/// all-reduce overlapped with the backward, [`crate::parallel::overlap`]).
pub struct Release<'c, 'g> {
    /// [`gradient_cuts`] of the graph.
    pub cuts: &'c [usize],
    /// Called with `grads[cut..previous cut]` as soon as no node left to visit writes there: the pieces come
    /// from the end of the arena down, each right below the last, and together cover it; the last one, after
    /// the final node, starts at 0. The backward never touches a piece again.
    pub on_ready: &'c mut dyn FnMut(&'g mut [f32]),
}

/// Splits `grads[cut..]` off the part the backward still writes and hands it to `release`.
fn release_from<'g>(grads: &mut &'g mut [f32], cut: usize, release: &mut Release<'_, 'g>) {
    if cut < grads.len() {
        let (head, tail) = std::mem::take(grads).split_at_mut(cut);
        *grads = head;
        (release.on_ready)(tail);
    }
}

/// [`backward`], handing each part of the gradient arena to `release` as soon as it is final (see [`Release`]).
/// Only the order in which the gradients are handed out differs: the values are [`backward`]'s.
#[allow(clippy::too_many_arguments)] // the buffers of one pass; a struct would only rename them
pub fn backward_releasing<'g>(
    graph: &Graph,
    params: &[f32],
    mut grads: &'g mut [f32],
    acts: &mut Activations,
    input: &[f32],
    n: usize,
    mode: Mode,
    seed: u64,
    mut release: Option<Release<'_, 'g>>,
) {
    if let Some(r) = &release {
        assert_eq!(r.cuts.len(), graph.nodes.len(), "backward_releasing: one gradient cut per node");
    }
    let aux_weight = acts.aux_weight;
    let fused = acts.fused_forward;
    let Activations {
        values,
        grads: dvals,
        saved,
        indices,
        ids,
        scratch,
        grad_tmp,
        written,
        profile,
        conv_pool,
        attention_queries,
        linear_lead,
        attention_pool,
        grad_needed,
        value_source,
        shares_grad,
        grad_slot,
        token_stem,
        patch_stem,
        select_after_norm,
        ..
    } = acts;
    let input = &input[..n * graph.values[0].numel()];
    let numel = |v: ValueId| graph.values[v.0].numel();
    let p = |r: &ecstrain_components::ParamRef| &params[r.slice.range()];
    written.fill(false);
    grad_slot.iter_mut().enumerate().for_each(|(v, s)| *s = v);
    let mut timing: Option<(usize, Instant)> = None;
    for (idx, node) in graph.nodes.iter().enumerate().rev() {
        if let Some(r) = release.as_mut() {
            // Nodes past idx are done: what only they write is final.
            release_from(&mut grads, r.cuts[idx], r);
        }
        if let Some(prof) = profile.as_mut() {
            if let Some((i, t)) = timing.replace((idx, Instant::now())) {
                prof.add_backward(i, t);
            }
        }
        if !grad_needed[node.output.0] {
            // Computed from the input alone: no parameter upstream needs this node's input gradients.
            continue;
        }
        // A token stem's backward runs whole at its parameter add, the first of its nodes the backward visits
        // (the released gradient pieces must not reach the embedding before it is written); its prepend and
        // transpose are then done.
        let stem_at = |back: usize| idx.checked_sub(back).and_then(|t| token_stem[t].map(|s| (t, s)));
        if stem_at(0).is_some() || stem_at(1).is_some_and(|(_, s)| s.prepend == idx) {
            continue;
        }
        // A fused patch embedding's reshape and convolution are done by its stem's backward.
        let patch_at = |back: usize| idx.checked_sub(back).and_then(|c| patch_stem[c]).and_then(|t| token_stem[t]);
        if fused && (patch_at(0).is_some() || patch_at(1).is_some()) {
            continue;
        }
        if let Some((t, stem)) = stem_at(2).filter(|(_, s)| s.add == idx) {
            let (OpKind::Permute { in_shape, .. }, OpKind::PrependToken { token }, OpKind::AddParam { param }) =
                (&graph.nodes[t].op, &graph.nodes[stem.prepend].op, &node.op)
            else {
                unreachable!("token_stems pairs a transpose with a prepend and a parameter add")
            };
            let dy_slot = grad_slot[node.output.0];
            let dy_buf = std::mem::take(&mut dvals[dy_slot]);
            let dy = &dy_buf[..n * numel(node.output)];
            if let (true, Some(c)) = (fused, t.checked_sub(2).filter(|&c| patch_stem[c] == Some(t))) {
                let OpKind::Conv2d { spec, in_hw, weight, bias, .. } = &graph.nodes[c].op else {
                    unreachable!("patch_stems starts at a convolution")
                };
                let g = conv_geom(spec, *in_hw, n);
                let x = value_rows(graph, values, value_source, input, graph.nodes[c].inputs[0], n);
                let s = &mut scratch[..ops::patch_stem::patch_stem_scratch_len(&g)];
                let bias = bias.map(|b| b.slice.range());
                let ranges =
                    [weight.slice.range(), token.slice.range(), param.slice.range(), bias.clone().unwrap_or(0..0)];
                let [dw, dcls, dpos, db] = grads.get_disjoint_mut(ranges).expect("parameters own disjoint slices");
                let db = bias.map(|_| db);
                ops::patch_stem::patch_stem_backward(dw, db, dcls, dpos, dy, x, s, &g);
                dvals[dy_slot] = dy_buf;
                continue;
            }
            let xv = graph.nodes[t].inputs[0];
            let (token, param) = (token.slice.range(), param.slice.range());
            GradSink { dvals, tmp: grad_tmp, written, needed: grad_needed }.with(xv, n * numel(xv), |dx| {
                // The two parameters are different entities, so their slices do not overlap.
                let (dcls, dpos) = if token.start < param.start {
                    let (lo, hi) = grads.split_at_mut(param.start);
                    (&mut lo[token], &mut hi[..param.len()])
                } else {
                    let (lo, hi) = grads.split_at_mut(token.start);
                    (&mut hi[..token.len()], &mut lo[param])
                };
                ops::token_stem::token_stem_backward(dx, dcls, dpos, dy, in_shape[0], in_shape[1]);
            });
            dvals[dy_slot] = dy_buf;
            continue;
        }
        if fused {
            // A fused group's pool and ReLU are done by its convolution (visited after them).
            if absorbed(conv_pool, idx) {
                continue;
            }
            if let Some(group) = conv_pool[idx] {
                let (OpKind::Conv2d { spec, in_hw, weight, bias, .. }, OpKind::MaxPool2d { spec: pspec, in_chw }) =
                    (&node.op, &graph.nodes[group.pool].op)
                else {
                    unreachable!("conv_pool pairs a convolution with a max pool")
                };
                let out_v = graph.nodes[group.relu.unwrap_or(group.pool)].output;
                let dy_slot = grad_slot[out_v.0];
                let dy_buf = std::mem::take(&mut dvals[dy_slot]);
                let dy = &dy_buf[..n * numel(out_v)];
                // With a ReLU, its output masks the gradient (as relu_backward, from the output: y > 0 iff x > 0).
                let relu_out = group.relu.map(|_| &values[out_v.0][..dy.len()]);
                let (xv, x) = (node.inputs[0], value_rows(graph, values, value_source, input, node.inputs[0], n));
                let (g, pg) = (conv_geom(spec, *in_hw, n), pool_geom(pspec, *in_chw, n));
                let am = &indices[group.pool][..dy.len()];
                GradSink { dvals, tmp: grad_tmp, written, needed: grad_needed }.with(xv, x.len(), |dx| {
                    let (dw, db) = weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()));
                    let s = &mut scratch[..g.maxpool_scratch_len()];
                    ops::conv2d::conv2d_maxpool_backward(dx, dw, db, dy, am, relu_out, x, p(weight), s, &g, &pg);
                });
                dvals[dy_slot] = dy_buf;
                continue;
            }
        }
        if let (true, Some(l)) = (fused, attention_pool[idx]) {
            let OpKind::Linear { weight, bias, .. } = &graph.nodes[l].op else {
                // The projection: its gradients were computed by the attention (visited before it).
                continue;
            };
            let s = pool_shape(graph, idx, l, attention_queries[idx], n);
            let dy_slot = grad_slot[node.output.0];
            let dy_buf = std::mem::take(&mut dvals[dy_slot]);
            let dy = &dy_buf[..n * numel(node.output)];
            let zv = graph.nodes[l].inputs[0];
            let z = value_rows(graph, values, value_source, input, zv, n);
            GradSink { dvals, tmp: grad_tmp, written, needed: grad_needed }.with(zv, z.len(), |dz| {
                let (dw, db) = weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()));
                let (st, sc) = (&saved[idx][..s.state_len()], &mut scratch[..s.state_len()]);
                ops::attention_pool::attention_pool_backward(
                    dz,
                    dw,
                    db,
                    dy,
                    z,
                    p(weight),
                    bias.as_ref().map(p),
                    st,
                    sc,
                    s,
                );
            });
            dvals[dy_slot] = dy_buf;
            continue;
        }
        // A select whose layer norm adds its rows (visited later).
        if matches!(node.op, OpKind::SelectToken { .. }) && select_after_norm[idx].is_some() {
            continue;
        }
        // A value whose gradient an add shared ([`add_gradient_shares`]) reads it from that add's first input.
        let dy_slot = grad_slot[node.output.0];
        let mut dy_buf = std::mem::take(&mut dvals[dy_slot]);
        let out_len = n * numel(node.output);
        if shares_grad[idx] {
            let (x0, x1) = (node.inputs[0], node.inputs[1]);
            if grad_needed[x0.0] && !written[x0.0] && dvals[x0.0].len() == dy_buf.len() {
                // Both inputs' gradients are dy: move it into x0's buffer and point x1 at it, no copy.
                std::mem::swap(&mut dvals[x0.0], &mut dy_buf);
                written[x0.0] = true;
                grad_slot[x1.0] = x0.0;
                written[x1.0] = true;
                dvals[dy_slot] = dy_buf;
                continue;
            }
        }
        // Identity backwards (reshape; the second input of an add; the input of a parameter add) can hand the
        // buffer itself on: the output gradient is read by no other node.
        if let Some(v) = match &node.op {
            OpKind::Reshape => Some(node.inputs[0]),
            OpKind::Add => {
                let mut sink = GradSink { dvals, tmp: grad_tmp, written, needed: grad_needed };
                sink.pass_through(node.inputs[0], &dy_buf[..out_len]);
                Some(node.inputs[1])
            }
            OpKind::AddParam { param } => {
                let dp = &mut grads[param.slice.range()];
                for ys in dy_buf[..out_len].chunks_exact(param.slice.len) {
                    ops::add::add_assign(dp, ys);
                }
                Some(node.inputs[0])
            }
            _ => None,
        } {
            GradSink { dvals, tmp: grad_tmp, written, needed: grad_needed }.pass_through_owned(v, &mut dy_buf, out_len);
            dvals[dy_slot] = dy_buf;
            continue;
        }
        if let OpKind::Linear { rows, in_features, out_features, weight, bias, act: Some(a) } = &node.op {
            // The output gradient is read by no other node (its readers ran before this one in the backward),
            // so the fused kernel turns it into the pre-activation gradient in place.
            let (xv, x) = (node.inputs[0], value_rows(graph, values, value_source, input, node.inputs[0], n));
            let (dy, kept) = (&mut dy_buf[..out_len], &saved[idx][..out_len]);
            GradSink { dvals, tmp: grad_tmp, written, needed: grad_needed }.with(xv, x.len(), |dx| {
                let (dw, db) = weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()));
                let (rows, c, oc) = (n * rows, *in_features, *out_features);
                let s = &mut scratch[..ops::linear_act::linear_act_backward_scratch_len(rows, c, oc)];
                ops::linear_act::linear_act_backward(dx, dw, db, dy, kept, x, p(weight), *a, s, rows, c, oc);
            });
            dvals[dy_slot] = dy_buf;
            continue;
        }
        let dy = &dy_buf[..out_len];
        let read = |i: usize| value_rows(graph, values, value_source, input, node.inputs[i], n);
        let (xv, x) = (node.inputs[0], read(0));
        let in_len = x.len();
        let mut sink = GradSink { dvals, tmp: grad_tmp, written, needed: grad_needed };
        match &node.op {
            OpKind::Linear { rows, in_features, out_features, weight, bias, act: None } => {
                sink.with(xv, in_len, |dx| {
                    let (dw, db) = weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()));
                    let (rows, c, oc) = (n * rows, *in_features, *out_features);
                    let s = &mut scratch[..ops::linear::linear_backward_split_scratch_len(rows, c, oc)];
                    // The outputs the forward computed (the attention reading them wrote 0 on the others).
                    if let Some(lead) = linear_lead[idx].filter(|_| fused) {
                        ops::linear_lead::linear_lead_backward(dx, dw, db, dy, x, p(weight), s, lead, rows, c, oc);
                        return;
                    }
                    ops::linear::linear_backward_split(dx, dw, db, dy, x, p(weight), s, rows, c, oc);
                })
            }
            OpKind::Linear { act: Some(_), .. } => unreachable!("handled before the match"),
            OpKind::Conv2d { spec, in_hw, weight, bias, .. } => sink.with(xv, in_len, |dx| {
                let g = conv_geom(spec, *in_hw, n);
                let (dw, db) = weight_and_bias(grads, weight.slice.range(), bias.map(|b| b.slice.range()));
                ops::conv2d::conv2d_backward(dx, dw, db, dy, x, p(weight), &mut scratch[..g.col_len()], &g);
            }),
            OpKind::MaxPool2d { spec, in_chw } => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    let am = &indices[idx][..dy.len()];
                    ops::pool::max_pool2d_backward(dx, dy, am, &pool_geom(spec, *in_chw, n));
                }
            }),
            OpKind::AvgPool2d { spec, in_chw } => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    ops::pool::avg_pool2d_backward(dx, dy, &pool_geom(spec, *in_chw, n));
                }
            }),
            OpKind::AdaptiveAvgPool2d { in_chw: (c, h, w), out_hw: (oh, ow) } => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    ops::pool::adaptive_avg_pool2d_backward(dx, dy, n, *c, *h, *w, *oh, *ow);
                }
            }),
            OpKind::GlobalAvgPool { in_chw: (c, h, w) } => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    ops::pool::global_avg_pool_backward(dx, dy, n, *c, *h, *w);
                }
            }),
            OpKind::Reshape | OpKind::Add | OpKind::AddParam { .. } => unreachable!("handled before the match"),
            OpKind::Embedding { vocab, dim, weight } => {
                // Ids are not differentiable: only the table gets a gradient.
                let ids = &ids[idx][..in_len];
                ops::embedding::embedding_backward(&mut grads[weight.slice.range()], dy, ids, *vocab, *dim);
            }
            OpKind::Softmax { dim } => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    // The backward reads the forward's output (the probabilities), as PyTorch's does.
                    let y = &values[node.output.0][..dy.len()];
                    ops::softmax::softmax_backward(dx, dy, y, dy.len() / dim, *dim);
                }
            }),
            OpKind::FakeQuantize { .. } => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    let scale = saved[idx][0];
                    ecstrain_kernels::quant::fake_quant::fake_quant_per_tensor_backward(dx, dy, x, scale);
                }
            }),
            OpKind::Activation(act) => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    ops::activation::activation_backward(*act, dx, dy, x);
                }
            }),
            OpKind::Dropout { p: prob } => {
                if mode == Mode::Train && *prob > 0.0 {
                    sink.with(xv, in_len, |dx| {
                        if let Some(dx) = dx {
                            ops::dropout::dropout_backward(dx, dy, *prob, dropout_seed(seed, 0, node.output.0));
                        }
                    })
                } else {
                    sink.pass_through(xv, dy)
                }
            }
            OpKind::BatchNorm2d { channels: c, hw, weight, bias, .. } => sink.with_required(xv, in_len, |dx| {
                let (sm, si) = saved[idx].split_at(*c);
                let (dw, db) = optional_pair(grads, weight.as_ref(), bias.as_ref());
                let w = weight.as_ref().map(p);
                ops::batch_norm::batch_norm_backward(dx, dw, db, dy, x, sm, si, w, n, *c, *hw);
            }),
            OpKind::LayerNorm { dim, weight, bias, .. } => sink.with_accumulating(xv, in_len, |dx, acc| {
                let rows = dy.len() / dim;
                let (sm, sr) = saved[idx].split_at(saved[idx].len() / 2);
                let (dw, db) = optional_pair(grads, weight.as_ref(), bias.as_ref());
                let (w, (sm, sr)) = (weight.as_ref().map(p), (&sm[..rows], &sr[..rows]));
                ops::layer_norm::layer_norm_backward_acc(dx, acc, dw, db, dy, x, sm, sr, w, rows, *dim);
            }),
            OpKind::Concat { axis } => {
                let (rows, _) = concat_runs(&graph.values[node.output.0].shape, *axis, n);
                let row_len = dy.len() / rows.max(1);
                let mut at = 0;
                for &v in &node.inputs {
                    let (_, run) = concat_runs(&graph.values[v.0].shape, *axis, n);
                    sink.with(v, rows * run, |dx| {
                        if let Some(dx) = dx {
                            for r in 0..rows {
                                dx[r * run..(r + 1) * run]
                                    .copy_from_slice(&dy[r * row_len + at..r * row_len + at + run]);
                            }
                        }
                    });
                    at += run;
                }
            }
            OpKind::Attention { heads, tokens: t, dim: d, causal } => sink.with_required(xv, in_len, |dx| {
                let len = attention_len(*heads, *t, n);
                let (att, ds) = (&saved[idx][..len], &mut scratch[..len]);
                // As many query rows as the forward computed (the output gradient is 0 on the others).
                let q = if fused { attention_queries[idx] } else { *t };
                let hs = d / heads;
                ops::attention::attention_fused_backward_queries(dx, dy, x, att, ds, n, *heads, *t, hs, *causal, q);
            }),
            OpKind::Permute { in_shape, perm } => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    let (shape, perm, r) = batched_perm(n, in_shape, perm);
                    ops::permute::permute_backward(dx, dy, &shape[..r], &perm[..r]).expect("shapes checked at build");
                }
            }),
            OpKind::PrependToken { token } => {
                let d = token.slice.len;
                let per_in = numel(xv);
                let dt = &mut grads[token.slice.range()];
                for ys in dy.chunks_exact(per_in + d) {
                    ops::add::add_assign(dt, &ys[..d]);
                }
                sink.with(xv, in_len, |dx| {
                    if let Some(dx) = dx {
                        for (ys, xs) in dy.chunks_exact(per_in + d).zip(dx.chunks_exact_mut(per_in)) {
                            xs.copy_from_slice(&ys[d..]);
                        }
                    }
                });
            }
            OpKind::TokenMean => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    let d = numel(node.output);
                    ops::token_mean::token_mean_backward(dx, dy, n, numel(xv) / d, d);
                }
            }),
            OpKind::SelectToken { index } => {
                // An attention that computed only its leading query rows reads only those rows of its output
                // gradient (`attention_queries`): the zeros past them would never be read.
                let producer = graph.nodes.iter().position(|n| n.output == xv);
                let rows_read = match producer.map(|i| (&graph.nodes[i].op, attention_queries[i])) {
                    Some((OpKind::Attention { .. }, q)) if fused => Some(q),
                    _ => None,
                };
                sink.with(xv, in_len, |dx| {
                    if let Some(dx) = dx {
                        let d = numel(node.output);
                        let read = rows_read.map_or(numel(xv), |q| (q * d).max((index + 1) * d).min(numel(xv)));
                        if read == numel(xv) {
                            // Every row is read: one fill over the whole buffer, across the pool (serial, it
                            // kept the other threads waiting 0.2 ms in W3's last block).
                            ops::par_fill(dx, 0.0);
                        }
                        for (ys, xs) in dy.chunks_exact(d).zip(dx.chunks_exact_mut(numel(xv))) {
                            if read < numel(xv) {
                                xs[..read].fill(0.0);
                            }
                            xs[index * d..(index + 1) * d].copy_from_slice(ys);
                        }
                    }
                })
            }
            OpKind::Upsample { factor: (fh, fw), in_chw: (c, h, w) } => sink.with(xv, in_len, |dx| {
                if let Some(dx) = dx {
                    ops::upsample::upsample_nearest2d_backward(dx, dy, n, *c, *h, *w, *fh, *fw);
                }
            }),
            OpKind::VectorQuantize { codebook, codes, dim, positions, beta } => sink.with_required(xv, in_len, |dx| {
                let ind = &indices[idx][..n * positions];
                ops::vector_quantize::vq_backward(
                    dx,
                    &mut grads[codebook.slice.range()],
                    dy,
                    x,
                    p(codebook),
                    ind,
                    n,
                    *dim,
                    *positions,
                    *codes,
                    *beta as f32,
                    aux_weight,
                );
            }),
        }
        dvals[dy_slot] = dy_buf;
        if let (OpKind::LayerNorm { .. }, Some(s)) = (&node.op, select_after_norm[idx]) {
            add_select_rows(graph, dvals, grad_slot, s, n);
        }
    }
    if let Some(prof) = profile.as_mut() {
        if let Some((i, t)) = timing {
            prof.add_backward(i, t);
        }
        prof.end_backward();
    }
    if let Some(r) = release.as_mut() {
        release_from(&mut grads, 0, r);
    }
}
