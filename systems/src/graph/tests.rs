//! Whole-graph checks of the executor's wiring: gradients of small nets (a conv net, a residual net with batch
//! norm, a branch point and a concatenation, a transformer block) through `forward` / `backward` against
//! central finite differences of the same forward pass (f32, so tolerances are loose; each op's own float64
//! checks live in its kernel module; a wiring mistake shows as an O(1) error).

use bevy_ecs::world::World;
use ecstrain_components::{Activation, Buffers, Conv2dSpec, Grads, Mode, Params, Pool2dSpec};
use ecstrain_kernels::rng::Rng;

use super::{backward, forward, Activations, GraphBuilder, OpProfile};

fn tiny_net(world: &mut World, max_pool: bool) -> ecstrain_components::Graph {
    let mut g = GraphBuilder::new("test", &[2 * 6 * 6]);
    let x = g.input();
    let x = g.reshape("input", x, &[2, 6, 6]).unwrap();
    let spec = Conv2dSpec {
        in_channels: 2,
        out_channels: 3,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
        groups: 1,
    };
    let x = g.conv2d("conv", x, spec, true).unwrap();
    let x = g.activation("act", x, Activation::Tanh);
    let p = Pool2dSpec { kernel: (2, 2), stride: (2, 2), padding: (0, 0) };
    let x = if max_pool { g.max_pool2d("pool", x, p).unwrap() } else { g.avg_pool2d("pool", x, p).unwrap() };
    let x = g.flatten("flatten", x);
    let out = g.linear("fc", x, 4, true).unwrap();
    g.finish(world, out, 7)
}

/// L = sum(w * output) for fixed random weights w.
fn loss(
    graph: &ecstrain_components::Graph,
    params: &[f32],
    acts: &mut Activations,
    x: &[f32],
    n: usize,
    w: &[f32],
) -> f64 {
    let mut buffers = vec![0.0; 1 << 12];
    forward(graph, params, &mut buffers, acts, x, n, Mode::Train, 0);
    acts.output(graph, n).iter().zip(w).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
}

fn conv(c: usize, oc: usize) -> Conv2dSpec {
    Conv2dSpec {
        in_channels: c,
        out_channels: oc,
        kernel: (3, 3),
        stride: (1, 1),
        padding: (1, 1),
        dilation: (1, 1),
        groups: 1,
    }
}

/// conv -> BN -> relu -> conv -> BN, added to a 1x1-conv shortcut of the block input (the block input feeds
/// two ops), then concatenated with an upsampled avg-pooled branch of the same value, pooled and classified.
fn residual_net(world: &mut World) -> ecstrain_components::Graph {
    let mut g = GraphBuilder::new("test", &[2 * 4 * 4]);
    let x = g.input();
    let x = g.reshape("input", x, &[2, 4, 4]).unwrap();
    let stem = g.conv2d("stem", x, conv(2, 3), false).unwrap();
    let h = g.conv2d("conv1", stem, conv(3, 3), false).unwrap();
    let h = g.batch_norm2d("bn1", h, 1e-5, 0.1, true).unwrap();
    let h = g.activation("act1", h, Activation::Tanh);
    let h = g.conv2d("conv2", h, conv(3, 3), false).unwrap();
    let h = g.batch_norm2d("bn2", h, 1e-5, 0.1, true).unwrap();
    let mut one = conv(3, 3);
    one.kernel = (1, 1);
    one.padding = (0, 0);
    let s = g.conv2d("shortcut", stem, one, true).unwrap();
    let h = g.add("add", h, s).unwrap();
    let h = g.activation("act2", h, Activation::Silu);
    let p = g.avg_pool2d("pool", stem, Pool2dSpec { kernel: (2, 2), stride: (2, 2), padding: (0, 0) }).unwrap();
    let p = g.upsample("up", p, (2, 2)).unwrap();
    // Overlapping adaptive bins (2 -> 3) and back (3 -> 4): both directions of the bin rule.
    let p = g.adaptive_avg_pool2d("adapt1", p, (3, 3)).unwrap();
    let p = g.adaptive_avg_pool2d("adapt2", p, (4, 4)).unwrap();
    let h = g.concat("cat", &[h, p, stem], 0).unwrap();
    let h = g.global_avg_pool("gap", h).unwrap();
    let out = g.linear("fc", h, 4, true).unwrap();
    g.finish(world, out, 7)
}

/// A pre-norm transformer block on patch tokens with a class token and position embedding.
fn transformer(world: &mut World, causal: bool, cls: bool) -> ecstrain_components::Graph {
    let mut g = GraphBuilder::new("test", &[4 * 4]);
    let x = g.input();
    let x = g.reshape("input", x, &[1, 4, 4]).unwrap();
    let mut patch = conv(1, 8);
    patch.kernel = (2, 2);
    patch.stride = (2, 2);
    patch.padding = (0, 0);
    let x = g.conv2d("patch", x, patch, true).unwrap();
    let x = g.reshape("flat", x, &[8, 4]).unwrap();
    let mut x = g.permute("tokens", x, &[1, 0]).unwrap();
    if cls {
        x = g.prepend_token("cls", "cls_token", x).unwrap();
    }
    let x = g.add_param("pos", "pos_embed", x, 0.5);
    let h = g.layer_norm("norm1", x, 1e-6, true).unwrap();
    let h = g.linear("qkv", h, 24, true).unwrap();
    let h = g.attention("attn", h, 2, causal).unwrap();
    let h = g.linear("proj", h, 8, true).unwrap();
    let x = g.add("res1", x, h).unwrap();
    let h = g.layer_norm("norm2", x, 1e-6, true).unwrap();
    let h = g.linear("fc1", h, 16, true).unwrap();
    let h = g.activation("gelu", h, Activation::Gelu);
    let h = g.linear("fc2", h, 8, true).unwrap();
    let x = g.add("res2", x, h).unwrap();
    let x = if cls { g.select_token("pool", x, 0).unwrap() } else { g.token_mean("pool", x).unwrap() };
    let out = g.linear("head", x, 3, true).unwrap();
    g.finish(world, out, 9)
}

