//! The runners: `train` creates the run directory, then a loop drives the schedules in their documented order
//! (see `ecstrain_systems::sets`): RunStart; per epoch EpochStart, TrainStep per micro-batch (DataEpochStart
//! before each pass over the training data), the validation pass (ValidationStep per batch, ValidationEnd),
//! EpochEnd; RunEnd. `Flush` runs after each so loggers write. Two loops share that frame: [`run_epochs`] (the
//! default; an epoch is one pass over the data) and [`run_iters`] (`run.max_iters`: inner epochs of a fixed
//! number of optimizer steps, the data wrapping on its own).

mod epochs;
mod iters;
pub mod stop;

pub use epochs::run_epochs;
pub use iters::run_iters;

use std::io::BufWriter;

use bevy_ecs::prelude::*;
use ecstrain_components::*;
use ecstrain_systems::data::{class_map_json, Dataset, TrainLoader, ValLoader};
use ecstrain_systems::logging::jsonl::JsonlLog;
use ecstrain_systems::logging::write_atomic;
use ecstrain_systems::parallel::Comm;
use ecstrain_systems::sets::*;

use crate::app::App;
use crate::assemble::Assembly;
use crate::error::EngineError;
use crate::out_path::{location_error, NewDirs};
use crate::run_dir::choose_run_dir;

fn flush(app: &mut App) {
    app.run(Flush);
    app.world.resource_mut::<Messages<MetricEvent>>().update();
}

fn failed(app: &App) -> Option<&str> {
    app.world.resource::<RunFailure>().0.as_deref()
}

/// The failure of the run so far, as the error that ends it.
fn check_failure(app: &App) -> Result<(), EngineError> {
    match app.world.resource::<RunFailure>().0.as_ref() {
        Some(f) => Err(EngineError::Run(f.clone())),
        None => Ok(()),
    }
}

/// One validation pass over the val loader: ValidationStep per batch in `Mode::Eval`, then ValidationEnd, without
/// flushing the records. False (and nothing run) when there is no val loader. A batch that fails to load ends
/// the pass there, without ValidationEnd (no metrics or checkpoint from part of the split); the
/// [`RunFailure`] says why.
pub fn validation_pass(app: &mut App) -> bool {
    let Some(batches) = app.world.get_resource::<ValLoader>().map(|v| v.loader.batches_per_epoch()) else {
        return false;
    };
    app.world.resource_mut::<ValLoader>().cursor = 0;
    app.run(ValidationStart);
    *app.world.resource_mut::<Mode>() = Mode::Eval;
    for _ in 0..batches {
        app.run(ValidationStep);
        if failed(app).is_some() {
            break;
        }
    }
    *app.world.resource_mut::<Mode>() = Mode::Train;
    if failed(app).is_none() {
        app.run(ValidationEnd);
    }
    true
}

/// One validation pass over the val split, its records flushed to the loggers (no-op without one).
pub fn validate(app: &mut App) {
    if validation_pass(app) {
        flush(app);
    }
}

/// Trains with the loop the settings ask for: [`run_iters`] when `run.max_iters` is set, else [`run_epochs`].
pub fn run(app: &mut App) -> Result<(), EngineError> {
    match app.world.resource::<RunSettings>().iters {
        Some(plan) => run_iters(app, plan),
        None => run_epochs(app),
    }
}

/// The start of either loop: a fresh timer and RunStart; returns the settings.
fn begin(app: &mut App) -> RunSettings {
    *app.world.resource_mut::<RunTimer>() = RunTimer::default();
    app.run(RunStart);
    flush(app);
    app.world.resource::<RunSettings>().clone()
}

/// The tail of every epoch, once its training steps are done: validation when due, EpochEnd, the failure check;
/// then the clock moves to the next epoch. Returns true when a stop was requested.
fn finish_epoch(app: &mut App, epoch: u64, settings: &RunSettings) -> Result<bool, EngineError> {
    if (epoch + 1).is_multiple_of(settings.val_interval) || epoch + 1 == settings.epochs {
        validate(app);
    }
    // A failed validation writes no epoch record or checkpoint.
    check_failure(app)?;
    app.run(EpochEnd);
    flush(app);
    check_failure(app)?;
    app.world.resource_mut::<Clock>().epoch = epoch + 1;
    Ok(app.world.resource::<StopRequest>().reason.is_some())
}

/// The end of either loop: RunEnd and the final failure check.
fn finish(app: &mut App) -> Result<(), EngineError> {
    app.run(RunEnd);
    flush(app);
    check_failure(app)
}

/// One training micro-batch of a loop: TrainStep and Flush; a failure (a batch that could not be read) ends
/// the run here, before another step.
fn step(app: &mut App) -> Result<(), EngineError> {
    app.run(TrainStep);
    flush(app);
    check_failure(app)
}

/// The files a run writes at fixed names in its directory (the plots and TensorBoard files aside: those are
/// written under new or per-metric names).
const RUN_FILES: [&str; 8] = [
    "config.yaml",
    "classes.json",
    "metrics.jsonl",
    "results.csv",
    "summary.json",
    "profile.txt",
    "checkpoints/last.safetensors",
    "checkpoints/best.safetensors",
];

