//! Resuming a run from a checkpoint (`run.resume: true` for `<save_dir>/checkpoints/last.safetensors`, `auto`
//! for the same when it exists (else a fresh run), or a path). A checkpoint written at the end of an epoch
//! continues with the next one; one written mid-epoch by a stop (signal, time limit) continues that epoch at
//! its batch, with the epoch's training meters. Restores parameters by name, the optimizer state arenas, scalars and step, the clock and the
//! fitness tracking, and with `run.ema` the averages and their update count. Every random stream is a pure
//! function of (seed, epoch / micro-step), so restoring the clock
//! restores the data order and dropout masks too: the resumed run continues exactly.

use std::path::{Path, PathBuf};

use bevy_ecs::prelude::*;
use ecstrain_components::{
    Buffers, Clock, EmaWeights, IterPlan, LossScaler, Metrics, OptimizerState, Params, RunSettings, TrainingState,
};
use ecstrain_systems::checkpoint::safetensors_io::load_safetensors;
use ecstrain_systems::checkpoint::{
    decode_meters, decode_scalars, run_loop, CHECKPOINT_FORMAT, MID_EPOCH_KEY, OPTIMIZER_SCALARS_KEY, RUN_LOOP_KEY,
    TRAIN_METERS_KEY,
};

use crate::app::App;

/// Marks an app restored from a mid-epoch checkpoint: the epoch runner continues its epoch at this batch
/// (`Clock::batch_in_epoch`) instead of starting the next one. Taken by the runner.
#[derive(Resource, Clone, Copy, Debug)]
pub struct MidEpochResume(pub u64);

/// True for `run.resume: auto`: resume when `<save_dir>/checkpoints/last.safetensors` exists, else start a
/// fresh run in `save_dir` itself (so a requeued job finds its checkpoint at the same place).
pub fn is_auto(resume: &serde_json::Value) -> bool {
    resume.as_str() == Some("auto")
}

/// The checkpoint a `run.resume` value points at, or `None` for a fresh run.
pub fn resume_path(resume: &serde_json::Value, save_dir: &Path) -> Result<Option<PathBuf>, String> {
    let last = save_dir.join("checkpoints").join("last.safetensors");
    match resume {
        serde_json::Value::Null | serde_json::Value::Bool(false) => Ok(None),
        serde_json::Value::Bool(true) => Ok(Some(last)),
        serde_json::Value::String(s) if s == "auto" => Ok(last.is_file().then_some(last)),
        serde_json::Value::String(s) => Ok(Some(PathBuf::from(s))),
        other => Err(format!("run.resume: expected false, true, auto or a checkpoint path, got {other}")),
    }
}