/// Backward of `graph` against central differences over every `stride`-th parameter.
fn check_graph(world: &World, graph: &ecstrain_components::Graph, n: usize, h: f32, stride: usize, what: &str) {
    let mut rng = Rng::new(11);
    let x: Vec<f32> = (0..n * graph.values[0].numel()).map(|_| rng.normal() as f32).collect();
    let outs = n * graph.output_shape().iter().product::<usize>();
    let w: Vec<f32> = (0..outs).map(|_| rng.normal() as f32).collect();
    let mut acts = Activations::plan(graph, n);
    let mut params = world.resource::<Params>().0.data.clone();
    let mut grads = world.resource::<Grads>().0.data.clone();
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    forward(graph, &params, &mut buffers, &mut acts, &x, n, Mode::Train, 0);
    // Poisoned: a gradient the backward reads before writing it shows as NaN.
    acts.grads.iter_mut().for_each(|g| g.fill(f32::NAN));
    acts.grads[graph.output.0][..outs].copy_from_slice(&w);
    backward(graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);
    let mut worst = 0.0f64;
    for k in (0..params.len()).step_by(stride) {
        let orig = params[k];
        params[k] = orig + h;
        let lp = loss(graph, &params, &mut acts, &x, n, &w);
        params[k] = orig - h;
        let lm = loss(graph, &params, &mut acts, &x, n, &w);
        params[k] = orig;
        let numeric = (lp - lm) / (2.0 * h as f64);
        let err = (numeric - grads[k] as f64).abs() / (1.0 + numeric.abs());
        worst = worst.max(err);
    }
    assert!(worst < 2e-2, "{what}: graph gradient mismatch {worst}");
}

#[test]
fn residual_net_gradients_match_finite_differences() {
    let mut world = World::new();
    let graph = residual_net(&mut world);
    check_graph(&world, &graph, 3, 1e-2, 1, "residual net");
}

#[test]
fn transformer_gradients_match_finite_differences() {
    for (causal, cls) in [(false, true), (true, false)] {
        let mut world = World::new();
        let graph = transformer(&mut world, causal, cls);
        check_graph(&world, &graph, 3, 1e-2, 1, &format!("transformer (causal {causal}, cls {cls})"));
    }
}

#[test]
fn softmax_and_permute_gradients_match_finite_differences() {
    // [12] -> [3, 4] -> linear over the last axis -> softmax -> [5, 3] (permute) -> flatten -> linear.
    let mut world = World::new();
    let mut g = GraphBuilder::new("test", &[12]);
    let x = g.input();
    let x = g.reshape("view", x, &[3, 4]).unwrap();
    let x = g.linear("proj", x, 5, true).unwrap();
    let x = g.softmax("softmax", x).unwrap();
    let x = g.permute("swap", x, &[1, 0]).unwrap();
    let x = g.flatten("flat", x);
    let out = g.linear("head", x, 2, true).unwrap();
    let graph = g.finish(&mut world, out, 3);
    check_graph(&world, &graph, 3, 1e-2, 1, "softmax + permute");
}

#[test]
fn embedding_gradients_match_finite_differences() {
    // Token ids -> embedding -> linear over the tokens -> mean -> head; ids repeat so table rows accumulate.
    let mut world = World::new();
    let mut g = GraphBuilder::new("test", &[6]);
    let x = g.input();
    let x = g.embedding("embed", x, 4, 3).unwrap();
    let x = g.linear("mix", x, 5, true).unwrap();
    let x = g.activation("act", x, Activation::Tanh);
    let x = g.token_mean("pool", x).unwrap();
    let out = g.linear("head", x, 2, true).unwrap();
    let graph = g.finish(&mut world, out, 4);
    let n = 3;
    let ids: Vec<f32> = (0..n * 6).map(|i| ((i * 7 + 1) % 4) as f32).collect();
    let w: Vec<f32> = (0..n * 2).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut acts = Activations::plan(&graph, n);
    let mut params = world.resource::<Params>().0.data.clone();
    let mut grads = world.resource::<Grads>().0.data.clone();
    let mut buffers = Vec::new();
    forward(&graph, &params, &mut buffers, &mut acts, &ids, n, Mode::Train, 0);
    acts.grads[graph.output.0][..n * 2].copy_from_slice(&w);
    backward(&graph, &params, &mut grads, &mut acts, &ids, n, Mode::Train, 0);
    let h = 1e-2f32;
    for k in 0..params.len() {
        let orig = params[k];
        params[k] = orig + h;
        let lp = loss(&graph, &params, &mut acts, &ids, n, &w);
        params[k] = orig - h;
        let lm = loss(&graph, &params, &mut acts, &ids, n, &w);
        params[k] = orig;
        let numeric = (lp - lm) / (2.0 * h as f64);
        let err = (numeric - grads[k] as f64).abs() / (1.0 + numeric.abs());
        assert!(err < 2e-2, "embedding net: parameter {k}: {} vs {numeric}", grads[k]);
    }
    let mut g = GraphBuilder::new("test", &[6]);
    let x = g.input();
    let x = g.reshape("view", x, &[6]).unwrap();
    assert!(g.embedding("embed", x, 4, 3).unwrap_err().to_string().contains("first layer"));
}

