//! Half-precision activation storage under autocast (`run.amp`): the storage plan over the shipped models'
//! graphs (no GPU needed), and on a device the planned buffers it gives (the GPU part prints SKIPPED without
//! one; CI runs it on tools/cuda-emu with `ECSTRAIN_REQUIRE_GPU=1`, selecting tests by `cuda` in their names,
//! so every device test here has it). Training under autocast with these
//! buffers is `cuda_e2e`'s `digits_mlp_and_cnn_train_under_autocast_on_cuda`; every half kernel is checked
//! against its rounded CPU reference in its op's module.

mod common;

use common::app_of;
use ecstrain::components::{Graph, OpKind, ValueId};
use ecstrain::kernels::cuda::testing::no_gpu;
use ecstrain::kernels::cuda::StoreKind;
use ecstrain::systems::device::state::GpuState;
use ecstrain::systems::device::storage::storage_plan;

/// Whether `op` has kernels for half storage in the executor (inputs and output).
fn half_capable(op: &OpKind) -> bool {
    matches!(
        op,
        OpKind::Linear { .. }
            | OpKind::Conv2d { .. }
            | OpKind::Activation(_)
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
            | OpKind::Add
            | OpKind::Concat { .. }
            | OpKind::LayerNorm { .. }
            | OpKind::Permute { .. }
            | OpKind::SelectToken { .. }
            | OpKind::PrependToken { .. }
            | OpKind::VectorQuantize { .. }
    )
}

/// Whether `op` is a product (reads either type, writes the autocast type).
fn product(op: &OpKind) -> bool {
    matches!(op, OpKind::Linear { .. } | OpKind::Conv2d { .. })
}

/// Whether `op` reads either type and writes either (layer norm and vector quantization: f32 arithmetic,
/// rounded on store; the token and axis shuffles: copies, rounded on store).
fn converts(op: &OpKind) -> bool {
    matches!(
        op,
        OpKind::LayerNorm { .. }
            | OpKind::Permute { .. }
            | OpKind::SelectToken { .. }
            | OpKind::PrependToken { .. }
            | OpKind::VectorQuantize { .. }
    )
}

/// Whether a converting `op` keeps a half input half (the shuffles without arithmetic or an f32 operand).
fn keeps_type(op: &OpKind) -> bool {
    matches!(op, OpKind::Permute { .. } | OpKind::SelectToken { .. })
}

/// The plan's rules, checked value by value: the input is half only when linear layers alone read it (its
/// half copy: the batch arrives in f32), and the output is half when a product
/// writes it (the logits, as torch's under autocast: the losses read either type); a half value is written by
/// a product, by a converting op (layer norm, the shuffles) whose every reader is a product, or from a half
/// input by an element-wise op or a shuffle; every reader of a half value runs in half storage, an element-wise reader with its output
/// in the same type.
fn check_plan(config: &str, graph: &Graph, kinds: &[StoreKind], h: StoreKind) {
    // The input is kept in half too (a cast of the f32 batch) when only linear layers read it.
    let linear_readers =
        graph.nodes.iter().filter(|n| n.inputs.contains(&ValueId(0))).all(|n| matches!(n.op, OpKind::Linear { .. }));
    let input = if linear_readers { h } else { StoreKind::F32 };
    assert_eq!(kinds[0], input, "{config}: the input's storage");
    let head = graph.nodes.iter().find(|n| n.output == graph.output).expect("a node writes the output");
    if product(&head.op) {
        assert_eq!(kinds[graph.output.0], h, "{config}: the output a product writes is stored half");
    }
    for node in &graph.nodes {
        let out = kinds[node.output.0];
        assert!(out == StoreKind::F32 || out == h, "{config}: a {} value under {} autocast", out.name(), h.name());
        if out == h {
            let for_products = converts(&node.op)
                && graph.nodes.iter().filter(|r| r.inputs.contains(&node.output)).all(|r| product(&r.op));
            let all_half = node.inputs.iter().all(|v| kinds[v.0] == h);
            let from_half = product(&node.op)
                || for_products
                || (keeps_type(&node.op) && all_half)
                || (half_capable(&node.op) && !converts(&node.op) && all_half);
            assert!(from_half, "{config}: {:?} writes a half value", node.op);
        }
        for v in &node.inputs {
            if kinds[v.0] == h {
                assert!(half_capable(&node.op), "{config}: {:?} reads a half value", node.op);
                if !product(&node.op) && !converts(&node.op) && !matches!(node.op, OpKind::Add | OpKind::Concat { .. })
                {
                    assert_eq!(out, h, "{config}: {:?} reads half and writes f32", node.op);
                }
            }
        }
    }
}

