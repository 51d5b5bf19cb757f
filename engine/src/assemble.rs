//! From a loaded config to a ready [`App`]: every name looked up, every file opened, the model built and
//! checked against the data, every resource inserted. All of it happens before the run directory exists,
//! so bad input exits 2 with nothing written.

use ecstrain_systems::data::Dataset;
use std::path::PathBuf;
use std::sync::Arc;

use bevy_ecs::prelude::*;
use ecstrain_components::*;
use ecstrain_kernels::Device;
use ecstrain_systems::data::{loader_pool, Loader, Pipeline, TrainLoader, ValLoader};
use ecstrain_systems::graph::Activations;
use ecstrain_systems::optim::clip::{GradClip, GradNorm};
use ecstrain_systems::optim::OptimizerSettings;
use ecstrain_systems::parallel::{Comm, OverlapReducer};
use ecstrain_systems::schedule::systems::Scheduler;

use crate::app::App;
use crate::config::{resolved_yaml, Config, LoadedConfig, RunSection};
use crate::error::{usage, EngineError};
use crate::pipelines::{build_pipelines, SplitPipelines};
use crate::registry::{DatasetEntry, Registry};
use crate::registry::{ScheduleContext, TaskContext};
use crate::summary::model_summary;

/// An assembled run: the app with every resource in place, and what `check` prints.
pub struct Assembly {
    /// The app, ready to run.
    pub app: App,
    /// The config (after overrides).
    pub loaded: LoadedConfig,
    /// The resolved config as YAML.
    pub resolved_yaml: String,
    /// The model summary table.
    pub summary: String,
    /// Notices for the user (ignored options and the like).
    pub notices: Vec<String>,
    /// The checkpoint this run resumed from, if any.
    pub resumed_from: Option<PathBuf>,
    /// The dataset's test split through its eval processors, when it has one (read by `engine eval` and
    /// `engine predict`, never by training).
    pub test: Option<Arc<Pipeline>>,
}

/// `run.amp`: false / off, true / f16 (Ultralytics' `amp: True`), bf16.
fn parse_amp(v: &serde_json::Value) -> Result<AmpMode, String> {
    match v {
        serde_json::Value::Bool(false) => Ok(AmpMode::Off),
        serde_json::Value::Bool(true) => Ok(AmpMode::F16),
        serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "off" | "false" | "fp32" => Ok(AmpMode::Off),
            "f16" | "fp16" | "true" => Ok(AmpMode::F16),
            "bf16" => Ok(AmpMode::Bf16),
            _ => Err(format!("run.amp: unknown precision `{s}`; valid choices: off, bf16, f16 (or false / true)")),
        },
        other => Err(format!("run.amp: expected off, bf16, f16, false or true, got {other}")),
    }
}

/// `run.plots`: `end` (the default), `true` (also at every epoch's checkpoint), `false` / `off`.
pub fn parse_plots(v: &serde_json::Value) -> Result<PlotMode, String> {
    match v {
        serde_json::Value::Bool(false) => Ok(PlotMode::Off),
        serde_json::Value::Bool(true) => Ok(PlotMode::EveryCheckpoint),
        serde_json::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "end" => Ok(PlotMode::End),
            "true" | "checkpoints" | "epoch" => Ok(PlotMode::EveryCheckpoint),
            "false" | "off" | "none" => Ok(PlotMode::Off),
            _ => Err(format!("run.plots: unknown value `{s}`; valid choices: end, true (every checkpoint), false")),
        },
        other => Err(format!("run.plots: expected end, true or false, got {other}")),
    }
}

/// The weight of every linear and conv2d node with its output channels (what QAT fake-quantizes).
fn qat_weights(graph: &Graph) -> Vec<(ParamSlice, usize)> {
    graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            OpKind::Linear { weight, out_features, .. } => Some((weight.slice, *out_features)),
            OpKind::Conv2d { weight, spec, .. } => Some((weight.slice, spec.out_channels)),
            _ => None,
        })
        .collect()
}