#[test]
fn batch_norm_running_statistics_follow_pytorch_momentum() {
    // One training forward: running_mean = 0.9 * 0 + 0.1 * batch mean; num_batches_tracked = 1; eval mode uses
    // the running statistics and leaves them alone.
    let mut world = World::new();
    let mut g = GraphBuilder::new("test", &[1, 1, 2]);
    let x = g.input();
    let y = g.batch_norm2d("bn", x, 1e-5, 0.1, true).unwrap();
    let graph = g.finish(&mut world, y, 0);
    let entries = world.resource::<Buffers>().entries.clone();
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]);
    let params = world.resource::<Params>().0.data.clone();
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    assert_eq!(buffers, [0.0, 1.0, 0.0]);
    let mut acts = Activations::plan(&graph, 2);
    let x = [1.0f32, 3.0, 5.0, 7.0];
    forward(&graph, &params, &mut buffers, &mut acts, &x, 2, Mode::Train, 0);
    // mean 4, biased var 5, unbiased 20/3.
    let want = [0.4, 0.9 + 0.1 * 20.0 / 3.0, 1.0];
    for (b, w) in buffers.iter().zip(want) {
        assert!((*b as f64 - w).abs() < 1e-6, "{buffers:?} vs {want:?}");
    }
    let before = buffers.clone();
    forward(&graph, &params, &mut buffers, &mut acts, &x, 2, Mode::Eval, 0);
    assert_eq!(buffers, before);
    let y0 = (1.0 - 0.4) / (want[1] as f32 + 1e-5).sqrt();
    assert!((acts.output(&graph, 2)[0] - y0).abs() < 1e-5);
}

fn check(max_pool: bool) {
    let mut world = World::new();
    let graph = tiny_net(&mut world, max_pool);
    let n = 3;
    let mut rng = Rng::new(11);
    let x: Vec<f32> = (0..n * 72).map(|_| rng.normal() as f32).collect();
    let w: Vec<f32> = (0..n * 4).map(|_| rng.normal() as f32).collect();
    let mut acts = Activations::plan(&graph, n);
    let mut params = world.resource::<Params>().0.data.clone();
    let mut grads = world.resource::<Grads>().0.data.clone();

    let mut buffers = Vec::new();
    forward(&graph, &params, &mut buffers, &mut acts, &x, n, Mode::Train, 0);
    let out = graph.output.0;
    acts.grads[out][..n * 4].copy_from_slice(&w);
    backward(&graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);

    // Small steps keep max-pool windows from switching their argmax under the perturbation.
    let h = if max_pool { 2e-3f32 } else { 1e-2 };
    let mut worst = 0.0f64;
    for k in (0..params.len()).step_by(7) {
        let orig = params[k];
        params[k] = orig + h;
        let lp = loss(&graph, &params, &mut acts, &x, n, &w);
        params[k] = orig - h;
        let lm = loss(&graph, &params, &mut acts, &x, n, &w);
        params[k] = orig;
        let numeric = (lp - lm) / (2.0 * h as f64);
        let err = (numeric - grads[k] as f64).abs() / (1.0 + numeric.abs());
        worst = worst.max(err);
    }
    assert!(worst < 2e-2, "graph gradient mismatch (max_pool {max_pool}): {worst}");
}

#[test]
fn conv_net_gradients_match_finite_differences_avg_pool() {
    check(false);
}

#[test]
fn conv_net_gradients_match_finite_differences_max_pool() {
    check(true);
}

/// Output and parameter gradients of one forward + backward of `graph` on fixed random data.
fn run_once(world: &World, graph: &ecstrain_components::Graph, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(21);
    let x: Vec<f32> = (0..n * graph.values[0].numel()).map(|_| rng.normal() as f32).collect();
    let outs = n * graph.output_shape().iter().product::<usize>();
    let w: Vec<f32> = (0..outs).map(|_| rng.normal() as f32).collect();
    let mut acts = Activations::plan(graph, n);
    let params = world.resource::<Params>().0.data.clone();
    let mut grads = world.resource::<Grads>().0.data.clone();
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    forward(graph, &params, &mut buffers, &mut acts, &x, n, Mode::Train, 0);
    let out = acts.output(graph, n).to_vec();
    acts.grads[graph.output.0][..outs].copy_from_slice(&w);
    backward(graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);
    (out, grads)
}

/// An MLP whose layers exercise every fusion case: linear + relu (fused), linear + gelu (fused), a linear
/// read by two nodes (not fused), and a linear that is the graph output (not fused).
fn fusable_mlp(world: &mut World) -> ecstrain_components::Graph {
    let mut g = GraphBuilder::new("test", &[6]);
    let x = g.input();
    let h = g.linear("fc1", x, 8, true).unwrap();
    let h = g.activation("act1", h, Activation::Relu);
    let h = g.linear("fc2", h, 8, false).unwrap();
    let h = g.activation("act2", h, Activation::Gelu);
    let b = g.linear("branch", h, 8, true).unwrap();
    let a = g.activation("act3", b, Activation::Sigmoid);
    let h = g.add("res", a, b).unwrap();
    let out = g.linear("head", h, 3, true).unwrap();
    g.finish(world, out, 5)
}

#[test]
fn fusion_folds_only_sole_readers_and_keeps_every_number() {
    for build in [fusable_mlp as fn(&mut World) -> _, |w: &mut World| transformer(w, false, true)] {
        let (mut w1, mut w2) = (World::new(), World::new());
        let plain = build(&mut w1);
        let mut fused = build(&mut w2);
        let count = super::fuse_linear_activation(&mut fused);
        let labels: Vec<String> = fused.nodes.iter().map(|n| n.op.label()).collect();
        assert!(count >= 1, "nothing fused: {labels:?}");
        assert_eq!(fused.nodes.len(), plain.nodes.len() - count);
        let (out_p, grads_p) = run_once(&w1, &plain, 5);
        let (out_f, grads_f) = run_once(&w2, &fused, 5);
        let same =
            |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&out_p, &out_f), "outputs differ after fusion ({labels:?})");
        assert!(same(&grads_p, &grads_f), "gradients differ after fusion ({labels:?})");
        check_graph(&w2, &fused, 3, 1e-2, 1, &format!("fused graph {labels:?}"));
    }
    let mut w = World::new();
    let mut g = fusable_mlp(&mut w);
    assert_eq!(super::fuse_linear_activation(&mut g), 2, "fc1 + relu and fc2 + gelu; not the branch, not the head");
    let labels: Vec<String> = g.nodes.iter().map(|n| n.op.label()).collect();
    assert_eq!(labels[..2], ["Linear(6, 8) + Relu".to_string(), "Linear(8, 8) + Gelu".to_string()]);
    // The fused-away values get no buffers.
    let acts = Activations::plan(&g, 4);
    let empty = acts.values.iter().skip(1).filter(|v| v.is_empty()).count();
    assert_eq!(empty, 2);
}

