//! Weights written by PyTorch reproduce PyTorch's outputs: the fixtures in tests/fixtures (made by
//! make_torch_fixtures.py from PyTorch twins of the models, with non-trivial norm parameters and running
//! statistics) load through `model.pretrained` in strict mode, and the engine's eval-mode forward matches the
//! saved PyTorch output within 1e-4 relative. Also: a ViT position embedding trained for a 4x4 patch grid is
//! interpolated to a 6x6 grid exactly as BLIP-2's `interpolate_pos_embed` does.

use std::path::PathBuf;

use bevy_ecs::world::World;
use ecstrain::components::{Buffers, Mode, ParamInfo, ParamSlice, Params};
use ecstrain::engine::weights::load_pretrained;
use ecstrain::systems::checkpoint::safetensors_io::load_safetensors;
use ecstrain::systems::graph::{forward, Activations};
use ecstrain::systems::models::{self, BuiltModel};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Builds `model` for flat 64-feature samples, loads `torch_<name>.safetensors` strictly, runs the fixture
/// input through it in eval mode and compares with PyTorch's output.
fn check(name: &str, model: BuiltModel) {
    let mut world = World::new();
    let graph = model.builder.finish(&mut world, model.output, 0);
    let report = load_pretrained(&mut world, &fixture(&format!("torch_{name}.safetensors")), true)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(report.contains("missing: []; unexpected: []"), "{name}: {report}");
    let io = load_safetensors(&fixture(&format!("torch_{name}_io.safetensors"))).unwrap();
    let x = io.tensors["input"].data.as_f32().unwrap();
    let want = io.tensors["output"].data.as_f32().unwrap();
    let n = io.tensors["input"].shape[0];
    let mut acts = Activations::plan(&graph, n);
    let params = world.resource::<Params>().0.data.clone();
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    forward(&graph, &params, &mut buffers, &mut acts, x, n, Mode::Eval, 0);
    let got = acts.output(&graph, n);
    assert_eq!(got.len(), want.len(), "{name}: output size");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * scale, "{name}: output[{i}] = {g}, PyTorch {w} (scale {scale})");
    }
}

fn build(f: models::ModelBuildFn, opts: serde_json::Value) -> BuiltModel {
    f(&opts, &[64]).unwrap()
}

#[test]
fn mlp_reproduces_pytorch() {
    check(
        "mlp",
        build(
            models::mlp::build,
            json!({"input_size": 64, "hidden_sizes": [32, 16], "activation": "gelu", "output_size": 10}),
        ),
    );
}

#[test]
fn cnn_reproduces_pytorch() {
    let preset: serde_json::Value = serde_json::from_str(models::cnn::PRESETS[1].1).unwrap();
    check("cnn", build(models::cnn::build, preset));
}

fn vit_options(size: usize) -> serde_json::Value {
    json!({"input_shape": [1, size, size], "patch": 2, "dim": 32, "depth": 2, "heads": 4, "mlp_ratio": 2.0,
           "pool": "cls", "output_size": 10})
}

#[test]
fn vit_reproduces_pytorch() {
    check("vit", build(models::vit::build, vit_options(8)));
}

#[test]
fn resnet_with_running_statistics_reproduces_pytorch() {
    check(
        "resnet",
        build(models::resnet::build, json!({"depth": 8, "width": 4, "input_shape": [1, 8, 8], "output_size": 10})),
    );
}

#[test]
fn vit_position_embedding_is_interpolated_to_a_larger_grid_like_blip2() {
    let m = models::vit::build(&vit_options(12), &[144]).unwrap();
    let mut world = World::new();
    m.builder.finish(&mut world, m.output, 0);
    let report = load_pretrained(&mut world, &fixture("torch_vit.safetensors"), false).unwrap();
    assert!(report.contains("from a 4x4 to a 6x6 patch grid"), "{report}");
    let want = load_safetensors(&fixture("torch_vit_pos6x6.safetensors")).unwrap();
    let want = want.tensors["pos_embed"].data.as_f32().unwrap().to_vec();
    let slice = world
        .query::<(&ParamInfo, &ParamSlice)>()
        .iter(&world)
        .find(|(i, _)| i.name == "pos_embed")
        .map(|(_, s)| *s)
        .unwrap();
    let got = world.resource::<Params>().0.get(slice);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-6, "pos_embed[{i}] = {g}, PyTorch {w}");
    }
}

#[test]
fn position_embeddings_without_a_common_grid_are_a_shape_mismatch_not_a_resize() {
    // The fixture is a class-token ViT (1 + 4x4 tokens); a mean-pooled model has 4x4 tokens and no class
    // token: no extra-token count leaves a square grid in both, so loading names the mismatch (it once took
    // 16 extra tokens and an empty grid for a match, and panicked resizing it).
    let mut o = vit_options(8);
    o["pool"] = json!("mean");
    let m = models::vit::build(&o, &[64]).unwrap();
    let mut world = World::new();
    m.builder.finish(&mut world, m.output, 0);
    let e = load_pretrained(&mut world, &fixture("torch_vit.safetensors"), false).unwrap_err();
    assert!(e.contains("pos_embed") && e.contains("16"), "{e}");
}