/// The plan over the shipped models: its rules hold, nothing is half without autocast, and the values
/// each model should store in half are there: every classifier's logits, the MLP's hidden linear outputs, the CNN's whole feature
/// path (convolutions, activations, pools, the flattening and the hidden linear), the ViT's attention (its
/// fused projection and output, the last block's through its class-token selection), output projections and
/// MLP layers, its patch stem up to the class token (its residual stream stays f32, as `torch.autocast` keeps
/// it) and every layer norm output (each read only by a product: the attention's fused projection, the
/// first MLP layer, the head), the autoencoder's convolutions, its vector quantizer and its decoder's upsampling, and all of the ResNet from its stem to its
/// head (batch norms, residual sums and the pooling keep a half input's type, as torch's do).
#[test]
fn storage_plan_stores_the_autocast_policy_half_values() {
    let expect_half: [(&str, usize); 6] = [
        ("configs/digits_mlp.yaml", 3),
        ("configs/bench_w1_mlp.yaml", 3),
        ("configs/digits_cnn.yaml", 9),
        ("configs/digits_vit.yaml", 20),
        ("configs/digits_resnet.yaml", 30),
        ("configs/digits_autoencoder.yaml", 16),
    ];
    for (config, _) in expect_half {
        let app = app_of(config, "cpu", &[]);
        let graph = app.world.resource::<Graph>();
        assert!(storage_plan(graph, None).iter().all(|&k| k == StoreKind::F32), "{config}: half without autocast");
        for h in [StoreKind::F16, StoreKind::Bf16] {
            let kinds = storage_plan(graph, Some(h));
            check_plan(config, graph, &kinds, h);
            let half: Vec<ValueId> = (0..kinds.len()).filter(|&v| kinds[v] == h).map(ValueId).collect();
            eprintln!("{config} {}: {} of {} values stored half", h.name(), half.len(), kinds.len());
        }
    }
    for config in ["configs/digits_vit.yaml", "configs/bench_w3_vit.yaml"] {
        let app = app_of(config, "cpu", &[]);
        let graph = app.world.resource::<Graph>();
        let kinds = storage_plan(graph, Some(StoreKind::F16));
        let norms: Vec<_> = graph.nodes.iter().filter(|n| matches!(n.op, OpKind::LayerNorm { .. })).collect();
        assert!(!norms.is_empty(), "{config}: no layer norm");
        for node in norms {
            assert_eq!(kinds[node.output.0], StoreKind::F16, "{config}: layer norm output {}", node.output.0);
            assert_eq!(kinds[node.inputs[0].0], StoreKind::F32, "{config}: the residual stream is f32");
        }
        // The attention of every block (the last one's too, read through its class-token selection) and the
        // patch stem up to the class token, which joins the f32 stream.
        for node in &graph.nodes {
            let out = kinds[node.output.0];
            match node.op {
                OpKind::Attention { .. } | OpKind::Conv2d { .. } | OpKind::Permute { .. } => {
                    assert_eq!(out, StoreKind::F16, "{config}: {:?} output", node.op)
                }
                OpKind::PrependToken { .. } => {
                    assert_eq!(kinds[node.inputs[0].0], StoreKind::F16, "{config}: the patch tokens");
                    assert_eq!(out, StoreKind::F32, "{config}: the class token joins the f32 stream");
                }
                _ => {}
            }
        }
    }
    for (config, want) in expect_half {
        let app = app_of(config, "cpu", &[]);
        let graph = app.world.resource::<Graph>();
        let half = storage_plan(graph, Some(StoreKind::Bf16)).iter().filter(|&&k| k == StoreKind::Bf16).count();
        assert!(half >= want, "{config}: {half} half values, expected at least {want}");
    }
}