#[test]
fn profiling_records_every_node_and_leaves_results_unchanged() {
    // The same residual net run with and without a profile: identical outputs and gradients, and with it every
    // node has forward and backward time (including the pass-through backwards of reshape and add), passes
    // counted per mode.
    let mut world = World::new();
    let mut g = GraphBuilder::new("test", &[4]);
    let x = g.input();
    let h = g.linear("fc1", x, 4, true).unwrap();
    let h = g.activation("act", h, Activation::Relu);
    let r = g.add("res", h, x).unwrap();
    let r = g.reshape("view", r, &[4]).unwrap();
    let out = g.linear("head", r, 2, true).unwrap();
    let graph = g.finish(&mut world, out, 4);
    let n = 3;
    let x: Vec<f32> = (0..n * 4).map(|i| (i as f32 * 0.7).cos()).collect();
    let params = world.resource::<Params>().0.data.clone();
    let run = |profile: bool| {
        let mut acts = Activations::plan(&graph, n);
        if profile {
            acts.profile = Some(OpProfile::new(graph.nodes.len()));
        }
        let mut grads = vec![0.0f32; params.len()];
        for _ in 0..2 {
            forward(&graph, &params, &mut Vec::new(), &mut acts, &x, n, Mode::Train, 0);
            acts.grads[graph.output.0][..n * 2].fill(1.0);
            backward(&graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);
        }
        forward(&graph, &params, &mut Vec::new(), &mut acts, &x, n, Mode::Eval, 0);
        (acts.output(&graph, n).to_vec(), grads, acts.profile)
    };
    let (y0, g0, none) = run(false);
    let (y1, g1, prof) = run(true);
    assert!(none.is_none());
    assert_eq!((y0, g0), (y1, g1));
    let prof = prof.unwrap();
    assert_eq!((prof.train_passes, prof.backward_passes, prof.eval_passes), (2, 2, 1));
    for (i, node) in graph.nodes.iter().enumerate() {
        assert!(prof.train_forward_ns[i] > 0 && prof.eval_forward_ns[i] > 0, "{}: no forward time", node.name);
        assert!(prof.backward_ns[i] > 0, "{}: no backward time", node.name);
    }
    let kinds: Vec<String> = prof.by_kind(&graph).into_iter().map(|r| format!("{} {}", r.name, r.nodes)).collect();
    for k in ["Linear 2", "Relu 1", "Add 1", "Reshape 1"] {
        assert!(kinds.iter().any(|r| r == k), "{k} not in {kinds:?}");
    }
    let report = prof.report(&graph);
    assert!(report.contains("fc1 Linear(4, 4)") && report.contains("head Linear(4, 2)"), "{report}");
}

/// A conv net with each convolution + max pool case: a pair the executor fuses (twice: the first layer,
/// whose input is the model input, and a middle one), a convolution whose output a residual add also reads
/// (not fused), and one with an activation between it and its pool (not fused).
fn conv_pool_net(world: &mut World) -> ecstrain_components::Graph {
    let mut g = GraphBuilder::new("test", &[2 * 8 * 8]);
    let x = g.input();
    let x = g.reshape("input", x, &[2, 8, 8]).unwrap();
    let p = Pool2dSpec { kernel: (2, 2), stride: (2, 2), padding: (0, 0) };
    let x = g.conv2d("conv1", x, conv(2, 4), true).unwrap();
    let x = g.max_pool2d("pool1", x, p).unwrap();
    let x = g.activation("act1", x, Activation::Relu);
    let c = g.conv2d("conv2", x, conv(4, 4), false).unwrap();
    let y = g.max_pool2d("pool2", c, Pool2dSpec { kernel: (3, 3), stride: (1, 1), padding: (1, 1) }).unwrap();
    let x = g.add("res", y, c).unwrap();
    let x = g.conv2d("conv3", x, conv(4, 3), true).unwrap();
    let x = g.activation("act3", x, Activation::Tanh);
    let x = g.max_pool2d("pool3", x, p).unwrap();
    let x = g.conv2d("conv4", x, conv(3, 5), true).unwrap();
    let x = g.max_pool2d("pool4", x, p).unwrap();
    let x = g.flatten("flatten", x);
    let out = g.linear("fc", x, 3, true).unwrap();
    g.finish(world, out, 13)
}

#[test]
fn conv_pool_pairs_fuse_only_sole_readers_and_keep_every_number() {
    let mut world = World::new();
    let graph = conv_pool_net(&mut world);
    let name = |i: Option<usize>| i.map(|i| graph.nodes[i].name.clone());
    let pairs: Vec<_> = super::exec::conv_pool_pairs(&graph)
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.map(|p| (graph.nodes[i].name.clone(), name(Some(p.pool)).unwrap(), name(p.relu))))
        .collect();
    assert_eq!(
        pairs,
        [("conv1".to_string(), "pool1".to_string(), Some("act1".to_string())), ("conv4".into(), "pool4".into(), None)]
    );

    // Fused (as planned) and unfused (the plan cleared): the same bits, over two batch sizes (one sample
    // per slot, and more samples than slots).
    for n in [3, 19] {
        let run = |fuse: bool| {
            let mut rng = Rng::new(5);
            let x: Vec<f32> = (0..n * graph.values[0].numel()).map(|_| rng.normal() as f32).collect();
            let w: Vec<f32> = (0..n * 3).map(|_| rng.normal() as f32).collect();
            let mut acts = Activations::plan(&graph, n);
            if !fuse {
                acts.conv_pool.fill(None);
            }
            let params = world.resource::<Params>().0.data.clone();
            let mut grads = world.resource::<Grads>().0.data.clone();
            forward(&graph, &params, &mut Vec::new(), &mut acts, &x, n, Mode::Train, 0);
            assert!(acts.fused_forward);
            let out = acts.output(&graph, n).to_vec();
            acts.grads[graph.output.0][..n * 3].copy_from_slice(&w);
            backward(&graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);
            (out, grads)
        };
        let (fused, unfused) = (run(true), run(false));
        if n == 3 {
            // A profiled run reports each fused group as one row, and its total counts the rows.
            let mut acts = Activations::plan(&graph, n);
            acts.profile = Some(OpProfile::new(graph.nodes.len()));
            let params = world.resource::<Params>().0.data.clone();
            let x = vec![0.5f32; n * graph.values[0].numel()];
            forward(&graph, &params, &mut Vec::new(), &mut acts, &x, n, Mode::Train, 0);
            let report = acts.profile.as_ref().unwrap().report(&graph);
            assert!(report.contains("conv1 Conv2d(2, 4, (3, 3)) + MaxPool2d((2, 2)) + Relu"), "{report}");
            assert!(report.contains("conv4 Conv2d(3, 5, (3, 3)) + MaxPool2d((2, 2))"), "{report}");
            assert!(!report.contains("pool1 "), "{report}");
            let total = report.lines().find(|l| l.starts_with("total")).unwrap();
            let rows = graph.nodes.len() - 3;
            assert_eq!(total.split_whitespace().nth(1), Some(rows.to_string().as_str()), "{report}");
        }
        assert_eq!(fused.0, unfused.0, "outputs, batch {n}");
        assert_eq!(fused.1, unfused.1, "parameter gradients, batch {n}");
    }
}

