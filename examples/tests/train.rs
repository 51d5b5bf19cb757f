//! The examples crate's config trains with its extensions installed from outside the engine: the `spirals`
//! dataset, `polar_features` processor, `residual_mlp` model, `margin_classification` task, `signsgd`
//! optimizer and the gradient-statistics plugin all take part, and the run directory has every output.

use std::path::PathBuf;

use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner};
use ecstrain_examples::ExamplesPlugin;

fn config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/spirals.yaml")
}

#[test]
fn the_examples_config_trains_with_every_extension() {
    let dir = std::env::temp_dir().join(format!("ecstrain-examples-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let save = dir.join("run");
    let sets = vec![format!("run.save_dir={}", save.display())];
    let mut app = default_app();
    app.add_plugin(ExamplesPlugin);
    for (kind, name) in [("models", "residual_mlp"), ("datasets", "spirals"), ("tasks", "margin_classification")] {
        let listing = app.registry.listing();
        let names = &listing.iter().find(|(k, _)| *k == kind).unwrap().1;
        assert!(names.iter().any(|(n, _)| n == name), "{name} is not registered");
    }
    let asm = assemble(app, load_config(&config(), &sets).unwrap(), true).unwrap();
    // The processor turned [x, y] into 4 features, and the model was built for them.
    assert!(asm.summary.contains("stem") && asm.summary.contains("[32, 32]"), "{}", asm.summary);
    runner::train(asm).unwrap();

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save.join("summary.json")).unwrap()).unwrap();
    let best = summary["best"]["metrics"]["accuracy"].as_f64().unwrap();
    assert!(best >= 0.9, "best val accuracy {best} < 0.9: {summary}");
    // The plugin's records went through the loggers.
    let jsonl = std::fs::read_to_string(save.join("metrics.jsonl")).unwrap();
    let grads = jsonl.lines().filter(|l| l.contains(r#""split":"grads""#)).count();
    assert!(grads > 10 && jsonl.contains("grad_norm/blocks.1.fc2.weight"), "no grads records");
    let csv = std::fs::read_to_string(save.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 41, "{csv}");
    for f in ["checkpoints/best.safetensors", "loss.png", "confusion_matrix.png", "classes.json"] {
        assert!(save.join(f).is_file(), "missing {f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
