//! `model.fuse: true` (linear + activation pairs as one node) trains bit for bit like the separate ops, end to
//! end through the real binary: same checkpoint tensors after two epochs of a digits MLP with dropout.

mod common;

use common::*;

#[test]
fn fused_and_unfused_runs_end_bit_identical() {
    let dir = scratch("fusion");
    let run = |tag: &str, fuse: &str| {
        let save = dir.join(tag);
        let yaml = digits_yaml(&save).replace("hidden_sizes: [32]", "hidden_sizes: [32, 16]\n  dropout: 0.1");
        let cfg = write_config(&dir, &format!("{tag}.yaml"), &yaml);
        let out = engine(&["--config", cfg.to_str().unwrap(), "--set", &format!("model.fuse={fuse}")]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        ecstrain::systems::checkpoint::safetensors_io::load_safetensors(&save.join("checkpoints/last.safetensors"))
            .unwrap()
    };
    let (fused, plain) = (run("fused", "true"), run("plain", "false"));
    assert!(fused.tensors.contains_key("layers.0.weight"));
    assert_eq!(fused.tensors, plain.tensors, "fusing linear + activation changed the trained weights");
}
