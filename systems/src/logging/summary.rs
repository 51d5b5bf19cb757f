//! `summary.json` at the end of a run, and the final lines on the terminal.

use std::collections::BTreeMap;

use bevy_ecs::prelude::*;
use ecstrain_components::{Clock, Metrics, RunFailure, RunInfo, RunSettings, RunTimer, StopRequest, TrainingState};
use ecstrain_kernels::cuda::memory::human_bytes;
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
    device_memory: Option<Res<crate::device::DeviceMemory>>,
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
    let gpu_mem_peak = device_memory.as_deref().and_then(crate::device::DeviceMemory::gib).map(|(_, peak)| peak);
    if let Some(peak) = gpu_mem_peak {
        summary["gpu_mem_peak"] = peak.into();
    }
    if let Some(it) = settings.iters {
        summary["max_iters"] = it.max_iters.into();
        summary["iters_per_inner_epoch"] = it.iters_per_inner_epoch.into();
    }
    let text = serde_json::to_string_pretty(&summary).expect("json values serialise") + "\n";
    if let Err(e) = super::write_atomic(&info.dir.join("summary.json"), text.as_bytes()) {
        failure.0.get_or_insert(format!("cannot write summary.json: {e}"));
    }
    let ends = RunEnds { stop_reason: stop.reason.as_deref(), gpu_mem_peak };
    print!("{}", final_summary(&clock, &metrics, &state, &settings, &timer, &info, ends));
}

/// Metric values as a terminal table cell: 4 decimals, or the exponent form for tiny or huge values.
fn cell(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) => format!("{v:.3e}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// How a run ended, beside its clock and metrics: why it stopped early (if it did) and, on CUDA, the most
/// device memory it held (GiB).
#[derive(Clone, Copy, Debug, Default)]
pub struct RunEnds<'a> {
    /// The stop reason (early stopping, a time limit, a signal); `None` for a run that ran its length.
    pub stop_reason: Option<&'a str>,
    /// Peak GiB held on the GPU.
    pub gpu_mem_peak: Option<f64>,
}

/// The final terminal summary: the stop reason, length, wall time and throughput (and the peak GPU memory of
/// a CUDA run), a table of every validation metric at the best epoch and at the end, and where the run
/// directory is.
pub fn final_summary(
    clock: &Clock,
    metrics: &Metrics,
    state: &TrainingState,
    settings: &RunSettings,
    timer: &RunTimer,
    info: &RunInfo,
    ends: RunEnds,
) -> String {
    let RunEnds { stop_reason, gpu_mem_peak } = ends;
    let wall = timer.start.elapsed().as_secs_f64();
    let sps = clock.samples_seen as f64 / timer.train_seconds.max(1e-9);
    let mut out = String::new();
    if let Some(r) = stop_reason {
        out.push_str(&format!("stopped: {r}\n"));
    }
    out.push_str(&format!(
        "done: {} {}, {} steps in {:.2}s (training {:.2}s, {:.0} samples/s{})\n",
        clock.epoch,
        settings.epoch_word(),
        clock.step,
        wall,
        timer.train_seconds,
        sps,
        gpu_mem_peak
            .map(|g| format!(", peak GPU memory {}", human_bytes((g * (1u64 << 30) as f64) as usize)))
            .unwrap_or_default()
    ));
    match (state.best_fitness, state.best_epoch) {
        (Some(f), Some(e)) => {
            out.push_str(&format!("best {} {f:.4} at epoch {}\n", settings.fitness_metric, e + 1));
            let names: std::collections::BTreeSet<&String> =
                metrics.last_val.keys().chain(state.best_metrics.keys()).collect();
            let width = names.iter().map(|n| n.len()).max().unwrap_or(6).max(6);
            let best_head = format!("best (epoch {})", e + 1);
            out.push_str(&format!("  {:<width$}  {:>16}  {:>12}\n", "metric", best_head, "final"));
            for n in names {
                out.push_str(&format!(
                    "  {n:<width$}  {:>16}  {:>12}\n",
                    cell(state.best_metrics.get(n).copied()),
                    cell(metrics.last_val.get(n).copied())
                ));
            }
        }
        _ => out.push_str("no validation result (no val split)\n"),
    }
    out.push_str(&format!("results in {}\n", info.dir.display()));
    out
}
