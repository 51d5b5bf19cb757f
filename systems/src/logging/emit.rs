//! Systems that produce [`MetricEvent`]s from meters and the clock.

use std::collections::BTreeMap;

use bevy_ecs::prelude::*;
use ecstrain_components::{
    Clock, DataWait, LearningRate, MetricEvent, Metrics, RunSettings, RunTimer, StopRequest, TrainingState,
};

use crate::device::DeviceMemory;
use crate::parallel::{reduce_meters, Comm, ReduceTiming};
use crate::schedule::systems::Scheduler;

/// The training meters over every rank of a data-parallel run (this rank's alone otherwise).
fn global_train_meters(metrics: &Metrics, comm: Option<&Comm>) -> BTreeMap<String, ecstrain_components::Meter> {
    match comm {
        Some(c) => reduce_meters(c.0.as_ref(), &metrics.train),
        None => metrics.train.clone(),
    }
}

/// Records `lr`, and `bias_lr` / `momentum` when the run's schedule drives them (an Ultralytics warm-up,
/// one-cycle), so a log shows every value the schedule sets.
fn insert_schedule_values(values: &mut BTreeMap<String, f64>, lr: &LearningRate, scheduler: Option<&Scheduler>) {
    values.insert("lr".to_string(), lr.lr);
    let Some(s) = scheduler else { return };
    if s.0.separate_bias_lr() {
        values.insert("bias_lr".to_string(), lr.bias_lr);
    }
    if s.0.drives_momentum() {
        values.insert("momentum".to_string(), lr.momentum);
    }
}

/// Run condition: an optimizer step that is a multiple of `log_interval` just completed, or the epoch ended.
pub fn at_log_interval(clock: Res<Clock>, settings: Res<RunSettings>, mut last_logged: Local<Option<u64>>) -> bool {
    // `advance_clock` ran already, so `step` counts the step that just finished.
    let end_of_epoch = match settings.iters {
        // An inner epoch ends on the micro-batch that completes its last step (`batch_in_epoch` >= 1 here).
        Some(it) => {
            let stepped = clock.batch_in_epoch.is_multiple_of(clock.accumulate.max(1))
                || clock.batch_in_epoch == clock.batches_per_epoch;
            stepped && it.ends_inner_epoch(clock.step)
        }
        None => clock.batch_in_epoch == clock.batches_per_epoch,
    };
    let new_step = *last_logged != Some(clock.step);
    let due = end_of_epoch || (new_step && clock.step > 0 && clock.step.is_multiple_of(settings.log_interval.max(1)));
    if due {
        *last_logged = Some(clock.step);
    }
    due
}

/// `data_wait` (mean seconds a training step waited for its batch) and `data_wait_frac` (the waits' share of
/// `wall` seconds) from a (seconds, steps) total; nothing when no step was recorded.
fn insert_data_wait(values: &mut BTreeMap<String, f64>, (seconds, steps): (f64, u64), wall: f64) {
    if steps > 0 {
        values.insert("data_wait".to_string(), seconds / steps as f64);
        values.insert("data_wait_frac".to_string(), (seconds / wall.max(1e-9)).clamp(0.0, 1.0));
    }
}

/// `gpu_mem`: GiB a CUDA run holds on its device (Ultralytics' `GPU_mem` column); nothing on the CPU.
fn insert_device_memory(values: &mut BTreeMap<String, f64>, memory: Option<&DeviceMemory>) {
    if let Some((held, _)) = memory.and_then(DeviceMemory::gib) {
        values.insert("gpu_mem".to_string(), held);
    }
}

/// Log (training): one `train` record with the epoch's running loss (over every rank), the lr (with the bias
/// lr and momentum where the schedule drives them) for the next step, and the throughput (of all ranks), data
/// wait and, in a data-parallel run, the all-reduce time per step (`allreduce_s`) and the part of it the training
/// thread waited for (`allreduce_wait_s`: less when the all-reduce overlaps the backward) since the previous
/// record, and on CUDA the device memory the run holds (`gpu_mem`, GiB).
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn emit_train_record(
    clock: Res<Clock>,
    metrics: Res<Metrics>,
    comm: Option<Res<Comm>>,
    reduce: Option<ResMut<ReduceTiming>>,
    lr: Res<LearningRate>,
    grad_norm: Option<Res<crate::optim::clip::GradNorm>>,
    scaler: Option<Res<ecstrain_components::LossScaler>>,
    scheduler: Option<Res<Scheduler>>,
    device_memory: Option<Res<DeviceMemory>>,
    mut timer: ResMut<RunTimer>,
    mut wait: ResMut<DataWait>,
    mut out: MessageWriter<MetricEvent>,
) {
    let now = std::time::Instant::now();
    let (t0, s0) = timer.last_log;
    let dt = now.duration_since(t0).as_secs_f64().max(1e-9);
    let mut values = BTreeMap::new();
    if let Some(m) = global_train_meters(&metrics, comm.as_deref()).get("loss") {
        values.insert("loss".to_string(), m.mean());
    }
    insert_schedule_values(&mut values, &lr, scheduler.as_deref());
    let world = comm.as_ref().map_or(1, |c| c.0.world());
    if let (true, Some(mut r)) = (world > 1, reduce) {
        if r.interval_steps > 0 {
            let steps = r.interval_steps as f64;
            values.insert("allreduce_s".to_string(), r.interval_seconds / steps);
            values.insert("allreduce_wait_s".to_string(), r.interval_wait_seconds / steps);
        }
        (r.interval_seconds, r.interval_wait_seconds, r.interval_steps) = (0.0, 0.0, 0);
    }
    if let Some(g) = grad_norm.and_then(|g| g.0) {
        values.insert("grad_norm".to_string(), g);
    }
    if let Some(s) = scaler {
        values.insert("loss_scale".to_string(), s.scale);
    }
    // Every rank trains on as many samples per step (the sampler pads its share), so the run's throughput is
    // this rank's times the world.
    values.insert("samples_per_s".to_string(), (clock.samples_seen - s0) as f64 * world as f64 / dt);
    insert_data_wait(&mut values, std::mem::take(&mut wait.interval), dt);
    insert_device_memory(&mut values, device_memory.as_deref());
    timer.last_log = (now, clock.samples_seen);
    out.write(MetricEvent { split: "train".into(), step: clock.step, epoch: clock.epoch, values });
}

