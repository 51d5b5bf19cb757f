//! End to end with every registered optimizer: the digits MLP trains and its validation loss falls; a NAdam
//! run stopped after 2 epochs and resumed to 4 equals an uninterrupted 4-epoch run bit for bit (its scalar
//! state, the running momentum product, travels in the checkpoint).

mod common;

use std::path::Path;

use common::*;
use ecstrain::systems::checkpoint::safetensors_io::load_safetensors;

/// `(run.optimizer as a config would spell it, run.lr0)`: a learning rate each one trains well at in 4 epochs
/// of ~23 steps (RAdam's first 5 steps are un-adapted and Adadelta's early steps tiny, hence their larger
/// values; RMSprop runs with the default `run.momentum` 0.9).
const OPTIMIZERS: [(&str, &str); 9] = [
    ("SGD", "0.05"),
    ("Adam", "0.01"),
    ("AdamW", "0.01"),
    ("Adamax", "0.02"),
    ("NAdam", "0.005"),
    ("RAdam", "0.03"),
    ("RMSProp", "0.001"),
    ("Adagrad", "0.05"),
    ("Adadelta", "10.0"),
];

/// The val losses of a run directory, one per epoch.
fn val_losses(save: &Path) -> Vec<f64> {
    std::fs::read_to_string(save.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["split"] == "val")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn digits_mlp_trains_with_every_optimizer() {
    let dir = scratch("optimizers_train");
    let registered = text(&engine(&["list"]));
    for (name, lr) in OPTIMIZERS {
        assert!(registered.contains(&name.to_ascii_lowercase()), "{name} is not registered:\n{registered}");
        let save = dir.join(name);
        let cfg = write_config(&dir, &format!("{name}.yaml"), &digits_yaml(&save));
        let out = engine(&[
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            &format!("run.optimizer={name}"),
            "--set",
            &format!("run.lr0={lr}"),
            "--set",
            "run.epochs=4",
            "--set",
            "run.scheduler=constant",
        ]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        let losses = val_losses(&save);
        assert_eq!(losses.len(), 4, "{name}: {losses:?}");
        let (first, last) = (losses[0], losses[3]);
        // Well below chance (ln 10 = 2.30) and still falling clearly after the first epoch.
        assert!(last < 0.75 * first && last < 1.0, "{name} (lr {lr}): val loss {losses:?} does not fall");
        println!("{name} (lr {lr}): val loss {losses:.4?}");
    }
}

#[test]
fn nadam_resumed_run_equals_an_uninterrupted_one() {
    let dir = scratch("optimizers_nadam_resume");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let yaml = |save: &Path| {
        digits_yaml(save)
            .replace("optimizer: AdamW", "optimizer: NAdam")
            .replace("epochs: 2", "epochs: 4\n  scheduler: constant\n  weight_decay: 0.05")
            + "  seed: 7\n"
    };
    let ca = write_config(&dir, "a.yaml", &yaml(&a));
    let cb = write_config(&dir, "b.yaml", &yaml(&b));
    let run = |args: &[&str]| {
        let out = engine(args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        text(&out)
    };
    run(&["--config", ca.to_str().unwrap()]);
    run(&["--config", cb.to_str().unwrap(), "--set", "run.epochs=2"]);
    let half = load_safetensors(&b.join("checkpoints/last.safetensors")).unwrap();
    let scalars = &half.metadata["optimizer_scalars"];
    assert!(scalars.contains("mu_product"), "{scalars}");
    let log = run(&["--config", cb.to_str().unwrap(), "--set", "run.resume=true"]);
    assert!(log.contains("resuming from") && log.contains("at epoch 3"), "{log}");
    let full = load_safetensors(&a.join("checkpoints/last.safetensors")).unwrap();
    let resumed = load_safetensors(&b.join("checkpoints/last.safetensors")).unwrap();
    for (name, t) in &full.tensors {
        assert_eq!(Some(t), resumed.tensors.get(name), "`{name}` differs after 2 + 2 resumed epochs");
    }
    assert_eq!(full.tensors.len(), resumed.tensors.len());
    for key in ["optimizer_step", "optimizer_scalars"] {
        assert_eq!(full.metadata[key], resumed.metadata[key], "{key}");
    }
    assert_ne!(half.metadata["optimizer_scalars"], full.metadata["optimizer_scalars"], "mu_product did not advance");
}
