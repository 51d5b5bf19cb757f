//! `vit`: a Vision Transformer (Dosovitskiy et al. 2021) with pre-norm blocks: patch embedding by a strided
//! convolution, an optional class token, a learned position embedding, `depth` blocks of
//! `x + attn(norm1(x))`, `x + mlp(norm2(x))` (MLP: Linear -> GELU -> Linear), a final LayerNorm, then the class
//! token (`pool: cls`) or the token mean (`pool: mean`) into a linear head. The W3 benchmark network is the
//! `w3` preset (540,170 parameters).
//!
//! Parameter names follow timm's `VisionTransformer`: `patch_embed.proj`, `cls_token` `[1, 1, D]`,
//! `pos_embed` `[1, T, D]`, `blocks.i.norm1`, `blocks.i.attn.qkv`, `blocks.i.attn.proj`, `blocks.i.norm2`,
//! `blocks.i.mlp.fc1`, `blocks.i.mlp.fc2`, `norm`, `head`. Initialisation: PyTorch's layer defaults, the
//! class token zeros and the position embedding N(0, 0.02^2) (the W3 twin's choices); neither token nor
//! position embedding is weight-decayed (timm's `no_weight_decay`).

use serde::Deserialize;

use super::{parse_options, BuiltModel};
use crate::graph::{GraphBuilder, GraphError};
use ecstrain_components::{Activation, Conv2dSpec, ValueId};

/// Options of the `vit` model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VitOptions {
    /// Per-sample input shape `[C, H, W]` (flat data of the same size is viewed in it); default: the data's.
    #[serde(default)]
    pub input_shape: Option<Vec<usize>>,
    /// Square patch size; must divide H and W.
    #[serde(default = "default_patch")]
    pub patch: usize,
    /// Model width D.
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// Transformer blocks.
    #[serde(default = "default_depth")]
    pub depth: usize,
    /// Attention heads; must divide `dim`.
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// MLP hidden width as a multiple of `dim`.
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// `cls` (class token) or `mean` (average of the patch tokens).
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Output features (classes).
    pub output_size: usize,
    /// LayerNorm epsilon (PyTorch's default 1e-5; timm uses 1e-6).
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    /// Biases in the fused q/k/v projection.
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// Causal attention mask (each token sees only itself and earlier tokens).
    #[serde(default)]
    pub causal: bool,
    /// `gelu` (exact, default) or `gelu_tanh` in the MLP.
    #[serde(default = "default_activation")]
    pub activation: String,
    /// With `pool: cls`, run the last block after its attention on the class token alone: only that token
    /// reaches the head, so the other tokens' projection, MLP, norms and residual adds there (and in the final
    /// norm) are dead work; the executor then also computes that attention for the class token alone, through
    /// its q/k/v projection's weights (`ops::attention_pool`: no keys and values projected on every token).
    /// Same outputs and gradients up to float rounding (about 24% fewer FLOPs at W3: 8.4 GFLOP a step instead
    /// of 11.1); `false` computes every token, as a PyTorch module does.
    /// Ignored with `pool: mean`.
    #[serde(default = "default_true")]
    pub cls_only_last_block: bool,
}

fn default_patch() -> usize {
    4
}
fn default_dim() -> usize {
    128
}
fn default_depth() -> usize {
    4
}
fn default_heads() -> usize {
    4
}
fn default_mlp_ratio() -> f64 {
    2.0
}
fn default_pool() -> String {
    "cls".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_activation() -> String {
    "gelu".into()
}

/// Presets selectable with `model.type`.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "w3",
        r#"{"input_shape": [1, 28, 28], "patch": 4, "dim": 128, "depth": 4, "heads": 4, "mlp_ratio": 2.0, "output_size": 10}"#,
    ),
    (
        "digits",
        r#"{"input_shape": [1, 8, 8], "patch": 4, "dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2.0, "output_size": 10}"#,
    ),
];