/// ValidationEnd / Summarize: validation meters -> `Metrics::last_val`, and a `val` record.
pub fn summarize_validation(clock: Res<Clock>, mut metrics: ResMut<Metrics>, mut out: MessageWriter<MetricEvent>) {
    let values: BTreeMap<String, f64> = metrics.val.iter().map(|(k, m)| (k.clone(), m.mean())).collect();
    for m in metrics.val.values_mut() {
        m.reset();
    }
    metrics.last_val = values.clone();
    out.write(MetricEvent { split: "val".into(), step: clock.step, epoch: clock.epoch, values });
}

/// ValidationEnd / Fitness: tracks the best fitness and requests a stop after `patience` validations without
/// improvement (Ultralytics' EarlyStopping; one validation per epoch or inner epoch by default). A fitness
/// metric that the validation does not produce (`run.fitness` misspelt, or a metric of another task) ends
/// the run at its first validation with the metrics it could have named: training on would never keep a
/// best checkpoint.
pub fn update_fitness(
    clock: Res<Clock>,
    metrics: Res<Metrics>,
    settings: Res<RunSettings>,
    mut state: ResMut<TrainingState>,
    mut stop: ResMut<StopRequest>,
    mut failure: ResMut<ecstrain_components::RunFailure>,
) {
    let Some(&f) = metrics.last_val.get(&settings.fitness_metric) else {
        state.improved = false;
        if !metrics.last_val.is_empty() && failure.0.is_none() {
            let names: Vec<&str> = metrics.last_val.keys().map(String::as_str).collect();
            failure.0 = Some(format!(
                "run.fitness: `{}` is not a validation metric of this run; valid choices: {}",
                settings.fitness_metric,
                names.join(", ")
            ));
        }
        return;
    };
    let better = match state.best_fitness {
        None => f.is_finite(),
        Some(b) => {
            if settings.fitness_maximize {
                f > b
            } else {
                f < b
            }
        }
    };
    state.improved = better;
    if better {
        state.best_fitness = Some(f);
        state.best_epoch = Some(clock.epoch);
        state.best_metrics = metrics.last_val.clone();
        state.epochs_without_improvement = 0;
    } else {
        state.epochs_without_improvement += 1;
        if settings.patience > 0 && state.epochs_without_improvement >= settings.patience && stop.reason.is_none() {
            stop.reason = Some(format!(
                "early stopping: no improvement of {} for {} {} (best at epoch {})",
                settings.fitness_metric,
                settings.patience,
                settings.epoch_word(),
                state.best_epoch.map_or(0, |e| e + 1)
            ));
        }
    }
}

/// EpochEnd: one `epoch` record (training loss of the epoch over every rank, latest validation metrics prefixed `val_`, lr
/// (bias lr, momentum) as in the train record, epoch time, the epoch's data wait, `gpu_mem` on CUDA), then
/// resets the training meters.
#[allow(clippy::too_many_arguments)] // a system's parameters are its data dependencies
pub fn emit_epoch_record(
    clock: Res<Clock>,
    mut metrics: ResMut<Metrics>,
    comm: Option<Res<Comm>>,
    lr: Res<LearningRate>,
    scheduler: Option<Res<Scheduler>>,
    timer: Res<RunTimer>,
    device_memory: Option<Res<DeviceMemory>>,
    mut wait: ResMut<DataWait>,
    mut out: MessageWriter<MetricEvent>,
) {
    let mut values = BTreeMap::new();
    for (k, m) in &global_train_meters(&metrics, comm.as_deref()) {
        values.insert(format!("train_{k}"), m.mean());
    }
    for (k, v) in &metrics.last_val {
        values.insert(format!("val_{k}"), *v);
    }
    insert_schedule_values(&mut values, &lr, scheduler.as_deref());
    let epoch_time = timer.epoch_start.elapsed().as_secs_f64();
    values.insert("epoch_time_s".into(), epoch_time);
    insert_data_wait(&mut values, std::mem::take(&mut wait.epoch), epoch_time);
    insert_device_memory(&mut values, device_memory.as_deref());
    for m in metrics.train.values_mut() {
        m.reset();
    }
    out.write(MetricEvent { split: "epoch".into(), step: clock.step, epoch: clock.epoch, values });
}