/// The most threads (`run.threads`, `run.workers`) and queued batches (`run.prefetch`) a run may ask for: far
/// past any machine's use, and short of the thousands of threads that left a mistyped value hanging.
pub const MAX_THREADS: usize = 1024;

/// Checks the `run:` values that serde cannot (ranges, positivity); the message names the key.
pub fn check_run_section(r: &RunSection) -> Result<(), String> {
    // Half-open unit interval, finite (NaN fails every comparison).
    let unit = |v: f64| (0.0..1.0).contains(&v);
    let clip_ok = |v: f64| v.is_finite() && v >= 0.0;
    let non_negative = |v: f64| v >= 0.0 && v.is_finite();
    let checks: [(bool, &str, String); 33] = [
        (r.epochs >= 1, "run.epochs", "must be at least 1".into()),
        (r.batch >= 1, "run.batch", "must be at least 1".into()),
        // An empty path would put config.yaml, checkpoints/ and metrics.jsonl into the working directory.
        (
            !r.save_dir.as_os_str().to_string_lossy().trim().is_empty(),
            "run.save_dir",
            "must name a directory (e.g. runs/train), got an empty path".into(),
        ),
        (
            (1..=MAX_THREADS).contains(&r.prefetch),
            "run.prefetch",
            format!("must be in 1..={MAX_THREADS} (batches the background loader keeps ready), got {}", r.prefetch),
        ),
        (
            r.workers <= MAX_THREADS,
            "run.workers",
            format!("must be at most {MAX_THREADS} data-loading threads, got {}", r.workers),
        ),
        (
            r.threads.is_none_or(|t| t <= MAX_THREADS),
            "run.threads",
            format!("must be at most {MAX_THREADS} compute threads, got {}", r.threads.unwrap_or_default()),
        ),
        (r.lr0 > 0.0 && r.lr0.is_finite(), "run.lr0", format!("must be a positive number, got {}", r.lr0)),
        (r.lrf >= 0.0 && r.lrf.is_finite(), "run.lrf", format!("must be >= 0, got {}", r.lrf)),
        (unit(r.momentum), "run.momentum", format!("must be in [0, 1), got {}", r.momentum)),
        (unit(r.beta2), "run.beta2", format!("must be in [0, 1), got {}", r.beta2)),
        (r.eps > 0.0 && r.eps.is_finite(), "run.eps", format!("must be positive, got {}", r.eps)),
        (non_negative(r.weight_decay), "run.weight_decay", format!("must be >= 0, got {}", r.weight_decay)),
        (non_negative(r.momentum_decay), "run.momentum_decay", format!("must be >= 0, got {}", r.momentum_decay)),
        (unit(r.alpha), "run.alpha", format!("must be in [0, 1), got {}", r.alpha)),
        (non_negative(r.lr_decay), "run.lr_decay", format!("must be >= 0, got {}", r.lr_decay)),
        (
            non_negative(r.initial_accumulator_value),
            "run.initial_accumulator_value",
            format!("must be >= 0, got {}", r.initial_accumulator_value),
        ),
        ((0.0..=1.0).contains(&r.rho), "run.rho", format!("must be in [0, 1], got {}", r.rho)),
        (r.warmup_epochs >= 0.0, "run.warmup_epochs", format!("must be >= 0, got {}", r.warmup_epochs)),
        ((0.0..=1.0).contains(&r.warmup_start_factor), "run.warmup_start_factor", "must be in [0, 1]".into()),
        (r.nbs >= 1, "run.nbs", "must be at least 1".into()),
        (
            r.log_interval >= 1 && r.val_interval >= 1,
            "run.log_interval / run.val_interval",
            "must be at least 1".into(),
        ),
        (r.top_k >= 1, "run.top_k", "must be at least 1".into()),
        ((0.0..1.0).contains(&r.ema_decay), "run.ema_decay", format!("must be in [0, 1), got {}", r.ema_decay)),
        (r.ema_tau > 0.0 && r.ema_tau.is_finite(), "run.ema_tau", format!("must be > 0, got {}", r.ema_tau)),
        (
            r.layer_decay.is_none_or(|d| d > 0.0 && d <= 1.0),
            "run.layer_decay",
            format!("must be in (0, 1], got {}", r.layer_decay.unwrap_or_default()),
        ),
        (r.accum_grad_iters.is_none_or(|a| a >= 1), "run.accum_grad_iters", "must be at least 1".into()),
        (
            r.amp_init_scale > 0.0 && r.amp_init_scale.is_finite(),
            "run.amp_init_scale",
            format!("must be > 0, got {}", r.amp_init_scale),
        ),
        (
            r.amp_growth > 1.0 && r.amp_growth.is_finite(),
            "run.amp_growth",
            format!("must be > 1, got {}", r.amp_growth),
        ),
        (
            r.amp_backoff > 0.0 && r.amp_backoff < 1.0,
            "run.amp_backoff",
            format!("must be in (0, 1), got {}", r.amp_backoff),
        ),
        (r.amp_growth_interval >= 1, "run.amp_growth_interval", "must be at least 1".into()),
        (clip_ok(r.clip_grad_norm), "run.clip_grad_norm", format!("must be >= 0 (0 = off), got {}", r.clip_grad_norm)),
        (
            clip_ok(r.clip_grad_value),
            "run.clip_grad_value",
            format!("must be >= 0 (0 = off), got {}", r.clip_grad_value),
        ),
        (
            r.time_limit.is_none_or(|t| t > 0.0 && t.is_finite()),
            "run.time_limit",
            format!("must be a positive number of hours, got {:?}", r.time_limit.unwrap_or_default()),
        ),
    ];
    for (ok, key, msg) in checks {
        if !ok {
            return Err(format!("{key} {msg}"));
        }
    }
    Ok(())
}