/// The run directory a checkpoint belongs to (`<dir>/checkpoints/x.safetensors` -> `<dir>`).
pub fn run_dir_of(checkpoint: &Path) -> PathBuf {
    checkpoint.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Loads `path` into the assembled app; every mismatch with the model or optimizer is an error message. Returns
/// notices for what the checkpoint and the run disagree on without an error (EMA averages started afresh or
/// dropped).
pub fn restore(app: &mut App, path: &Path) -> Result<Vec<String>, String> {
    let mut notices = Vec::new();
    if !path.is_file() {
        return Err(format!("run.resume: checkpoint not found: {}", path.display()));
    }
    let ck = load_safetensors(path).map_err(|e| format!("run.resume: {e}"))?;
    let p = path.display();
    if ck.metadata.get("format").map(String::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(format!("run.resume: {p} is not an engine checkpoint (format {CHECKPOINT_FORMAT} expected)"));
    }
    // Parameters and buffers, by name.
    crate::weights::load_model_exact(&mut app.world, &ck, path, "run.resume", "")?;
    // An EMA run saved the averages under the plain names and the training weights under `train.`.
    let saved_with_ema = ck.tensors.keys().any(|k| k.starts_with("train."));
    let updates = ck.metadata.get("ema_updates").and_then(|u| u.parse().ok()).unwrap_or(0);
    let run_has_ema = app.world.contains_resource::<EmaWeights>();
    if run_has_ema && !saved_with_ema {
        notices.push(format!(
            "run.ema: {p} holds no EMA averages (its run had run.ema off); the averages start afresh from its weights"
        ));
    } else if !run_has_ema && saved_with_ema {
        notices.push(format!(
            "run.ema: {p} holds EMA averages, which this run (run.ema off) drops; training continues from its training weights"
        ));
    }
    if run_has_ema {
        let (params, buffers) =
            (app.world.resource::<Params>().0.clone(), app.world.resource::<Buffers>().arena.clone());
        let mut ema = app.world.resource_mut::<EmaWeights>();
        ema.params = params;
        ema.buffers = buffers;
        // From a checkpoint without averages the EMA starts afresh from its weights, as ModelEMA would.
        ema.updates = if saved_with_ema { updates } else { 0 };
    }
    if saved_with_ema {
        crate::weights::load_model_exact(&mut app.world, &ck, path, "run.resume", "train.")?;
    }
    // The loss scale continues where it was (a checkpoint without one leaves the configured initial scale).
    if let (Some(mut scaler), Some(state)) = (
        app.world.get_resource_mut::<LossScaler>(),
        ck.metadata.get("loss_scaler").and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()),
    ) {
        scaler.scale = state["scale"].as_f64().unwrap_or(scaler.scale);
        scaler.good_steps = state["good_steps"].as_u64().unwrap_or(0);
        scaler.skipped = state["skipped"].as_u64().unwrap_or(0);
    }
    // Optimizer state.
    let mut opt = app.world.resource_mut::<OptimizerState>();
    let saved_opt = ck.metadata.get("optimizer").cloned().unwrap_or_default();
    if saved_opt != opt.optimizer {
        return Err(format!(
            "run.resume: {p} was written by optimizer `{saved_opt}`, this run uses `{}`",
            opt.optimizer
        ));
    }
    for (name, arena) in opt.buffers.iter_mut() {
        let key = format!("optimizer.{name}");
        let t = ck.tensors.get(&key).ok_or_else(|| format!("run.resume: {p} has no `{key}`"))?;
        let data = t.data.as_f32().filter(|d| d.len() == arena.len()).ok_or_else(|| {
            format!("run.resume: {p}: `{key}` does not match the parameter arena ({} elements)", arena.len())
        })?;
        arena.data.copy_from_slice(data);
    }
    // Scalar state (NAdam's mu_product). Only optimizers that have scalars need the key, so checkpoints
    // written without it (SGD, AdamW, or before the key existed) still load.
    if !opt.scalars.is_empty() {
        let saved = match ck.metadata.get(OPTIMIZER_SCALARS_KEY) {
            None => Default::default(),
            Some(text) => decode_scalars(text)
                .ok_or_else(|| format!("run.resume: {p}: metadata `{OPTIMIZER_SCALARS_KEY}` is not readable"))?,
        };
        for (name, value) in opt.scalars.iter_mut() {
            *value = *saved
                .get(name)
                .ok_or_else(|| format!("run.resume: {p} has no optimizer scalar `{name}` ({OPTIMIZER_SCALARS_KEY})"))?;
        }
    }
    // Absent in a checkpoint of a run that never stepped its optimizer; present, it must be a step count (a
    // wrong one would restart bias corrections and schedules silently).
    opt.step = match ck.metadata.get("optimizer_step") {
        None => 0,
        Some(s) => {
            s.parse().map_err(|_| format!("run.resume: {p}: metadata `optimizer_step` is not a step count: `{s}`"))?
        }
    };
    // Clock: the checkpoint was written at the end of epoch `clock.epoch`; continue with the next one, at the
    // saved place in the data (an iteration-based run stops mid-pass; an epoch runner starts each pass anew).
    let saved: Clock = ck
        .metadata
        .get("clock")
        .and_then(|c| serde_json::from_str(c).ok())
        .ok_or_else(|| format!("run.resume: {p} has no readable clock"))?;
    let iters = app.world.resource::<RunSettings>().iters;
    let clock = app.world.resource::<Clock>();
    if saved.batches_per_epoch != clock.batches_per_epoch || saved.accumulate != clock.accumulate {
        return Err(format!(
            "run.resume: {p} was written with {} batches per epoch and accumulate {}, this run has {} and {} (batch, nbs or data changed)",
            saved.batches_per_epoch, saved.accumulate, clock.batches_per_epoch, clock.accumulate
        ));
    }
    let mid_epoch = ck.metadata.get(MID_EPOCH_KEY).is_some_and(|v| v == "true");
    if mid_epoch {
        // A stop by signal or time limit: continue the same epoch at the saved batch, in the same kind of loop.
        let this_loop = run_loop(app.world.resource::<RunSettings>());
        let saved_loop = ck.metadata.get(RUN_LOOP_KEY).cloned().unwrap_or_default();
        if saved_loop != this_loop {
            return Err(format!(
                "run.resume: {p} was written mid-epoch by a run with loop `{saved_loop}`, this run's is `{this_loop}` (run.max_iters / run.iters_per_inner_epoch must match)"
            ));
        }
        let meters = ck
            .metadata
            .get(TRAIN_METERS_KEY)
            .and_then(|t| decode_meters(t))
            .ok_or_else(|| format!("run.resume: {p}: metadata `{TRAIN_METERS_KEY}` is missing or not readable"))?;
        app.world.insert_resource(MidEpochResume(saved.batch_in_epoch));
        *app.world.resource_mut::<Clock>() = saved;
        app.world.resource_mut::<Metrics>().train = meters;
    } else {
        check_run_kind(&saved, iters).map_err(|m| format!("run.resume: {p} {m}"))?;
        *app.world.resource_mut::<Clock>() = Clock { epoch: saved.epoch + 1, ..saved };
    }
    // Fitness tracking.
    let training_state = ck.metadata.get("training_state").map(|t| {
        serde_json::from_str::<serde_json::Value>(t)
            .map_err(|e| format!("run.resume: {p}: metadata `training_state` is not readable JSON: {e}"))
    });
    if let Some(ts) = training_state.transpose()? {
        let mut state = app.world.resource_mut::<TrainingState>();
        state.best_fitness = ts["best_fitness"].as_f64();
        state.best_epoch = ts["best_epoch"].as_u64();
        state.epochs_without_improvement = ts["epochs_without_improvement"].as_u64().unwrap_or(0);
        if let Some(m) = ts["best_metrics"].as_object() {
            state.best_metrics = m.iter().filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v))).collect();
        }
    }
    Ok(notices)
}

/// A checkpoint continues exactly only in a run of its own kind: an epoch-based run resumes at the end of a
/// pass over the data, an iteration-based one at the end of one of its inner epochs (the same
/// `iters_per_inner_epoch`).
fn check_run_kind(saved: &Clock, iters: Option<IterPlan>) -> Result<(), String> {
    match iters {
        Some(it) if saved.step != it.end_step(saved.epoch) => Err(format!(
            "was written at step {} after {} epochs, not at the end of an inner epoch of this run (run.max_iters {}, run.iters_per_inner_epoch {}); resume with the run.max_iters / run.iters_per_inner_epoch it was trained with",
            saved.step,
            saved.epoch + 1,
            it.max_iters,
            it.iters_per_inner_epoch
        )),
        None if saved.batch_in_epoch != saved.batches_per_epoch => Err(format!(
            "was written in the middle of a pass over the data (batch {} of {}) by an iteration-based run; resume it with its run.max_iters and run.iters_per_inner_epoch",
            saved.batch_in_epoch, saved.batches_per_epoch
        )),
        _ => Ok(()),
    }
}