/// On the device the activation buffers follow the plan: under f16 and bf16 autocast the half values (and
/// their gradients) take two bytes an element, so the value and gradient buffers shrink by exactly the
/// half values' share, plus the MLP's half copy of its input (read only by linear layers); without
/// autocast, and under TF32, they are f32.
#[test]
fn cuda_activation_buffers_follow_the_storage_plan() {
    if no_gpu("cuda_activation_buffers_follow_the_storage_plan") {
        return;
    }
    for config in [
        "configs/digits_mlp.yaml",
        "configs/digits_cnn.yaml",
        "configs/digits_vit.yaml",
        "configs/digits_resnet.yaml",
        "configs/digits_autoencoder.yaml",
    ] {
        let f32_app = app_of(config, "cuda", &[]);
        let (f32_bytes, capacity) = {
            let g = f32_app.world.resource::<GpuState>();
            assert!(g.acts.kinds.iter().all(|&k| k == StoreKind::F32), "{config}: half storage without autocast");
            (g.acts.activation_bytes(), g.acts.capacity)
        };
        let tf32 = app_of(config, "cuda", &["run.tf32=true"]);
        assert_eq!(tf32.world.resource::<GpuState>().acts.activation_bytes(), f32_bytes, "{config}: TF32 storage");
        for (amp, h) in [("f16", StoreKind::F16), ("bf16", StoreKind::Bf16)] {
            let app = app_of(config, "cuda", &[&format!("run.amp={amp}")]);
            let graph = app.world.resource::<Graph>();
            let g = app.world.resource::<GpuState>();
            let kinds = storage_plan(graph, Some(h));
            assert_eq!(g.acts.kinds, kinds, "{config} {amp}: the device plan is the storage plan");
            // Values the nodes write (the input's half copy, if any, is added below: it has no f32 twin).
            let half_elems: usize =
                (1..kinds.len()).filter(|&v| kinds[v] == h).map(|v| graph.values[v].numel() * capacity).sum();
            assert!(half_elems > 0, "{config} {amp}: no value stored half");
            let input_copy = if kinds[0] == h { 2 * graph.values[0].numel() * capacity } else { 0 };
            assert_eq!(kinds[0] == h, config.contains("mlp"), "{config} {amp}: the input's half copy");
            for (v, kind) in kinds.iter().enumerate() {
                let buf_kind = |b: &Option<ecstrain::kernels::cuda::AnyBuf>| b.as_ref().map(|b| b.kind());
                if let Some(k) = buf_kind(&g.acts.values[v]) {
                    assert_eq!(k, *kind, "{config} {amp}: value {v}'s buffer");
                    let grad = if v == 0 { None } else { Some(*kind) }; // the input has no gradient
                    assert_eq!(buf_kind(&g.acts.grads[v]), grad, "{config} {amp}: gradient {v}'s buffer");
                }
            }
            // Each half value and its gradient: 2 bytes an element instead of 4.
            let bytes = g.acts.activation_bytes();
            eprintln!("{config} {amp}: activation buffers {bytes} bytes (f32 storage {f32_bytes})");
            assert_eq!(bytes, f32_bytes - 2 * 2 * half_elems + input_copy, "{config} {amp}: activation bytes");
        }
    }
}

