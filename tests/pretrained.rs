//! `model.pretrained` (weights matched by name, with a report and a strict mode) and `model.freeze`.

mod common;

use common::*;
use ecstrain::systems::checkpoint::safetensors_io::load_safetensors;

#[test]
fn pretrained_weights_load_by_name_and_frozen_prefixes_stay_fixed() {
    let dir = scratch("pretrained");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let ca = write_config(&dir, "a.yaml", &digits_yaml(&a));
    let out = engine(&["--config", ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let weights = a.join("checkpoints/last.safetensors");

    let cb = write_config(
        &dir,
        "b.yaml",
        &digits_yaml(&b).replace(
            "  output_size: 10\n",
            &format!("  output_size: 10\n  pretrained: {}\n  strict: true\n  freeze: [layers.0.]\n", weights.display()),
        ),
    );
    let out = engine(&["--config", cb.to_str().unwrap()]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("loaded 4 of 4 tensors") && log.contains("froze 2 parameters"), "{log}");
    assert!(log.contains("330 trainable"), "frozen parameters must not count as trainable:\n{log}");
    let pre = load_safetensors(&weights).unwrap();
    let post = load_safetensors(&b.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(pre.tensors["layers.0.weight"], post.tensors["layers.0.weight"], "a frozen layer changed");
    assert_eq!(pre.tensors["layers.0.bias"], post.tensors["layers.0.bias"], "a frozen layer changed");
    assert_ne!(pre.tensors["layers.2.weight"], post.tensors["layers.2.weight"], "the unfrozen layer did not train");

    // A different architecture: shape mismatch -> exit 2 naming the tensor and both shapes.
    let cc = write_config(
        &dir,
        "c.yaml",
        &digits_yaml(&dir.join("c"))
            .replace("hidden_sizes: [32]", "hidden_sizes: [16]")
            .replace("  output_size: 10\n", &format!("  output_size: 10\n  pretrained: {}\n", weights.display())),
    );
    let out = engine(&["--config", cc.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("layers.0.weight") && text(&out).contains("[16, 64]"), "{}", text(&out));

    // Strict with missing and unexpected names (dropout shifts the output layer from layers.2 to layers.3),
    // and a freeze prefix that matches nothing.
    let cd = write_config(
        &dir,
        "d.yaml",
        &digits_yaml(&dir.join("d")).replace("hidden_sizes: [32]", "hidden_sizes: [32]\n  dropout: 0.1").replace(
            "  output_size: 10\n",
            &format!("  output_size: 10\n  pretrained: {}\n  strict: true\n", weights.display()),
        ),
    );
    let out = engine(&["--config", cd.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let m = text(&out);
    assert!(m.contains("strict") && m.contains("layers.3.weight") && m.contains("layers.2.weight"), "{m}");
    let out = engine(&["--config", cb.to_str().unwrap(), "--set", "model.freeze=[encoder.]"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("`encoder.` matches no parameter") && text(&out).contains("layers.0.weight"),
        "{}",
        text(&out)
    );
}
