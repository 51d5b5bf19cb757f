//! Model EMA (`run.ema`): the averages follow Ultralytics' ModelEMA update exactly (replayed here from the
//! weights after every optimizer step), checkpoints hold the averages under the model's names and the
//! training weights under `train.`, the best checkpoint is taken on the averaged model, and a resumed run
//! continues both bit for bit (with batch-norm statistics averaged too).

mod common;

use std::path::Path;
use std::sync::Mutex;

use bevy_ecs::prelude::*;
use common::*;
use ecstrain::components::{Clock, Params};
use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner, App};
use ecstrain::systems::checkpoint::safetensors_io::{load_safetensors, LoadedCheckpoint as Checkpoint};
use ecstrain::systems::optim::at_accumulation_boundary;
use ecstrain::systems::schedule::systems::advance_clock;
use ecstrain::systems::sets::{StepSet, TrainStep};

/// (epoch, weights) after every optimizer step.
static STEPS: Mutex<Vec<(u64, Vec<f32>)>> = Mutex::new(Vec::new());

fn probe(params: Res<Params>, clock: Res<Clock>) {
    STEPS.lock().unwrap().push((clock.epoch, params.0.data.clone()));
}

fn f32s(ck: &Checkpoint, name: &str) -> Vec<f32> {
    ck.tensors[name].data.as_f32().unwrap().to_vec()
}