/// A model joining branches by concatenation (no shipped model has one): two linear branches of the input
/// concatenated (both half under autocast, so the concatenation is half), the input beside one branch (an
/// f32 piece: the concatenation promotes to f32, as torch's cat does), each joined into a sum, then a head.
fn branches(
    _options: &serde_json::Value,
    input_shape: &[usize],
) -> Result<ecstrain::systems::models::BuiltModel, String> {
    use ecstrain::components::Activation;
    let e = |e: ecstrain::systems::graph::GraphError| e.to_string();
    let mut g = ecstrain::systems::graph::GraphBuilder::new("branches", input_shape);
    let x = g.input();
    let a = g.linear("a", x, 32, true).map_err(e)?;
    let a = g.activation("a_act", a, Activation::Relu);
    let b = g.linear("b", x, 32, true).map_err(e)?;
    let halves = g.concat("halves", &[a, b], 0).map_err(e)?;
    let mixed = g.concat("mixed", &[x, b], 0).map_err(e)?;
    let p = g.linear("p", halves, 24, true).map_err(e)?;
    let q = g.linear("q", mixed, 24, true).map_err(e)?;
    let s = g.add("join", p, q).map_err(e)?;
    let s = g.activation("act", s, Activation::Relu);
    let output = g.linear("head", s, 10, true).map_err(e)?;
    Ok(ecstrain::systems::models::BuiltModel { builder: g, output })
}

