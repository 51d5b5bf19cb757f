//! `summary.json` at the end of a run, and the final lines on the terminal.

use std::collections::BTreeMap;

use bevy_ecs::prelude::*;
use ecstrain_components::{Clock, Metrics, RunFailure, RunInfo, RunSettings, RunTimer, StopRequest, TrainingState};
use serde_json::json;

fn finite_map(m: &BTreeMap<String, f64>) -> serde_json::Value {
    serde_json::Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into)))
            .collect(),
    )
}

/// RunEnd: writes `summary.json` (final and best metrics, throughput, wall time) and prints a summary.
#[allow(clippy::too_many_arguments)]
pub fn write_summary(
    clock: Res<Clock>,
    metrics: Res<Metrics>,
    state: Res<TrainingState>,
    settings: Res<RunSettings>,
    timer: Res<RunTimer>,
    info: Res<RunInfo>,
    stop: Res<StopRequest>,
    mut failure: ResMut<RunFailure>,
) {
    let wall = timer.start.elapsed().as_secs_f64();
    let sps = clock.samples_seen as f64 / timer.train_seconds.max(1e-9);
    let mut summary = json!({
        "epochs_completed": clock.epoch,
        "epochs": settings.epochs,
        "steps": clock.step,
        "samples_seen": clock.samples_seen,
        "wall_time_s": wall,
        "train_time_s": timer.train_seconds,
        "samples_per_s": sps,
        "fitness_metric": settings.fitness_metric,
        "final": finite_map(&metrics.last_val),
        "best": {
            "epoch": state.best_epoch.map(|e| e + 1),
            "fitness": state.best_fitness,
            "metrics": finite_map(&state.best_metrics),
        },
        "stop_reason": stop.reason,
        "run_dir": info.dir.display().to_string(),
    });
    if let Some(it) = settings.iters {
        summary["max_iters"] = it.max_iters.into();
        summary["iters_per_inner_epoch"] = it.iters_per_inner_epoch.into();
    }
    let text = serde_json::to_string_pretty(&summary).expect("json values serialise") + "\n";
    if let Err(e) = super::write_atomic(&info.dir.join("summary.json"), text.as_bytes()) {
        failure.0.get_or_insert(format!("cannot write summary.json: {e}"));
    }
    if let Some(r) = &stop.reason {
        println!("stopped: {r}");
    }
    let best = state
        .best_fitness
        .map(|f| format!("best {} {f:.4} at epoch {}", settings.fitness_metric, state.best_epoch.map_or(0, |e| e + 1)))
        .unwrap_or_else(|| "no validation result".into());
    let fin = metrics
        .last_val
        .get(&settings.fitness_metric)
        .map(|v| format!("final {} {v:.4}", settings.fitness_metric))
        .unwrap_or_default();
    println!(
        "done: {} {}, {} steps in {:.2}s ({:.0} samples/s)  {best}  {fin}\nresults in {}",
        clock.epoch,
        settings.epoch_word(),
        clock.step,
        wall,
        sps,
        info.dir.display()
    );
}