/// One pre-norm block; returns its output. With `cls_only`, the attention still reads every token (the class
/// token's query attends to all keys and values), but only the class token's row goes on: the block returns
/// `[D]` instead of `[T, D]`.
fn block(
    g: &mut GraphBuilder,
    o: &VitOptions,
    i: usize,
    x: ValueId,
    act: Activation,
    cls_only: bool,
) -> Result<ValueId, GraphError> {
    let p = format!("blocks.{i}");
    let hidden = (o.dim as f64 * o.mlp_ratio).round() as usize;
    let h = g.layer_norm(&format!("{p}.norm1"), x, o.norm_eps, true)?;
    let h = g.linear(&format!("{p}.attn.qkv"), h, 3 * o.dim, o.qkv_bias)?;
    let mut h = g.attention(&format!("{p}.attn"), h, o.heads, o.causal)?;
    let mut x = x;
    if cls_only {
        h = g.select_token(&format!("{p}.attn.cls"), h, 0)?;
        x = g.select_token(&format!("{p}.cls"), x, 0)?;
    }
    let h = g.linear(&format!("{p}.attn.proj"), h, o.dim, true)?;
    let x = g.add(&format!("{p}.add1"), x, h)?;
    let h = g.layer_norm(&format!("{p}.norm2"), x, o.norm_eps, true)?;
    let h = g.linear(&format!("{p}.mlp.fc1"), h, hidden, true)?;
    let h = g.activation(&format!("{p}.mlp.act"), h, act);
    let h = g.linear(&format!("{p}.mlp.fc2"), h, o.dim, true)?;
    g.add(&format!("{p}.add2"), x, h)
}