/// Creates the run directory (config.yaml, classes.json when the dataset names its classes, metrics.jsonl,
/// checkpoints/) and trains. In a data-parallel run only rank 0 writes it (and prints); the other ranks train
/// without a run directory. SIGTERM, SIGINT and SIGUSR1 stop the run after the current optimizer step with a
/// checkpoint ([`stop`]).
pub fn train(assembly: Assembly) -> Result<std::path::PathBuf, EngineError> {
    let Assembly { mut app, loaded, resolved_yaml, summary, notices, resumed_from, .. } = assembly;
    crate::signals::install().map_err(EngineError::Run)?;
    let run = &loaded.config.run;
    // A resumed run continues in the directory of its checkpoint and appends to its metrics.jsonl; a fresh
    // `resume: auto` run uses save_dir itself, where its requeued successor will look.
    let dir = match &resumed_from {
        Some(ck) => crate::resume::run_dir_of(ck),
        None => choose_run_dir(&run.save_dir, run.exist_ok || crate::resume::is_auto(&run.resume)),
    };
    if !app.world.get_resource_or_init::<Comm>().is_writer() {
        in_pool(|| self::run(&mut app))?;
        return Ok(dir);
    }
    let io = |what: &str, e: std::io::Error| EngineError::Run(format!("cannot {what} in {}: {e}", dir.display()));
    // In a reused directory (exist_ok, resume) every file the run writes must be a regular file or absent: a
    // FIFO at metrics.jsonl would block the run, a directory at a checkpoint would fail it an epoch in.
    for name in RUN_FILES {
        crate::out_path::out_file("run.save_dir", &dir.join(name))?;
    }
    // A run directory that cannot be made (under a regular file, no permission) is bad input: exit 2, and the
    // directories made on the way are removed again.
    let dirs = NewDirs::create(&dir.join("checkpoints"))
        .map_err(|e| location_error("run.save_dir", "create the run directory", &dir, e))?;
    write_atomic(&dir.join("config.yaml"), resolved_yaml.as_bytes())
        .map_err(|e| location_error("run.save_dir", "write config.yaml in", &dir, e))?;
    dirs.keep();
    // The class-to-index map, so predictions can be named without the dataset (torchvision's class_to_idx).
    let names = app.world.get_resource::<TrainLoader>().and_then(|l| l.0.pipeline().class_names());
    if let Some(names) = names {
        write_atomic(&dir.join("classes.json"), class_map_json(&names).as_bytes())
            .map_err(|e| io("write classes.json", e))?;
    }
    if resumed_from.is_some() {
        let step = app.world.resource::<Clock>().step;
        trim_metrics(&dir.join("metrics.jsonl"), step).map_err(|e| io("trim metrics.jsonl", e))?;
    }
    let jsonl = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed_from.is_some())
        .truncate(resumed_from.is_none())
        .open(dir.join("metrics.jsonl"))
        .map_err(|e| io("create metrics.jsonl", e))?;
    app.world.insert_resource(JsonlLog(BufWriter::new(jsonl)));
    app.world.insert_resource(RunInfo {
        dir: dir.clone(),
        config_path: loaded.path.clone(),
        resolved_config_yaml: resolved_yaml,
    });
    for n in &notices {
        println!("note: {n}");
    }
    println!("{summary}run directory: {}", dir.display());
    in_pool(|| self::run(&mut app))?;
    Ok(dir)
}

/// Drops the records a killed run wrote after its last checkpoint (step > `step`, the checkpoint's) and a
/// half-written last line, so the resumed run's log continues as if it had never stopped. Atomic.
fn trim_metrics(path: &std::path::Path, step: u64) -> std::io::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let mut kept = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let record: Option<serde_json::Value> = line.ends_with('\n').then(|| serde_json::from_str(line).ok()).flatten();
        match record.and_then(|r| r["step"].as_u64()) {
            Some(s) if s <= step => kept.push_str(line),
            _ => {}
        }
    }
    if kept.len() != text.len() {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// Runs `f` on a thread of rayon's global pool. The kernels fork parallel work dozens of times per step; forked
/// from a pool thread, the other workers steal it directly, while from an outside thread every fork is
/// injected into the pool and the caller sleeps until it is done (two extra context switches per parallel
/// region: about 5% of a ViT step on 2 cores).
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// One training micro-batch outside the epoch loop (benchmarks, tools): wraps to a new epoch when the
/// current one is exhausted, then runs TrainStep and Flush.
pub fn train_step(app: &mut App) {
    let c = app.world.resource::<Clock>();
    if c.batch_in_epoch >= c.batches_per_epoch {
        let mut c = app.world.resource_mut::<Clock>();
        c.epoch += 1;
        c.data_epoch = c.epoch;
        c.batch_in_epoch = 0;
        app.run(DataEpochStart);
        app.run(EpochStart);
    }
    app.run(TrainStep);
    flush(app);
}