/// The length of an iteration-based run (`run.max_iters`, `run.iters_per_inner_epoch`: both or neither), or
/// `None` for an epoch-based one.
fn iter_plan(r: &RunSection) -> Result<Option<IterPlan>, String> {
    match (r.max_iters, r.iters_per_inner_epoch) {
        (None, None) => Ok(None),
        (None, Some(_)) => {
            Err("run.iters_per_inner_epoch needs run.max_iters (optimizer steps in the whole run)".into())
        }
        (Some(0), _) => Err("run.max_iters must be at least 1 (optimizer steps in the whole run)".into()),
        (Some(m), None) => Err(format!(
            "run.max_iters needs run.iters_per_inner_epoch: optimizer steps between validation passes, in 1..={m}"
        )),
        (Some(m), Some(i)) if i < 1 || i > m => {
            Err(format!("run.iters_per_inner_epoch must be in 1..={m} (1..=run.max_iters), got {i}"))
        }
        (Some(max_iters), Some(iters_per_inner_epoch)) => Ok(Some(IterPlan { max_iters, iters_per_inner_epoch })),
    }
}

/// Builds the run described by `loaded` into `app` (which already has its plugins).
pub fn assemble(mut app: App, loaded: LoadedConfig, headless: bool) -> Result<Assembly, EngineError> {
    let file = loaded.path.display().to_string();
    let err = |m: String| usage(crate::config::load::with_suggestion(format!("{file}: {m}")));
    let cfg = &loaded.config;
    let r = &cfg.run;
    let mut notices = Vec::new();

    check_run_section(r).map_err(err)?;
    let iters = iter_plan(r).map_err(err)?;
    if let Some(it) = iters {
        notices.push(format!(
            "iteration-based run: {} optimizer steps in {} inner epochs of {} (run.epochs is ignored)",
            it.max_iters,
            it.inner_epochs(),
            it.iters_per_inner_epoch
        ));
    }
    let device = Device::parse(&r.device).map_err(|e| err(format!("run.device: {e}")))?;
    let device = match app.world.get_resource::<crate::device_comm::Launch>() {
        Some(l) => crate::device_comm::rank_device(&r.device, device, l.0),
        None => device,
    };
    device.ensure_available().map_err(|e| err(format!("run.device: {e}")))?;
    if !(r.bucket_mb.is_finite() && r.bucket_mb >= 0.0) {
        return Err(err(format!(
            "run.bucket_mb: must be a finite number >= 0 (MiB of gradients per all-reduce bucket; 0: one all-reduce after the backward), got {}",
            r.bucket_mb
        )));
    }
    let amp = parse_amp(&r.amp).map_err(err)?;
    if device != Device::Cpu {
        crate::cuda_run::check_run(r).map_err(err)?;
    }
    let plots = parse_plots(&r.plots).map_err(err)?;
    if amp != AmpMode::Off && device == Device::Cpu {
        notices.push(match amp {
            AmpMode::F16 => "run.amp: f16 autocast needs CUDA; on the CPU the run computes in f32 with f16's dynamic loss scaling active".into(),
            _ => "run.amp: bf16 autocast needs CUDA; on the CPU the run computes in f32".to_string(),
        });
    }

    // Names first: a typo should not cost a data load.
    let model_entry = app.registry.model(&cfg.model.arch).map_err(err)?.clone();
    let task_entry = app.registry.task(&r.task).map_err(err)?.clone();
    let opt_entry = app.registry.optimizer(&r.optimizer).map_err(err)?.clone();
    let sched_name = crate::plugins::schedulers::scheduler_name(r).map_err(err)?;
    let sched_entry = app.registry.scheduler(&sched_name).map_err(err)?.clone();
    let (ds_name, ds_entry) = dataset_entry(&app.registry, cfg).map_err(err)?;

    let mut options = serde_json::Map::new();
    if let Some(t) = &cfg.model.model_type {
        let preset = model_entry.presets.iter().find(|(n, _)| n.eq_ignore_ascii_case(t)).ok_or_else(|| {
            let names: Vec<&str> = model_entry.presets.iter().map(|(n, _)| *n).collect();
            err(crate::error::unknown_name("model type", "model.type", t, &names))
        })?;
        let v: serde_json::Value = serde_json::from_str(preset.1).expect("presets are valid JSON");
        options.extend(v.as_object().expect("presets are objects").clone());
    }
    options.extend(cfg.model.options.clone());

    // Data.
    let (splits, data_notices) = open_splits(&app.registry, cfg, &ds_entry).map_err(err)?;
    notices.extend(data_notices);

    // Model.
    let built = (model_entry.build)(&serde_json::Value::Object(options), splits.train.sample_shape()).map_err(err)?;
    // Sizes first: a model or batch the machine cannot hold is a config error, not an allocation failure.
    let footprint = built.builder.footprint().map_err(|e| err(format!("model: {e}")))?;
    let capacity =
        crate::memory_check::batch_capacity(r.batch, splits.train.len(), splits.val.as_ref().map(|v| v.len()));
    crate::memory_check::check(&footprint, capacity, crate::memory_check::host_memory()).map_err(err)?;
    let mut graph = built.builder.finish(&mut app.world, built.output, r.seed);
    if cfg.model.fuse {
        ecstrain_systems::graph::fuse_linear_activation(&mut graph);
    }
    if r.qat {
        if r.ema {
            return Err(err("run.qat: cannot be combined with run.ema yet; turn one of them off".into()));
        }
        let mut buffers = app.world.resource_mut::<Buffers>();
        let averaging = ecstrain_systems::graph::qat::DEFAULT_AVERAGING;
        let n = ecstrain_systems::graph::insert_fake_quant(&mut graph, &mut buffers, averaging);
        notices
            .push(format!("run.qat: fake quantization (int8) on the inputs and weights of {n} linear / conv2d layers"));
    }
    if let Some(path) = &cfg.model.pretrained {
        notices.push(crate::weights::load_pretrained(&mut app.world, path, cfg.model.strict).map_err(err)?);
    }
    if !cfg.model.freeze.is_empty() {
        let n = crate::weights::freeze(&mut app.world, &cfg.model.freeze).map_err(err)?;
        notices.push(format!("froze {n} parameters (model.freeze)"));
    }
    if let Some(decay) = r.layer_decay {
        let n = crate::param_groups::apply_layer_decay(&mut app.world, decay).map_err(err)?;
        notices.push(format!("layer-wise lr decay {decay} on {n} parameters (run.layer_decay)"));
    }
    let n_params = app.world.resource::<Params>().0.len();
    let input_len: usize = splits.train.sample_shape().iter().product();

    // Task.
    let ctx = TaskContext {
        run: r,
        output_shape: graph.output_shape(),
        train: splits.train.as_ref(),
        val: splits.val.as_deref().map(|v| v as &dyn ecstrain_systems::data::Dataset),
        capacity,
    };
    (task_entry.install)(&mut app, &ctx).map_err(err)?;
    let fitness_metric = r.fitness.clone().unwrap_or_else(|| task_entry.fitness.0.to_string());
    let fitness_maximize = match r.fitness_mode.as_deref() {
        None if r.fitness.is_none() => task_entry.fitness.1,
        None => !fitness_metric.contains("loss"),
        Some("max") => true,
        Some("min") => false,
        Some(o) => return Err(err(format!("run.fitness_mode: unknown mode `{o}`; valid choices: max, min"))),
    };

    // Loaders, clock, schedule. A data-parallel run (the launcher's communicator, inserted by the CLI) trains
    // this rank's shard of every epoch; `run.batch` is per rank, so the global batch is batch x world.
    let comm = app.world.get_resource_or_init::<Comm>().clone();
    let shard = Shard::new(comm.0.rank(), comm.0.world()).map_err(err)?;
    let global_batch = r.batch.saturating_mul(shard.world);
    let device_rows = r.device_cache && device != Device::Cpu;
    let (train_loader, val_loader) = build_loaders(r, shard, &splits, device_rows).map_err(err)?;
    let batches = train_loader.batches_per_epoch() as u64;
    // Embedding ids come from the data: every one must be an integer in 0..vocab, checked here so a bad file is
    // an error naming it rather than a failure mid-run.
    for (split, ds) in [("train", Some(&splits.train)), ("val", splits.val.as_ref()), ("test", splits.test.as_ref())] {
        if let Some(ds) = ds {
            check_embedding_ids(&graph, split, ds.as_ref()).map_err(err)?;
        }
    }
    // Batch norm in training needs more than one value per channel (PyTorch raises otherwise): a last batch of
    // one sample reaching a 1x1 feature map would have none to spare.
    let per_epoch = train_loader.samples_per_epoch();
    let smallest_batch = if r.drop_last || per_epoch % r.batch == 0 { r.batch } else { per_epoch % r.batch };
    for node in &graph.nodes {
        if let ecstrain_components::OpKind::BatchNorm2d { hw, .. } = node.op {
            if smallest_batch * hw <= 1 {
                return Err(err(format!(
                    "{}: batch norm over 1x1 maps would see a training batch of {smallest_batch} sample (the train split has {} samples, batch {}): it needs more than one value per channel; set run.drop_last: true or change run.batch",
                    node.name,
                    per_epoch,
                    r.batch
                )));
            }
        }
    }
    // Ultralytics: accumulate to the nominal batch and scale the weight decay with it; LAVIS: a fixed count.
    // Both count the global batch, so N ranks of batch b train as one process of batch N x b.
    let accumulate = r.accum_grad_iters.unwrap_or(((r.nbs as f64 / global_batch as f64).round() as u64).max(1));
    let steps_per_epoch = batches.div_ceil(accumulate);
    // An iteration-based run's schedule spans max_iters, and its "epochs" (warm-up, epoch-based schedules) are
    // inner epochs, as LAVIS's RunnerIters counts them.
    let (total_steps, schedule_epoch, epochs) = match iters {
        Some(it) => (it.max_iters, it.iters_per_inner_epoch, it.max_iters.div_ceil(it.iters_per_inner_epoch)),
        None => (steps_per_epoch * r.epochs, steps_per_epoch, r.epochs),
    };
    let sched_ctx = ScheduleContext { run: r, epochs, steps_per_epoch: schedule_epoch, total_steps, accumulate };
    let scheduler = (sched_entry.build)(&sched_ctx).map_err(err)?;
    let weight_decay = match r.accum_grad_iters {
        Some(_) => r.weight_decay,
        None => r.weight_decay * (global_batch as f64 * accumulate as f64) / r.nbs as f64,
    };

    let targets = splits.train.empty_targets(capacity);
    let w = &mut app.world;
    let mut acts = Activations::plan(&graph, capacity);
    if r.profile {
        acts.profile = Some(ecstrain_systems::graph::OpProfile::new(graph.nodes.len()));
    }
    w.insert_resource(acts);
    let mut batch = Batch::with_capacity(capacity, input_len, targets);
    batch.extras = Extras::with_capacity(&splits.train.extra_specs(), capacity);
    w.insert_resource(batch);
    w.insert_resource(TrainLoader(train_loader));
    if let Some(loader) = val_loader {
        w.insert_resource(ValLoader { loader, cursor: 0 });
    } else {
        notices.push(format!("datasets.{ds_name} has no val split: no validation, no best checkpoint"));
    }
    let settings = OptimizerSettings {
        weight_decay,
        momentum: r.momentum,
        nesterov: r.nesterov,
        dampening: r.dampening,
        beta2: r.beta2,
        eps: r.eps,
        amsgrad: r.amsgrad,
        decoupled_weight_decay: r.decoupled_weight_decay,
        momentum_decay: r.momentum_decay,
        alpha: r.alpha,
        centered: r.centered,
        lr_decay: r.lr_decay,
        initial_accumulator_value: r.initial_accumulator_value,
        rho: r.rho,
    };
    let layout = (opt_entry.state)(&settings);
    w.insert_resource(OptimizerState::from_layout(&r.optimizer.to_ascii_lowercase(), &layout, n_params));
    w.insert_resource(settings);
    (opt_entry.install)(&mut app);
    let w = &mut app.world;
    if amp == AmpMode::F16 {
        w.insert_resource(LossScaler {
            scale: r.amp_init_scale,
            growth: r.amp_growth,
            backoff: r.amp_backoff,
            growth_interval: r.amp_growth_interval,
            good_steps: 0,
            skip_step: false,
            skipped: 0,
        });
    }
    if r.clip_grad_norm > 0.0 || r.clip_grad_value > 0.0 {
        w.insert_resource(GradClip { max_norm: r.clip_grad_norm, max_value: r.clip_grad_value });
        w.init_resource::<GradNorm>();
    }
    w.insert_resource(Scheduler(scheduler));
    w.insert_resource(LearningRate::uniform(r.lr0, r.momentum));
    w.insert_resource(Clock { batches_per_epoch: batches, accumulate, ..Default::default() });
    w.insert_resource(RunSettings {
        epochs: iters.map_or(r.epochs, |it| it.inner_epochs()),
        iters,
        batch: r.batch,
        accumulate,
        seed: r.seed,
        log_interval: r.log_interval,
        val_interval: r.val_interval,
        save_period: r.save_period.max(0) as u64,
        patience: r.patience,
        fitness_metric,
        fitness_maximize,
        headless,
        shard,
        time_limit_s: r.time_limit.map(|h| h * 3600.0),
    });
    w.insert_resource(OutputSettings { results_csv: r.results_csv, tensorboard: r.tensorboard, plots });
    w.insert_resource(Mode::Train);
    w.init_resource::<Metrics>();
    w.init_resource::<StopRequest>();
    w.init_resource::<TrainingState>();
    w.init_resource::<RunTimer>();
    w.init_resource::<RunFailure>();
    if r.qat {
        let weights = qat_weights(&graph);
        let widest = weights.iter().map(|(_, oc)| *oc).max().unwrap_or(0);
        let master = app.world.resource::<Params>().0.data.clone();
        app.world.insert_resource(QatWeights { master, weights, scales: vec![0.0; widest], swapped: false });
    }
    if r.ema {
        // Tracks every parameter; starts as a copy of the (possibly pretrained) weights, as ModelEMA does.
        let ids: Vec<Entity> = app.world.query_filtered::<Entity, With<ParamSlice>>().iter(&app.world).collect();
        for e in ids {
            app.world.entity_mut(e).insert(EmaShadow);
        }
        let w = &app.world;
        let ema = EmaWeights {
            params: w.resource::<Params>().0.clone(),
            buffers: w.resource::<Buffers>().arena.clone(),
            updates: 0,
            decay: r.ema_decay,
            tau: r.ema_tau,
            swapped: false,
        };
        app.world.insert_resource(ema);
    }
    let summary = model_summary(&mut app.world, &graph);
    if shard.world > 1 && r.bucket_mb > 0.0 {
        // The gradient all-reduce overlaps the backward (DDP's buckets): on the CPU through a communication
        // thread, on a GPU on the device communicator's stream (used when NCCL connects, device_comm.rs).
        let elems = ((r.bucket_mb * (1 << 20) as f64 / 4.0).round() as usize).max(1);
        let cuts = ecstrain_systems::graph::gradient_cuts(&graph);
        if device == Device::Cpu {
            app.world.insert_resource(OverlapReducer::new(comm.0.clone(), elems, cuts));
        } else {
            app.world
                .insert_resource(ecstrain_systems::device::reduce::DeviceBuckets { cuts: cuts.into(), bucket: elems });
        }
    }
    app.world.insert_resource(graph);
    let resumed_from = crate::resume::resume_path(&r.resume, &r.save_dir).map_err(err)?;
    if let Some(p) = &resumed_from {
        let resume_notices = crate::resume::restore(&mut app, p).map_err(err)?;
        let c = app.world.resource::<Clock>();
        notices.push(format!("resuming from {} at epoch {} (step {})", p.display(), c.epoch + 1, c.step));
        notices.extend(resume_notices);
    }
    notices.extend(crate::cuda_run::install(&mut app.world, device, capacity, amp, r.tf32).map_err(err)?);
    let resolved = resolved_yaml(cfg);
    let test = splits.test.clone();
    Ok(Assembly { app, loaded, resolved_yaml: resolved, summary, notices, resumed_from, test })
}