/// Two fused conv + max pool pairs with a smooth activation between them (no ReLU kinks, no overlapping
/// windows), for the finite-difference check.
fn fused_pairs_net(world: &mut World) -> ecstrain_components::Graph {
    let mut g = GraphBuilder::new("test", &[2 * 8 * 8]);
    let x = g.input();
    let x = g.reshape("input", x, &[2, 8, 8]).unwrap();
    let p = Pool2dSpec { kernel: (2, 2), stride: (2, 2), padding: (0, 0) };
    let x = g.conv2d("conv1", x, conv(2, 3), true).unwrap();
    let x = g.max_pool2d("pool1", x, p).unwrap();
    let x = g.activation("act1", x, Activation::Tanh);
    let x = g.conv2d("conv2", x, conv(3, 4), true).unwrap();
    let x = g.max_pool2d("pool2", x, p).unwrap();
    let x = g.flatten("flatten", x);
    let out = g.linear("fc", x, 3, true).unwrap();
    g.finish(world, out, 17)
}

#[test]
fn fused_conv_pool_gradients_match_finite_differences() {
    let mut world = World::new();
    let graph = fused_pairs_net(&mut world);
    assert_eq!(super::exec::conv_pool_pairs(&graph).iter().flatten().count(), 2);
    // A step small enough that no pool window changes its argmax (the maxima here are pooled raw conv
    // outputs, closer together than a tanh-squashed input would make them).
    check_graph(&world, &graph, 2, 3e-4, 1, "conv + max pool pairs");
}

/// `backward_releasing` hands the gradient arena out in pieces from its end down, each right below the last,
/// covering it once; each piece already holds its final values when it is handed out (nothing the backward
/// does afterwards changes it), and the values are bitwise `backward`'s. Checked on nets with every kind of
/// parameterised node: convolutions (fused with their pools and not), batch norm, a class token and position
/// embedding, layer norms and attention, and linears fused with their activations.
#[test]
fn released_gradient_pieces_are_final_and_cover_the_arena() {
    use super::{backward_releasing, gradient_cuts, Release};
    type Build = fn(&mut World) -> ecstrain_components::Graph;
    let nets: [(&str, Build); 5] = [
        ("conv net", |w| tiny_net(w, true)),
        ("residual net", residual_net),
        ("transformer", |w| transformer(w, false, true)),
        ("conv + pool net", conv_pool_net),
        ("fused mlp", |w| {
            let mut g = fusable_mlp(w);
            assert!(super::fuse_linear_activation(&mut g) > 0);
            g
        }),
    ];
    for (what, build) in nets {
        let mut world = World::new();
        let graph = build(&mut world);
        let n = 3;
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..n * graph.values[0].numel()).map(|_| rng.normal() as f32).collect();
        let outs = n * graph.output_shape().iter().product::<usize>();
        let w: Vec<f32> = (0..outs).map(|_| rng.normal() as f32).collect();
        let params = world.resource::<Params>().0.data.clone();
        // Gradients accumulate onto what is there: start from non-zero values.
        let start: Vec<f32> = (0..params.len()).map(|_| rng.normal() as f32).collect();
        let buffers = world.resource::<Buffers>().arena.data.clone();
        let run = |release: bool| {
            let mut acts = Activations::plan(&graph, n);
            let mut buffers = buffers.clone();
            forward(&graph, &params, &mut buffers, &mut acts, &x, n, Mode::Train, 0);
            acts.grads[graph.output.0][..outs].copy_from_slice(&w);
            let mut grads = start.clone();
            let mut pieces: Vec<(usize, Vec<f32>)> = Vec::new();
            if release {
                let base = grads.as_ptr() as usize;
                let cuts = gradient_cuts(&graph);
                let mut on_ready = |piece: &mut [f32]| {
                    let offset = (piece.as_ptr() as usize - base) / 4;
                    pieces.push((offset, piece.to_vec()));
                };
                let r = Release { cuts: &cuts, on_ready: &mut on_ready };
                backward_releasing(&graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0, Some(r));
            } else {
                backward(&graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);
            }
            (grads, pieces)
        };
        let (plain, _) = run(false);
        let (released, pieces) = run(true);
        assert_eq!(released, plain, "{what}: releasing changed the gradients");
        assert_ne!(plain, start, "{what}: the backward wrote no gradient");
        let param_nodes = graph.nodes.iter().filter(|node| !node.op.params().is_empty()).count();
        assert_eq!(pieces.len(), param_nodes, "{what}: one piece per node with parameters");
        let mut end = plain.len();
        for (offset, values) in &pieces {
            assert_eq!(offset + values.len(), end, "{what}: pieces must come from the end down, contiguous");
            assert_eq!(values[..], plain[*offset..end], "{what}: piece at {offset} changed after it was released");
            end = *offset;
        }
        assert_eq!(end, 0, "{what}: the pieces must cover the arena");
    }
}

