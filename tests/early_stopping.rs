//! Early stopping (`patience`) on a configurable fitness metric and direction: with `fitness: loss,
//! fitness_mode: min` and a learning rate that makes the validation loss climb after its first epochs, the run
//! stops `patience` epochs after the best one, and `best.safetensors` is that epoch's.

mod common;

use common::*;

#[test]
fn patience_stops_on_a_min_metric_and_keeps_the_best_epoch() {
    let dir = scratch("early_stop");
    let save = dir.join("run");
    let yaml = digits_yaml(&save).replace("epochs: 2", "epochs: 40").replace("lr0: 0.001", "lr0: 0.05")
        + "  scheduler: constant\n  patience: 3\n  fitness: loss\n  fitness_mode: min\n";
    let cfg = write_config(&dir, "c.yaml", &yaml);
    let out = engine(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    let reason = summary["stop_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("early stopping"), "no early stop: {summary}");
    // Val losses by epoch (1-based) from metrics.jsonl.
    let losses: Vec<f64> = std::fs::read_to_string(save.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["split"] == "val")
        .map(|r| r["loss"].as_f64().or_else(|| r["values"]["loss"].as_f64()).unwrap())
        .collect();
    let best = losses.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 + 1;
    assert_eq!(summary["best"]["epoch"].as_u64().unwrap() as usize, best, "best epoch is not the lowest val loss");
    assert_eq!(losses.len(), best + 3, "stopped {} epochs after the best, patience is 3", losses.len() - best);
    assert!(losses.len() < 40);
    let ck =
        ecstrain::systems::checkpoint::safetensors_io::load_safetensors(&save.join("checkpoints/best.safetensors"))
            .unwrap();
    let ts: serde_json::Value = serde_json::from_str(&ck.metadata["training_state"]).unwrap();
    assert_eq!(ts["best_epoch"].as_u64().unwrap() as usize + 1, best);
}

#[test]
fn a_fitness_metric_the_validation_does_not_produce_ends_the_run_at_its_first_validation() {
    // Misspelt (or another task's metric): no epoch would ever be "best", so the run stops at once, naming the
    // metrics it could use, instead of training on without a best checkpoint.
    let dir = scratch("unknown_fitness");
    let save = dir.join("run");
    let yaml = digits_yaml(&save).replace("epochs: 2", "epochs: 5") + "  fitness: acuracy\n";
    let cfg = write_config(&dir, "c.yaml", &yaml);
    let out = engine(&["--config", cfg.to_str().unwrap()]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(1), "{msg}");
    assert!(msg.contains("run.fitness: `acuracy` is not a validation metric of this run"), "{msg}");
    assert!(msg.contains("valid choices: accuracy, loss, top5_accuracy"), "{msg}");
    let epochs = std::fs::read_to_string(save.join("metrics.jsonl")).unwrap().matches("\"split\":\"val\"").count();
    assert_eq!(epochs, 1, "validations before the stop");
}