#[test]
fn averages_follow_model_ema_and_checkpoints_hold_them() {
    let dir = scratch("ema");
    let save = dir.join("run");
    let yaml = digits_yaml(&save).replace("epochs: 2", "epochs: 3") + "  ema: true\n  ema_decay: 0.9\n  ema_tau: 5\n";
    let cfg = write_config(&dir, "c.yaml", &yaml);
    let mut app = default_app();
    app.add_plugin(|app: &mut App| {
        app.add_systems(
            TrainStep,
            probe.run_if(at_accumulation_boundary).in_set(StepSet::Schedule).before(advance_clock),
        );
    });
    let asm = assemble(app, load_config(&cfg, &[]).unwrap(), true).unwrap();
    let initial = asm.app.world.resource::<Params>().0.data.clone();
    runner::train(asm).unwrap();

    // Replay: shadow = shadow * d + (1 - d) * weights, in f32, d = 0.9 * (1 - exp(-k / 5)).
    let steps = STEPS.lock().unwrap().clone();
    let mut shadow = initial;
    let mut at_epoch_end = Vec::new();
    for (k, (epoch, w)) in steps.iter().enumerate() {
        let d = 0.9 * (1.0 - (-((k + 1) as f64) / 5.0).exp());
        let (d32, omd32) = (d as f32, (1.0 - d) as f32);
        for (s, &v) in shadow.iter_mut().zip(w) {
            *s = *s * d32 + omd32 * v;
        }
        if steps.get(k + 1).is_none_or(|(e, _)| e != epoch) {
            at_epoch_end.push(shadow.clone());
        }
    }
    assert_eq!(at_epoch_end.len(), 3);
    let last = load_safetensors(&save.join("checkpoints/last.safetensors")).unwrap();
    assert_eq!(last.metadata["ema_updates"], steps.len().to_string());
    let names: Vec<String> = serde_json::from_str(&last.metadata["param_order"]).unwrap();
    let flat = |ck: &Checkpoint, prefix: &str| -> Vec<f32> {
        names.iter().flat_map(|n| f32s(ck, &format!("{prefix}{n}"))).collect()
    };
    assert_eq!(flat(&last, ""), *at_epoch_end.last().unwrap(), "last checkpoint: averages differ from the replay");
    assert_eq!(flat(&last, "train."), steps.last().unwrap().1, "last checkpoint: training weights");
    assert_ne!(flat(&last, ""), flat(&last, "train."), "the averages should lag the weights");
    // The best checkpoint was written during a validation pass: the averages of that epoch.
    let best = load_safetensors(&save.join("checkpoints/best.safetensors")).unwrap();
    let ts: serde_json::Value = serde_json::from_str(&best.metadata["training_state"]).unwrap();
    let e = ts["best_epoch"].as_u64().unwrap() as usize;
    assert_eq!(flat(&best, ""), at_epoch_end[e], "best checkpoint (epoch {e}): not that epoch's averages");
    // `engine eval` of the best checkpoint scores the averages: the best val accuracy the run recorded.
    let out = engine(&["eval", "--config", cfg.to_str().unwrap(), "--checkpoint", "best"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let acc: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("accuracy "))
        .unwrap_or_else(|| panic!("{stdout}"))
        .trim()
        .parse()
        .unwrap();
    let best_acc = ts["best_metrics"]["accuracy"].as_f64().unwrap();
    assert!((acc - best_acc).abs() < 1e-12, "eval of best: accuracy {acc}, recorded {best_acc}");
    // A model trained with EMA loads as `pretrained` from its plain names (the averages).
    let pretrained = format!("  arch: mlp\n  pretrained: {}", save.join("checkpoints/last.safetensors").display());
    let yaml2 = digits_yaml(&dir.join("run2")).replace("epochs: 2", "epochs: 1").replace("  arch: mlp", &pretrained);
    let c2 = write_config(&dir, "c2.yaml", &yaml2);
    let out = engine(&["--config", c2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("unexpected: []"), "train.* must not be reported as unexpected: {}", text(&out));
}

#[test]
fn resnet_with_ema_resumes_exactly() {
    let dir = scratch("ema_resume");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let common = ["model.type=resnet8", "model.width=4", "run.scheduler=constant", "run.seed=5", "run.ema=true"];
    let run = |save: &Path, extra: &[&str]| {
        let mut sets: Vec<String> = common.iter().map(|s| s.to_string()).collect();
        sets.push(format!("run.save_dir={}", save.display()));
        sets.extend(extra.iter().map(|s| s.to_string()));
        let mut args = vec!["--config", "configs/digits_resnet.yaml"];
        for s in &sets {
            args.push("--set");
            args.push(s);
        }
        let out = engine(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    };
    run(&a, &["run.epochs=3"]);
    run(&b, &["run.epochs=2"]);
    run(&b, &["run.epochs=3", "run.resume=true"]);
    let full = load_safetensors(&a.join("checkpoints/last.safetensors")).unwrap();
    let resumed = load_safetensors(&b.join("checkpoints/last.safetensors")).unwrap();
    for k in ["layer1.0.bn2.running_mean", "train.layer1.0.bn2.running_mean", "train.conv1.weight"] {
        assert!(full.tensors.contains_key(k), "missing {k}");
    }
    assert_ne!(full.tensors["layer1.0.bn2.running_mean"], full.tensors["train.layer1.0.bn2.running_mean"]);
    assert_eq!(full.tensors, resumed.tensors, "2 + 1 resumed epochs with EMA differ from 3 uninterrupted epochs");
    assert_eq!(full.metadata["ema_updates"], resumed.metadata["ema_updates"]);
}

#[test]
fn resuming_across_an_ema_change_says_what_happens_to_the_averages() {
    let dir = scratch("ema_switch");
    let run = |save: &Path, extra: &[&str]| {
        let mut args = vec!["--config".to_string(), "configs/digits_mlp.yaml".to_string()];
        let save_dir = format!("run.save_dir={}", save.display());
        for s in ["run.exist_ok=true", save_dir.as_str()].iter().chain(extra) {
            args.push("--set".into());
            args.push(s.to_string());
        }
        let out = engine(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        text(&out)
    };
    let steps_per_epoch = |ck: &Checkpoint| -> u64 {
        let clock: serde_json::Value = serde_json::from_str(&ck.metadata["clock"]).unwrap();
        clock["step"].as_u64().unwrap() / (clock["epoch"].as_u64().unwrap() + 1)
    };
    // Without EMA, then resumed with it: the averages start from the resumed weights and count from zero.
    let a = dir.join("a");
    run(&a, &["run.epochs=1"]);
    let log = run(&a, &["run.epochs=2", "run.resume=true", "run.ema=true"]);
    assert!(log.contains("holds no EMA averages") && log.contains("start afresh"), "{log}");
    let ck = load_safetensors(&a.join("checkpoints/last.safetensors")).unwrap();
    assert!(ck.tensors.contains_key("train.layers.0.weight"));
    assert_eq!(ck.metadata["ema_updates"], steps_per_epoch(&ck).to_string(), "only the resumed epoch's updates");
    // With EMA, then resumed without: the averages are dropped and training continues from the training weights.
    let b = dir.join("b");
    run(&b, &["run.epochs=1", "run.ema=true"]);
    let before = load_safetensors(&b.join("checkpoints/last.safetensors")).unwrap();
    let log = run(&b, &["run.epochs=1", "run.resume=true", "run.epochs=2"]);
    assert!(log.contains("holds EMA averages") && log.contains("drops"), "{log}");
    let after = load_safetensors(&b.join("checkpoints/last.safetensors")).unwrap();
    assert!(!after.tensors.keys().any(|k| k.starts_with("train.")));
    assert!(before.tensors.contains_key("train.layers.0.weight"));
    // Resuming without a change says nothing about EMA.
    let log = run(&a, &["run.epochs=3", "run.resume=true", "run.ema=true"]);
    assert!(!log.contains("run.ema:"), "{log}");
}