/// Values computed from the input alone (the input reshape in front of the first convolution) get no
/// gradient: the backward skips them and the convolution's input gradient, and every parameter gradient is
/// bitwise what computing them all gives.
#[test]
fn gradients_of_input_only_values_are_skipped() {
    for (what, build) in [("conv net", tiny_net as fn(&mut World, bool) -> _), ("conv net, avg pool", tiny_net)] {
        let mut world = World::new();
        let graph = build(&mut world, what == "conv net");
        let needed = super::gradient_needed(&graph);
        let reshaped = graph.nodes[0].output;
        assert!(matches!(graph.nodes[0].op, ecstrain_components::OpKind::Reshape), "{what}: input reshape first");
        assert!(!needed[0] && !needed[reshaped.0], "{what}: the input and its reshape need no gradient");
        assert!(graph.nodes[1..].iter().all(|n| needed[n.output.0]), "{what}: everything after the conv does");
        let n = 4;
        let mut rng = Rng::new(8);
        let x: Vec<f32> = (0..n * graph.values[0].numel()).map(|_| rng.normal() as f32).collect();
        let outs = n * graph.output_shape().iter().product::<usize>();
        let w: Vec<f32> = (0..outs).map(|_| rng.normal() as f32).collect();
        let params = world.resource::<Params>().0.data.clone();
        let run = |all: bool| {
            let mut acts = Activations::plan(&graph, n);
            if all {
                acts.grad_needed.iter_mut().for_each(|b| *b = true);
            }
            let mut buffers = world.resource::<Buffers>().arena.data.clone();
            forward(&graph, &params, &mut buffers, &mut acts, &x, n, Mode::Train, 0);
            acts.grads[graph.output.0][..outs].copy_from_slice(&w);
            let mut grads = vec![0.0f32; params.len()];
            backward(&graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);
            (grads, acts.written[reshaped.0])
        };
        let ((skipped, written_skipped), (all, written_all)) = (run(false), run(true));
        assert_eq!(skipped, all, "{what}: parameter gradients changed");
        assert!(!written_skipped && written_all, "{what}: the reshape's gradient was computed anyway");
    }
}

/// A reshape's output is read in place from its input's buffer (`value_sources`): the reshape copies nothing
/// and its output has no buffer, and the outputs and parameter gradients are bitwise those of copying it (an
/// input reshape, a flatten, and reshapes inside a transformer). A reshape that is the graph output keeps its
/// buffer (the task reads it).
#[test]
fn reshapes_are_read_in_place() {
    use ecstrain_components::OpKind;
    type Build = fn(&mut World) -> ecstrain_components::Graph;
    let nets: [(&str, Build); 3] = [
        ("conv net", |w| tiny_net(w, true)),
        ("transformer", |w| transformer(w, false, true)),
        ("conv + pool net", conv_pool_net),
    ];
    for (what, build) in nets {
        let mut world = World::new();
        let graph = build(&mut world);
        let reshapes: Vec<usize> =
            graph.nodes.iter().filter(|n| matches!(n.op, OpKind::Reshape)).map(|n| n.output.0).collect();
        assert!(!reshapes.is_empty(), "{what}: has reshapes");
        let n = 3;
        let mut rng = Rng::new(11);
        let x: Vec<f32> = (0..n * graph.values[0].numel()).map(|_| rng.normal() as f32).collect();
        let outs = n * graph.output_shape().iter().product::<usize>();
        let w: Vec<f32> = (0..outs).map(|_| rng.normal() as f32).collect();
        let params = world.resource::<Params>().0.data.clone();
        let run = |in_place: bool| {
            let mut acts = Activations::plan(&graph, n);
            if in_place {
                for &v in &reshapes {
                    assert!(acts.values[v].is_empty(), "{what}: reshape output {v} has a buffer");
                    assert_ne!(acts.value_source[v], v, "{what}: reshape output {v} is not read in place");
                }
            } else {
                // The copying plan: every value in its own buffer.
                for &v in &reshapes {
                    acts.values[v] = vec![0.0; n * graph.values[v].numel()];
                }
                acts.value_source = (0..graph.values.len()).collect();
            }
            let mut buffers = world.resource::<Buffers>().arena.data.clone();
            forward(&graph, &params, &mut buffers, &mut acts, &x, n, Mode::Train, 0);
            let out = acts.output(&graph, n).to_vec();
            acts.grads[graph.output.0][..outs].copy_from_slice(&w);
            let mut grads = vec![0.0f32; params.len()];
            backward(&graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);
            (out, grads)
        };
        let (in_place, copied) = (run(true), run(false));
        assert!(copied.1.iter().any(|&g| g != 0.0), "{what}: no gradient");
        assert_eq!(in_place, copied, "{what}: reading in place changed a number");
    }
    // A reshape as the graph output keeps its buffer and its copy.
    let mut world = World::new();
    let mut g = GraphBuilder::new("test", &[6]);
    let x = g.input();
    let x = g.linear("fc", x, 4, true).unwrap();
    let out = g.reshape("view", x, &[2, 2]).unwrap();
    let graph = g.finish(&mut world, out, 3);
    let mut acts = Activations::plan(&graph, 2);
    assert_eq!(acts.value_source[graph.output.0], graph.output.0);
    let params = world.resource::<Params>().0.data.clone();
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    let x = [0.5f32, -1.0, 2.0, 0.25, 1.5, -0.75, 1.0, 2.0, -2.0, 0.0, 0.5, 3.0];
    forward(&graph, &params, &mut buffers, &mut acts, &x, 2, Mode::Train, 0);
    let fc = graph.nodes[0].output.0;
    assert_eq!(acts.output(&graph, 2), &acts.values[fc][..8], "the output reshape copies its input");
}