/// Builds the ViT graph for samples of `data_shape`.
pub fn build(options: &serde_json::Value, data_shape: &[usize]) -> Result<BuiltModel, String> {
    let o: VitOptions = parse_options("model", options)?;
    let cls = match o.pool.as_str() {
        "cls" => true,
        "mean" => false,
        other => return Err(format!("model.pool: unknown pooling `{other}`; valid choices: cls, mean")),
    };
    let act = super::parse_activation(&o.activation)?;
    if o.patch == 0 || o.dim == 0 || o.depth == 0 || o.heads == 0 || o.output_size == 0 {
        return Err("model: patch, dim, depth, heads and output_size must all be at least 1".into());
    }
    if !o.dim.is_multiple_of(o.heads) {
        return Err(format!("model.heads ({}) must divide model.dim ({})", o.heads, o.dim));
    }
    if o.mlp_ratio.is_nan() || o.mlp_ratio <= 0.0 || (o.dim as f64 * o.mlp_ratio).round() < 1.0 {
        return Err(format!(
            "model.mlp_ratio must give an MLP of at least one unit (dim {} x mlp_ratio, rounded, >= 1), got {}",
            o.dim, o.mlp_ratio
        ));
    }
    let (mut g, x, (c, h, w)) = super::image_input("vit", o.input_shape.as_deref(), data_shape)?;
    if !h.is_multiple_of(o.patch) || !w.is_multiple_of(o.patch) {
        return Err(format!("model.patch ({}) must divide the image size {h}x{w}", o.patch));
    }
    let e = |e: GraphError| format!("model: {e}");
    let spec = Conv2dSpec {
        in_channels: c,
        out_channels: o.dim,
        kernel: (o.patch, o.patch),
        stride: (o.patch, o.patch),
        padding: (0, 0),
        dilation: (1, 1),
        groups: 1,
    };
    let tokens = (h / o.patch) * (w / o.patch);
    let x = g.conv2d("patch_embed.proj", x, spec, true).map_err(e)?;
    // [D, gh, gw] -> [D, T] -> [T, D]: PyTorch's `x.flatten(2).transpose(1, 2)`.
    let x = g.reshape("patch_embed.flatten", x, &[o.dim, tokens]).map_err(e)?;
    let mut x = g.permute("patch_embed.transpose", x, &[1, 0]).map_err(e)?;
    if cls {
        x = g.prepend_token("cls", "cls_token", x).map_err(e)?;
    }
    x = g.add_param("pos", "pos_embed", x, 0.02);
    // The last block on the class token alone, when only that token reaches the head.
    let pruned = cls && o.cls_only_last_block;
    for i in 0..o.depth {
        x = block(&mut g, &o, i, x, act, pruned && i + 1 == o.depth).map_err(e)?;
    }
    let x = g.layer_norm("norm", x, o.norm_eps, true).map_err(e)?;
    let x = match (cls, pruned) {
        (true, true) => x,
        (true, false) => g.select_token("pool", x, 0).map_err(e)?,
        (false, _) => g.token_mean("pool", x).map_err(e)?,
    };
    let out = g.linear("head", x, o.output_size, true).map_err(e)?;
    Ok(BuiltModel { builder: g, output: out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn w3_preset_has_the_benchmark_parameter_count_and_timm_names() {
        let opts: serde_json::Value = serde_json::from_str(PRESETS[0].1).unwrap();
        let m = build(&opts, &[784]).unwrap();
        assert_eq!(m.builder.num_params(), 540_170);
        let mut world = bevy_ecs::world::World::new();
        let graph = m.builder.finish(&mut world, m.output, 0);
        assert_eq!(graph.output_shape(), &[10]);
        let names: Vec<String> =
            world.query::<&ecstrain_components::ParamInfo>().iter(&world).map(|p| p.name.clone()).collect();
        for n in [
            "patch_embed.proj.weight",
            "cls_token",
            "pos_embed",
            "blocks.3.attn.qkv.weight",
            "blocks.0.attn.proj.bias",
            "blocks.1.mlp.fc2.weight",
            "blocks.2.norm1.weight",
            "norm.bias",
            "head.weight",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }

    /// Output and parameter gradients of one training forward + backward of a small ViT on fixed random data
    /// (loss `sum(w * output)` for fixed random `w`), and the graph's node labels with their output shapes.
    fn run_vit(options: serde_json::Value, n: usize) -> (Vec<f32>, Vec<f32>, Vec<String>) {
        run_vit_with(options, n, |_| {})
    }

    /// [`run_vit`] with the executor's plan changed by `tweak` first.
    fn run_vit_with(
        options: serde_json::Value,
        n: usize,
        tweak: impl Fn(&mut crate::graph::Activations),
    ) -> (Vec<f32>, Vec<f32>, Vec<String>) {
        use crate::graph::{backward, forward, Activations};
        use ecstrain_components::{Buffers, Grads, Mode, Params};
        use ecstrain_kernels::rng::Rng;
        let m = build(&options, &[64]).unwrap();
        let mut world = bevy_ecs::world::World::new();
        let graph = m.builder.finish(&mut world, m.output, 3);
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..n * 64).map(|_| rng.normal() as f32).collect();
        let outs = n * graph.output_shape().iter().product::<usize>();
        let w: Vec<f32> = (0..outs).map(|_| rng.normal() as f32).collect();
        let mut acts = Activations::plan(&graph, n);
        tweak(&mut acts);
        let params = world.resource::<Params>().0.data.clone();
        let mut grads = world.resource::<Grads>().0.data.clone();
        let mut buffers = world.resource::<Buffers>().arena.data.clone();
        forward(&graph, &params, &mut buffers, &mut acts, &x, n, Mode::Train, 0);
        let out = acts.output(&graph, n).to_vec();
        // Every gradient buffer poisoned: a part the backward reads without having written it shows as NaN
        // (the pruned attention's rows past the class token are never written, and must never be read).
        acts.grads.iter_mut().for_each(|g| g.fill(f32::NAN));
        acts.grads[graph.output.0][..outs].copy_from_slice(&w);
        backward(&graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);
        // Attention nodes also show how many query rows the executor computes.
        let labels = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, nd)| match nd.op {
                ecstrain_components::OpKind::Attention { .. } => {
                    format!("{} {:?} queries {}", nd.name, graph.values[nd.output.0].shape, acts.attention_queries[i])
                }
                // Linear layers computing part of their outputs show which.
                ecstrain_components::OpKind::Linear { .. } if acts.linear_lead[i].is_some() => {
                    let l = acts.linear_lead[i].unwrap();
                    let shape = &graph.values[nd.output.0].shape;
                    format!("{} {shape:?} first {} columns on {} of {} rows", nd.name, l.cols, l.rows, l.group)
                }
                _ => format!("{} {:?}", nd.name, graph.values[nd.output.0].shape),
            })
            .collect();
        (out, grads, labels)
    }

    #[test]
    fn cls_only_last_block_keeps_outputs_and_gradients() {
        // The pruned last block (the default with cls pooling) against every token computed: the same function,
        // so outputs and every parameter gradient agree to float rounding; the pruned MLP runs on one row.
        let base = json!({"input_shape": [1, 8, 8], "patch": 2, "dim": 16, "depth": 2, "heads": 2, "output_size": 5});
        let mut full = base.clone();
        full["cls_only_last_block"] = json!(false);
        for causal in [false, true] {
            let (mut pruned_opts, mut full_opts) = (base.clone(), full.clone());
            pruned_opts["causal"] = json!(causal);
            full_opts["causal"] = json!(causal);
            let (out_p, grads_p, labels_p) = run_vit(pruned_opts, 3);
            let (out_f, grads_f, labels_f) = run_vit(full_opts, 3);
            assert!(labels_p.iter().any(|l| l == "blocks.1.mlp.fc1 [32]"), "{labels_p:?}");
            assert!(labels_p.iter().any(|l| l == "blocks.0.mlp.fc1 [17, 32]"), "{labels_p:?}");
            assert!(labels_f.iter().any(|l| l == "blocks.1.mlp.fc1 [17, 32]"), "{labels_f:?}");
            // Only the class token's query row of the pruned block's attention is computed.
            assert!(labels_p.iter().any(|l| l == "blocks.1.attn [17, 16] queries 1"), "{labels_p:?}");
            assert!(labels_p.iter().any(|l| l == "blocks.0.attn [17, 16] queries 17"), "{labels_p:?}");
            assert!(labels_f.iter().any(|l| l == "blocks.1.attn [17, 16] queries 17"), "{labels_f:?}");
            // Its q/k/v projection computes the query columns on the class token only.
            let lead = "blocks.1.attn.qkv [17, 48] first 16 columns on 1 of 17 rows";
            assert!(labels_p.iter().any(|l| l == lead), "{labels_p:?}");
            assert!(labels_p.iter().any(|l| l == "blocks.0.attn.qkv [17, 48]"), "{labels_p:?}");
            assert!(labels_f.iter().any(|l| l == "blocks.1.attn.qkv [17, 48]"), "{labels_f:?}");
            assert_eq!(out_p.len(), out_f.len());
            let scale = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
            let (so, sg) = (scale(&out_f), scale(&grads_f));
            assert!(sg > 0.0 && grads_f.iter().filter(|g| **g != 0.0).count() > grads_f.len() / 2);
            for (a, b) in out_p.iter().zip(&out_f) {
                assert!((a - b).abs() <= 1e-5 * so, "causal {causal}: output {a} vs {b}");
            }
            assert_eq!(grads_p.len(), grads_f.len());
            for (i, (a, b)) in grads_p.iter().zip(&grads_f).enumerate() {
                assert!((a - b).abs() <= 1e-5 * sg, "causal {causal}: gradient {i}: {a} vs {b}");
            }
        }
        // Mean pooling needs every token: the option changes nothing there.
        let mut mean = base.clone();
        mean["pool"] = json!("mean");
        let (_, _, labels) = run_vit(mean, 2);
        assert!(labels.iter().any(|l| l == "blocks.1.mlp.fc1 [16, 32]"), "{labels:?}");
    }

    /// In the pruned last block the class token's residual select is finished by the block's first layer norm
    /// (`select_after_norm`): planned there, and every output and parameter gradient bitwise the select run on
    /// its own.
    #[test]
    fn last_block_select_is_finished_by_its_norm() {
        let opts = json!({"input_shape": [1, 8, 8], "patch": 2, "dim": 16, "depth": 2, "heads": 2, "output_size": 5});
        let m = build(&opts, &[64]).unwrap();
        let mut world = bevy_ecs::world::World::new();
        let graph = m.builder.finish(&mut world, m.output, 3);
        let pairs = crate::graph::select_after_norm(&graph);
        let named: Vec<(&str, &str)> = pairs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.map(|j| (graph.nodes[i].name.as_str(), graph.nodes[j].name.as_str())))
            .collect();
        assert_eq!(named, [("blocks.1.norm1", "blocks.1.cls"), ("blocks.1.cls", "blocks.1.norm1")]);
        let planned = run_vit_with(opts.clone(), 3, |_| {});
        let apart = run_vit_with(opts, 3, |acts| acts.select_after_norm.fill(None));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&planned.0), bits(&apart.0));
        assert_eq!(bits(&planned.1), bits(&apart.1), "parameter gradients");
    }

    /// The pruned last block's attention runs through its q/k/v projection (`attention_pool`): planned on that
    /// pair without the causal mask only, and outputs and parameter gradients within float rounding of the
    /// projection and the attention run one after the other.
    #[test]
    fn last_block_attention_runs_through_its_projection() {
        let opts = json!({"input_shape": [1, 8, 8], "patch": 2, "dim": 16, "depth": 2, "heads": 2, "output_size": 5});
        let pairs = |opts: &serde_json::Value| {
            let m = build(opts, &[64]).unwrap();
            let mut world = bevy_ecs::world::World::new();
            let graph = m.builder.finish(&mut world, m.output, 3);
            let pools = crate::graph::attention_pools(&graph);
            let named: Vec<(String, String)> = pools
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.map(|j| (graph.nodes[i].name.clone(), graph.nodes[j].name.clone())))
                .collect();
            named
        };
        let want = [("blocks.1.attn.qkv", "blocks.1.attn"), ("blocks.1.attn", "blocks.1.attn.qkv")];
        let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(pairs(&opts), want);
        let mut causal = opts.clone();
        causal["causal"] = json!(true);
        assert!(pairs(&causal).is_empty(), "a causal attention is not pooled");
        let (out_p, grads_p, _) = run_vit_with(opts.clone(), 3, |_| {});
        let (out_a, grads_a, _) = run_vit_with(opts, 3, |acts| acts.attention_pool.fill(None));
        let scale = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let (so, sg) = (scale(&out_a), scale(&grads_a));
        assert!(out_p.iter().zip(&out_a).all(|(a, b)| (a - b).abs() <= 1e-5 * so), "outputs");
        for (i, (a, b)) in grads_p.iter().zip(&grads_a).enumerate() {
            assert!((a - b).abs() <= 1e-5 * sg, "gradient {i}: {a} vs {b}");
        }
        // The pooled run is not the other one by accident: its bits differ somewhere.
        assert!(grads_p.iter().zip(&grads_a).any(|(a, b)| a != b));
    }

    #[test]
    fn rejects_bad_options() {
        let e = build(&json!({"output_size": 3, "patch": 3, "input_shape": [1, 8, 8]}), &[64]).err().unwrap();
        assert!(e.contains("must divide the image size 8x8"), "{e}");
        let e = build(&json!({"output_size": 3, "heads": 3, "input_shape": [1, 8, 8]}), &[64]).err().unwrap();
        assert!(e.contains("heads (3) must divide model.dim (128)"), "{e}");
        let e = build(&json!({"output_size": 3, "pool": "max", "input_shape": [1, 8, 8]}), &[64]).err().unwrap();
        assert!(e.contains("cls, mean"), "{e}");
        let e = build(&json!({"output_size": 3, "mlp_ratio": 0.001, "input_shape": [1, 8, 8]}), &[64]).err().unwrap();
        assert!(e.contains("model.mlp_ratio must give an MLP of at least one unit (dim 128"), "{e}");
        // A value of the wrong type names its key.
        let e = build(&json!({"output_size": 3, "cls_only_last_block": "maybe"}), &[64]).err().unwrap();
        assert!(e.starts_with("model.cls_only_last_block: invalid type"), "{e}");
        let e = build(&json!({"output_size": "ten", "causal": true}), &[64]).err().unwrap();
        assert!(e.starts_with("model.output_size: invalid type"), "{e}");
    }
}