/// The `branches` model on the digits on `device` with `more` overrides, assembled in process.
fn branches_app(device: &str, more: &[&str]) -> ecstrain::engine::app::App {
    use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config};
    let root = common::repo();
    std::env::set_current_dir(&root).unwrap();
    let data = |f: &str| root.join("data/digits").join(f).display().to_string();
    let yaml = format!(
        "model:\n  arch: branches\ndatasets:\n  digits:\n    builder: npy\n    train:\n      x: {}\n      y: {}\n    val:\n      x: {}\n      y: {}\nrun:\n  task: classification\n  epochs: 1\n  batch: 64\n  optimizer: AdamW\n  lr0: 0.003\n  scheduler: constant\n  warmup_epochs: 0\n  seed: 3\n  save_dir: runs/branches\n",
        data("train_x.npy"),
        data("train_y.npy"),
        data("val_x.npy"),
        data("val_y.npy")
    );
    let path = std::env::temp_dir().join(format!("ecstrain-branches-{}-{device}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let mut sets = vec!["run.log_interval=1000000".to_string(), format!("run.device={device}")];
    sets.extend(more.iter().map(|s| s.to_string()));
    let loaded = load_config(&path, &sets).unwrap();
    std::fs::remove_file(&path).ok();
    let mut app = default_app();
    app.registry.register_model(
        "branches",
        ecstrain::engine::registry::ModelEntry { build: branches, presets: &[], doc: "two branches, concatenated" },
    );
    let mut app = assemble(app, loaded, true).unwrap().app;
    let sink = std::fs::File::create("/dev/null").unwrap();
    app.world.insert_resource(ecstrain::systems::logging::jsonl::JsonlLog(std::io::BufWriter::new(sink)));
    app
}

/// The training loss meter's mean after `steps` micro-batches.
fn mean_loss_after(app: &mut ecstrain::engine::app::App, steps: usize) -> f64 {
    for _ in 0..steps {
        ecstrain::engine::runner::train_step(app);
    }
    let failure = app.world.resource::<ecstrain::components::RunFailure>().0.clone();
    assert!(failure.is_none(), "a step failed: {failure:?}");
    if app.world.contains_resource::<ecstrain::systems::device::loss::DeviceLoss>() {
        app.world.run_system_cached(ecstrain::systems::device::loss::gpu_flush_train_loss).unwrap();
    }
    let m = app.world.resource::<ecstrain::components::Metrics>();
    m.train.get("loss").map(|m| m.sum / m.count).expect("a training loss")
}

/// Concatenation under autocast: two half pieces give a half value, an f32 piece beside a half one gives
/// f32 (the plan); on the device the concatenations run in those types, forward and backward (the f32 run
/// matches the CPU's losses to 1e-5, bf16 and f16 stay within 2% of them over 40 steps of training).
#[test]
fn concatenation_promotes_as_torch_cat_and_trains_on_cuda_in_half_storage() {
    let cpu = branches_app("cpu", &[]);
    let graph = cpu.world.resource::<Graph>();
    let kinds = storage_plan(graph, Some(StoreKind::Bf16));
    check_plan("branches", graph, &kinds, StoreKind::Bf16);
    let by_name = |name: &str| {
        let node = graph.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"));
        kinds[node.output.0]
    };
    assert_eq!(by_name("halves"), StoreKind::Bf16, "two half pieces concatenate in half");
    assert_eq!(by_name("mixed"), StoreKind::F32, "an f32 piece promotes the concatenation to f32");
    assert_eq!(by_name("b"), StoreKind::Bf16, "a half piece of an f32 concatenation stays half");
    drop(cpu);
    if no_gpu("concatenation_promotes_as_torch_cat_and_trains_on_cuda_in_half_storage") {
        return;
    }
    const STEPS: usize = 40;
    let want = mean_loss_after(&mut branches_app("cpu", &[]), STEPS);
    let got = mean_loss_after(&mut branches_app("cuda", &[]), STEPS);
    eprintln!("branches: mean training loss over {STEPS} steps: cpu {want:.6}, cuda f32 {got:.6}");
    assert!((got - want).abs() <= 1e-5 * want, "cuda f32 {got} vs cpu {want}");
    for amp in ["bf16", "f16"] {
        let got = mean_loss_after(&mut branches_app("cuda", &[&format!("run.amp={amp}")]), STEPS);
        eprintln!("branches: cuda {amp} {got:.6}");
        assert!((got - want).abs() <= 0.02 * want, "cuda {amp} {got} vs cpu {want}");
    }
}

/// Under autocast the start-up notices say what the storage plan keeps in half precision (as Lightning
/// names its precision plugin): for the digits MLP under bf16 and f16, the buffers the plan stores in the
/// half type out of all it plans, and their bytes beside those of f32 storage; without autocast, no such line.
#[test]
fn cuda_autocast_states_its_half_storage_at_start_up() {
    if no_gpu("cuda_autocast_states_its_half_storage_at_start_up") {
        return;
    }
    use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config};
    let config = common::repo().join("configs/digits_mlp.yaml");
    for (amp, h) in [("off", None), ("bf16", Some(StoreKind::Bf16)), ("f16", Some(StoreKind::F16))] {
        let sets = ["run.device=cuda".to_string(), format!("run.amp={amp}")];
        let built = assemble(default_app(), load_config(&config, &sets).unwrap(), true).unwrap();
        let line = built.notices.iter().find(|n| n.starts_with("autocast "));
        let Some(h) = h else {
            assert!(line.is_none(), "amp off: {line:?}");
            continue;
        };
        let line = line.unwrap_or_else(|| panic!("amp {amp}: no autocast notice in {:?}", built.notices));
        let g = built.app.world.resource::<GpuState>();
        let graph = built.app.world.resource::<Graph>();
        // The plan's half values (the logits, the hidden layers' outputs, the input's copy) among the
        // buffers planned: every value a node writes, and the input's copy.
        let in_half = storage_plan(graph, Some(h)).iter().filter(|&&k| k == h).count();
        let planned = graph.nodes.len() + 1;
        let mib = g.acts.activation_bytes() as f64 / 1048576.0;
        let want = format!("autocast {amp}: {in_half} of {planned} activation buffers in {amp}, {mib:.1} MiB");
        eprintln!("{line}");
        assert!(line.starts_with(&want), "amp {amp}: {line:?}, expected it to start with {want:?}");
    }
}