/// The run's one dataset: its name under `datasets:` and its registry entry (looked up before any data is read).
pub fn dataset_entry(registry: &Registry, cfg: &Config) -> Result<(String, DatasetEntry), String> {
    if cfg.datasets.len() != 1 {
        return Err(format!(
            "datasets: exactly one dataset is supported per run, found {} ({})",
            cfg.datasets.len(),
            cfg.datasets.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let (name, ds) = cfg.datasets.iter().next().expect("one dataset");
    let entry = registry.dataset(&format!("datasets.{name}.builder"), &ds.builder)?.clone();
    Ok((name.clone(), entry))
}

/// Opens the run's dataset with `entry` and chains its splits with their processors; the train split, and the
/// val split when there is one, must have samples.
pub fn open_splits(
    registry: &Registry,
    cfg: &Config,
    entry: &DatasetEntry,
) -> Result<(SplitPipelines, Vec<String>), String> {
    let (name, ds) = cfg.datasets.iter().next().expect("dataset_entry checked one dataset");
    let root = ds.root.clone().unwrap_or_else(|| PathBuf::from("."));
    let raw = (entry.build)(&ds.options, &root).map_err(|m| format!("datasets.{name}: {m}"))?;
    let notices = raw.notices.iter().map(|n| format!("datasets.{name}: {n}")).collect();
    let splits = build_pipelines(registry, &format!("datasets.{name}"), &raw, &ds.processors, cfg.run.seed)?;
    if splits.train.is_empty() {
        return Err(format!("datasets.{name}: the train split ({}) has no samples", splits.train.describe()));
    }
    // An empty val split would validate on nothing: every metric NaN, no best checkpoint, early stopping
    // blind. Leaving the split out is how a run says it has no validation.
    if let Some(val) = splits.val.as_ref().filter(|v| v.is_empty()) {
        return Err(format!(
            "datasets.{name}: the val split ({}) has no samples; give it data, or leave `val` out to train without \
             validation",
            val.describe()
        ));
    }
    Ok((splits, notices))
}

/// The train loader (shuffled, `run.drop_last`, this rank's `shard`) and the val loader (in order, whole
/// split on every rank), both prefetching on one shared pool of `run.workers` threads when it is >= 1.
/// With `device_rows` (`run.device_cache` on a GPU) training batches carry no input rows: the device keeps
/// the split's inputs, which its processors must then not change from epoch to epoch.
pub fn build_loaders(
    r: &RunSection,
    shard: Shard,
    splits: &SplitPipelines,
    device_rows: bool,
) -> Result<(Loader, Option<Loader>), String> {
    let mut train = Loader::new(splits.train.clone(), r.batch, true, r.drop_last, r.seed).with_shard(shard);
    if device_rows {
        let random: Vec<&str> = splits.train.processors().iter().filter(|p| p.is_random()).map(|p| p.name()).collect();
        if !random.is_empty() {
            return Err(format!(
                "run.device_cache: the train split's processors include random augmentation ({}), so its inputs \
                 differ every epoch and cannot be kept on the device; turn run.device_cache off or use only \
                 deterministic processors for training",
                random.join(", ")
            ));
        }
        train = train.without_inputs();
    }
    if train.batches_per_epoch() == 0 {
        let per_rank = match shard.world {
            1 => String::new(),
            w => format!(" ({} per rank of {w})", train.samples_per_epoch()),
        };
        return Err(format!(
            "run.drop_last: the train split has {} samples{per_rank}, fewer than one batch of {}",
            splits.train.len(),
            r.batch
        ));
    }
    let mut val = splits.val.as_ref().map(|v| Loader::new(v.clone(), r.batch, false, false, r.seed));
    if r.workers > 0 {
        let pool = loader_pool(r.workers).map_err(|m| format!("run.workers: {m}"))?;
        let prefetch = |l: Loader| l.with_prefetch(pool.clone(), r.prefetch).map_err(|m| format!("run.workers: {m}"));
        train = prefetch(train)?;
        val = val.map(prefetch).transpose()?;
    }
    Ok((train, val))
}

/// Checks that every input value of `ds` is an integer id in `0..vocab`; the message names the first bad one.
/// Checks that every input an embedding layer of `graph` reads from `ds` (the `split` named in the message) is
/// an integer id below its vocabulary.
pub fn check_embedding_ids(graph: &Graph, split: &str, ds: &dyn Dataset) -> Result<(), String> {
    for node in &graph.nodes {
        if let ecstrain_components::OpKind::Embedding { vocab, .. } = node.op {
            check_token_ids(ds, vocab)
                .map_err(|m| format!("{}: {split} data {}: {m} (valid ids: 0..{vocab})", node.name, ds.describe()))?;
        }
    }
    Ok(())
}

fn check_token_ids(ds: &dyn ecstrain_systems::data::Dataset, vocab: usize) -> Result<(), String> {
    let per: usize = ds.sample_shape().iter().product();
    let chunk = 1024.min(ds.len()).max(1);
    let mut buf = vec![0.0f32; chunk * per];
    let mut indices = Vec::with_capacity(chunk);
    for start in (0..ds.len()).step_by(chunk) {
        indices.clear();
        indices.extend(start..(start + chunk).min(ds.len()));
        let vals = &mut buf[..indices.len() * per];
        ds.read_inputs(&indices, vals)?;
        if let Some(pos) = vals.iter().position(|&v| v.fract() != 0.0 || v < 0.0 || v >= vocab as f32) {
            return Err(format!("sample {} holds token id {}", start + pos / per.max(1), vals[pos]));
        }
    }
    Ok(())
}