/// Adds in every position the sharing rule must tell apart: a residual branch that may read the stream's
/// gradient (`branch`), a branch whose producer reads the stream itself (`self_read`), a stream with a reader
/// between the branch's producer and the add (`reader_between`), a second input with another reader
/// (`shared_input`), and a stream whose gradient a later reader writes first (`late_reader`).
fn tricky_adds(world: &mut World) -> ecstrain_components::Graph {
    let mut g = GraphBuilder::new("test", &[6]);
    let x = g.input();
    let s = g.linear("stem", x, 6, true).unwrap();
    let h = g.activation("branch.pre", s, Activation::Tanh);
    let h = g.linear("branch.fc", h, 6, true).unwrap();
    let s = g.add("branch", s, h).unwrap();
    let h = g.linear("self_read.fc", s, 6, true).unwrap();
    let s = g.add("self_read", h, s).unwrap();
    let h = g.activation("reader_between.pre", s, Activation::Tanh);
    let h = g.linear("reader_between.fc", h, 6, true).unwrap();
    let t = g.activation("reader_between.act", s, Activation::Silu);
    let s = g.add("reader_between", s, h).unwrap();
    let s = g.add("reader_between.join", s, t).unwrap();
    let u = g.linear("shared_input.fc", s, 6, true).unwrap();
    let s = g.add("shared_input", s, u).unwrap();
    let s = g.add("shared_input.join", s, u).unwrap();
    let h = g.activation("late_reader.pre", s, Activation::Tanh);
    let h = g.linear("late_reader.fc", h, 6, true).unwrap();
    let s5 = g.add("late_reader", s, h).unwrap();
    let late = g.linear("late_reader.late", s, 6, true).unwrap();
    let s = g.add("late_reader.join", s5, late).unwrap();
    let out = g.linear("head", s, 3, true).unwrap();
    g.finish(world, out, 5)
}

/// Output and parameter gradients after two training steps of `graph` (forward + backward of `sum(w * output)`
/// on fixed random data, gradients accumulating) on a plan that `tweak` may change first. Every gradient buffer
/// starts poisoned, so a gradient read before it is written shows as NaN; the second step starts from the
/// buffers the first left behind (swapped, shared). Asserts that nearly every parameter got a gradient.
fn two_steps(
    world: &World,
    graph: &ecstrain_components::Graph,
    n: usize,
    seed: u64,
    tweak: impl Fn(&mut Activations),
) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..n * graph.values[0].numel()).map(|_| rng.normal() as f32).collect();
    let outs = n * graph.output_shape().iter().product::<usize>();
    let w: Vec<f32> = (0..outs).map(|_| rng.normal() as f32).collect();
    let params = world.resource::<Params>().0.data.clone();
    let mut acts = Activations::plan(graph, n);
    tweak(&mut acts);
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    let mut grads = vec![0.0f32; params.len()];
    acts.grads.iter_mut().for_each(|g| g.fill(f32::NAN));
    for _ in 0..2 {
        forward(graph, &params, &mut buffers, &mut acts, &x, n, Mode::Train, 0);
        acts.grads[graph.output.0][..outs].copy_from_slice(&w);
        backward(graph, &params, &mut grads, &mut acts, &x, n, Mode::Train, 0);
    }
    let zeros = grads.iter().filter(|&&g| g == 0.0).count();
    assert!(zeros * 50 < grads.len(), "{zeros} of {} parameter gradients are 0", grads.len());
    (acts.output(graph, n).to_vec(), grads)
}

/// An add shares its output gradient between its inputs only where that is sound (`add_gradient_shares`),
/// and sharing changes no number: outputs and parameter gradients are bitwise those of copying (the plan
/// with every share cleared) on residual nets, transformer blocks and the tricky cases above.
#[test]
fn residual_adds_share_their_gradient_and_keep_every_number() {
    use ecstrain_components::OpKind;
    type Build = fn(&mut World) -> ecstrain_components::Graph;
    let nets: [(&str, Build, &[&str]); 4] = [
        ("residual net", residual_net, &["add"]),
        ("transformer", |w| transformer(w, false, true), &["res1", "res2"]),
        ("causal transformer", |w| transformer(w, true, false), &["res1", "res2"]),
        ("tricky adds", tricky_adds, &["branch", "late_reader", "late_reader.join"]),
    ];
    for (what, build, expected) in nets {
        let mut world = World::new();
        let graph = build(&mut world);
        let shares = super::add_gradient_shares(&graph);
        let sharing: Vec<&str> = graph
            .nodes
            .iter()
            .zip(&shares)
            .filter(|(_, &s)| s)
            .map(|(node, _)| {
                assert!(matches!(node.op, OpKind::Add), "{what}: only adds share");
                node.name.as_str()
            })
            .collect();
        assert_eq!(sharing, expected, "{what}: the adds that share");
        let shared = two_steps(&world, &graph, 3, 5, |_| {});
        let copied = two_steps(&world, &graph, 3, 5, |acts| acts.shares_grad.fill(false));
        assert_eq!(shared, copied, "{what}: sharing changed a number");
    }
}

/// A linear layer whose only reader is the add right after it runs with that add as one kernel
/// (`linear_residual_pairs`), and the outputs and parameter gradients are bitwise those of running them apart.
#[test]
fn linear_residual_pairs_fuse_only_sole_readers_and_keep_every_number() {
    type Build = fn(&mut World) -> ecstrain_components::Graph;
    let nets: [(&str, Build, &[&str], &[&str]); 2] = [
        ("transformer", |w| transformer(w, false, true), &["proj", "fc2"], &["norm2"]),
        ("tricky adds", tricky_adds, &["branch.fc", "self_read.fc", "late_reader.fc", "late_reader.late"], &[]),
    ];
    for (what, build, expected, expected_norms) in nets {
        let mut world = World::new();
        let graph = build(&mut world);
        let pairs = super::linear_residual_pairs(&graph);
        let fused: Vec<&str> = graph
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, node)| pairs[i].map(|a| (i, a, node)))
            .map(|(i, a, node)| {
                assert_eq!(a, i + 1, "{what}: the add right after");
                node.name.as_str()
            })
            .collect();
        assert_eq!(fused, expected, "{what}: the fused linear layers");
        // The layer norms that read a fused pair's sum, run in the same kernel.
        let norms = super::residual_norms(&graph);
        let normed: Vec<&str> = norms.iter().flatten().map(|&l| graph.nodes[l].name.as_str()).collect();
        assert_eq!(normed, expected_norms, "{what}: the fused layer norms");
        let fused = two_steps(&world, &graph, 4, 21, |_| {});
        let apart = two_steps(&world, &graph, 4, 21, |acts| acts.linear_residual.fill(None));
        assert_eq!(fused, apart, "{what}: fusing changed a number");
        let without_norms = two_steps(&world, &graph, 4, 21, |acts| acts.residual_norm.fill(None));
        assert_eq!(fused, without_norms, "{what}: fusing the layer norms changed a number");
    }
}

/// A ViT's token stem (transpose, class token, position embedding) runs as one op (`token_stems`) only where
/// each node is the sole reader of the one before, and the outputs and parameter gradients are bitwise those of
/// the three nodes apart.
#[test]
fn token_stems_fuse_only_sole_readers_and_keep_every_number() {
    let mut world = World::new();
    let graph = transformer(&mut world, false, true);
    let stems = super::token_stems(&graph);
    let found: Vec<&str> =
        graph.nodes.iter().zip(&stems).filter(|(_, s)| s.is_some()).map(|(n, _)| n.name.as_str()).collect();
    assert_eq!(found, ["tokens"]);
    // (The patch embedding in front runs on its own in both: it is checked by the test below.)
    let fused = two_steps(&world, &graph, 3, 8, |acts| acts.patch_stem.fill(None));
    let apart = two_steps(&world, &graph, 3, 8, |acts| {
        acts.patch_stem.fill(None);
        acts.token_stem.fill(None)
    });
    assert_eq!(fused, apart, "fusing the token stem changed a number");
    // Without a class token there is no stem; with a second reader of the tokens neither.
    let mut world = World::new();
    assert!(super::token_stems(&transformer(&mut world, true, false)).iter().all(Option::is_none));
    let mut g = GraphBuilder::new("test", &[8]);
    let x = g.input();
    let x = g.reshape("grid", x, &[2, 4]).unwrap();
    let t = g.permute("tokens", x, &[1, 0]).unwrap();
    let c = g.prepend_token("cls", "cls_token", t).unwrap();
    let y = g.add_param("pos", "pos_embed", c, 0.5);
    let y = g.flatten("flat", y);
    let t = g.flatten("flat_tokens", t);
    let y = g.concat("both", &[y, t], 0).unwrap();
    let out = g.linear("head", y, 2, true).unwrap();
    let mut world = World::new();
    let graph = g.finish(&mut world, out, 3);
    assert!(super::token_stems(&graph).iter().all(Option::is_none), "the tokens have a second reader");
}

/// A patch embedding in front of a token stem runs with it (`patch_stems`) when its image needs no gradient,
/// and the outputs and parameter gradients of two training steps stay within float rounding of the nodes run
/// apart; its finite-difference check passes. No plan without a class token (no stem), when the patches
/// overlap, or when the image needs a gradient.
#[test]
fn patch_stems_run_the_embedding_with_its_stem() {
    let mut world = World::new();
    let graph = transformer(&mut world, false, true);
    let stems = super::patch_stems(&graph);
    let found: Vec<&str> =
        graph.nodes.iter().zip(&stems).filter(|(_, s)| s.is_some()).map(|(n, _)| n.name.as_str()).collect();
    assert_eq!(found, ["patch"]);
    let (out_f, grads_f) = two_steps(&world, &graph, 3, 8, |_| {});
    let (out_a, grads_a) = two_steps(&world, &graph, 3, 8, |acts| acts.patch_stem.fill(None));
    let scale = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let (so, sg) = (scale(&out_a), scale(&grads_a));
    for (i, (a, b)) in out_f.iter().zip(&out_a).enumerate() {
        assert!((a - b).abs() <= 1e-5 * so, "output {i}: {a} vs {b}");
    }
    for (i, (a, b)) in grads_f.iter().zip(&grads_a).enumerate() {
        assert!((a - b).abs() <= 1e-5 * sg, "gradient {i}: {a} vs {b}");
    }
    assert!(grads_f.iter().zip(&grads_a).any(|(a, b)| a != b), "the fused op never ran (identical bits)");
    check_graph(&world, &graph, 2, 1e-2, 3, "transformer with a fused patch embedding");
    // No class token: no token stem, so no patch stem either.
    let mut world = World::new();
    assert!(super::patch_stems(&transformer(&mut world, false, false)).iter().all(Option::is_none));
    // Overlapping patches (stride 1), and an image that needs a gradient (a parameter added first).
    for overlapping in [true, false] {
        let mut g = GraphBuilder::new("test", &[16]);
        let x = g.input();
        let x = g.reshape("input", x, &[1, 4, 4]).unwrap();
        let x = if overlapping { x } else { g.add_param("shift", "shift", x, 0.5) };
        let mut patch = conv(1, 8);
        (patch.kernel, patch.padding) = ((2, 2), (0, 0));
        patch.stride = if overlapping { (1, 1) } else { (2, 2) };
        let x = g.conv2d("patch", x, patch, true).unwrap();
        let p = if overlapping { 9 } else { 4 };
        let x = g.reshape("flat", x, &[8, p]).unwrap();
        let x = g.permute("tokens", x, &[1, 0]).unwrap();
        let x = g.prepend_token("cls", "cls_token", x).unwrap();
        let x = g.add_param("pos", "pos_embed", x, 0.5);
        let x = g.select_token("pool", x, 0).unwrap();
        let out = g.linear("head", x, 3, true).unwrap();
        let mut world = World::new();
        let graph = g.finish(&mut world, out, 3);
        assert!(super::token_stems(&graph).iter().any(Option::is_some));
        assert!(super::patch_stems(&graph).iter().all(Option::is_none), "overlapping {overlapping}");
    }
}
