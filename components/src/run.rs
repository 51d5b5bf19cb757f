//! Run-wide resources: resolved settings, the run directory, stop requests and fitness tracking.

use std::path::PathBuf;

use bevy_ecs::prelude::*;

/// Settings every system may need, resolved from the `run:` section of the config.
#[derive(Resource, Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// Epochs to train (inner epochs of an iteration-based run: `iters.inner_epochs()`).
    pub epochs: u64,
    /// Set for an iteration-based run (`run.max_iters`): its length in optimizer steps.
    pub iters: Option<IterPlan>,
    /// Samples per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step (from `nbs`).
    pub accumulate: u64,
    /// Base seed of every random stream.
    pub seed: u64,
    /// Optimizer steps between training log records.
    pub log_interval: u64,
    /// Epochs (inner epochs) between validation passes.
    pub val_interval: u64,
    /// Save a numbered checkpoint every this many epochs (0 = never; last and best are always kept).
    pub save_period: u64,
    /// Validations without fitness improvement before stopping (0 = never stop early).
    pub patience: u64,
    /// Metric whose improvement selects the best checkpoint (e.g. `accuracy`, `loss`).
    pub fitness_metric: String,
    /// True when a larger fitness value is better.
    pub fitness_maximize: bool,
    /// Headless: plain log lines instead of a progress bar.
    pub headless: bool,
    /// This process's part of the training data in a data-parallel run (rank 0 of 1 otherwise).
    pub shard: Shard,
    /// Wall-clock budget of the run in seconds (`run.time_limit`, given in hours): the run stops cleanly,
    /// with a checkpoint, after the optimizer step that crosses it.
    pub time_limit_s: Option<f64>,
}

/// One process's part of the training data: rank `rank` of `world` processes, split as
/// `torch.utils.data.DistributedSampler` splits it (every rank sees the same epoch permutation, padded to a
/// multiple of `world`, and takes every `world`-th position from `rank` on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shard {
    /// This process's index, `0..world`.
    pub rank: usize,
    /// Processes sharing the data, at least 1.
    pub world: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { rank: 0, world: 1 }
    }
}

impl Shard {
    /// Rank `rank` of `world`; the message names the valid range when they do not fit together.
    pub fn new(rank: usize, world: usize) -> Result<Shard, String> {
        if world == 0 {
            return Err("the world size (processes sharing the data) must be at least 1".into());
        }
        if rank >= world {
            return Err(format!("rank {rank} is out of range for a world of {world} processes (valid: 0..{world})"));
        }
        Ok(Shard { rank, world })
    }

    /// Samples this rank sees per epoch out of `n`: `ceil(n / world)` (the permutation is padded by repeating
    /// its start), or `floor(n / world)` with `drop_last` (its tail is cut), as DistributedSampler counts.
    pub fn samples(&self, n: usize, drop_last: bool) -> usize {
        let world = self.world.max(1);
        if drop_last {
            n / world
        } else {
            n.div_ceil(world)
        }
    }
}

impl RunSettings {
    /// "epochs", or "inner epochs" in an iteration-based run: the unit in messages.
    pub fn epoch_word(&self) -> &'static str {
        if self.iters.is_some() {
            "inner epochs"
        } else {
            "epochs"
        }
    }
}

/// The length of an iteration-based run (as LAVIS's RunnerIters): `max_iters` optimizer steps in all,
/// validated and checkpointed every `iters_per_inner_epoch` steps (an inner epoch); the data loader wraps
/// across passes over the data on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IterPlan {
    /// Optimizer steps in the whole run.
    pub max_iters: u64,
    /// Optimizer steps per inner epoch (the last one is shorter when it does not divide `max_iters`).
    pub iters_per_inner_epoch: u64,
}

impl IterPlan {
    /// Inner epochs in the run.
    pub fn inner_epochs(&self) -> u64 {
        self.max_iters.div_ceil(self.iters_per_inner_epoch.max(1))
    }

    /// The optimizer step at which inner epoch `epoch` (0-based) ends.
    pub fn end_step(&self, epoch: u64) -> u64 {
        (epoch + 1).saturating_mul(self.iters_per_inner_epoch).min(self.max_iters)
    }

    /// True when optimizer step `step` (counted after it completed) closes an inner epoch.
    pub fn ends_inner_epoch(&self, step: u64) -> bool {
        step > 0 && (step.is_multiple_of(self.iters_per_inner_epoch.max(1)) || step == self.max_iters)
    }
}

/// Where this run writes and what it is.
#[derive(Resource, Clone, Debug)]
pub struct RunInfo {
    /// The run directory (`runs/train`, `runs/train2`, ...).
    pub dir: PathBuf,
    /// Path of the config file the run came from.
    pub config_path: PathBuf,
    /// The fully resolved config as YAML text (written to `config.yaml` and into checkpoints).
    pub resolved_config_yaml: String,
}

/// Set by any system (early stopping, a signal handler, a plugin) to end the run after the current step.
#[derive(Resource, Clone, Debug, Default)]
pub struct StopRequest {
    /// Why the run should stop, when it should.
    pub reason: Option<String>,
}

/// Fitness tracking across epochs for the best checkpoint and early stopping.
#[derive(Resource, Clone, Debug, Default)]
pub struct TrainingState {
    /// Best fitness so far.
    pub best_fitness: Option<f64>,
    /// Epoch (0-based) of the best fitness.
    pub best_epoch: Option<u64>,
    /// Validation metrics at the best epoch.
    pub best_metrics: std::collections::BTreeMap<String, f64>,
    /// True when the latest validation improved the best fitness (read by the checkpoint system).
    pub improved: bool,
    /// Validations (one per epoch by default) since the last improvement.
    pub epochs_without_improvement: u64,
}

/// Wall-clock bookkeeping for throughput and ETA.
#[derive(Resource, Clone, Debug)]
pub struct RunTimer {
    /// When the run started.
    pub start: std::time::Instant,
    /// When the current epoch started.
    pub epoch_start: std::time::Instant,
    /// Seconds spent in training steps (excludes validation and checkpointing).
    pub train_seconds: f64,
    /// When the last training log record was written, and the samples seen then.
    pub last_log: (std::time::Instant, u64),
}

impl Default for RunTimer {
    fn default() -> Self {
        let now = std::time::Instant::now();
        RunTimer { start: now, epoch_start: now, train_seconds: 0.0, last_log: (now, 0) }
    }
}

/// How long training steps waited for their batch (the Load stage: the whole assembly when loading on the
/// training thread, the blocking receive when a background loader prefetches). Accumulated for the train
/// records (since the last one) and the epoch record; the loggers reset their part.
#[derive(Resource, Clone, Debug, Default)]
pub struct DataWait {
    /// Seconds waited since the last train record, and the training steps (micro-batches) they cover.
    pub interval: (f64, u64),
    /// Seconds waited in the current epoch, and its training steps.
    pub epoch: (f64, u64),
}

impl DataWait {
    /// Records one step's wait.
    pub fn add(&mut self, seconds: f64) {
        self.interval.0 += seconds;
        self.interval.1 += 1;
        self.epoch.0 += seconds;
        self.epoch.1 += 1;
    }
}

/// Set when a system fails in a way that should end the run with exit code 1 (e.g. a sample that cannot be
/// read, a checkpoint that cannot be written). The steps stop at once: the stages after Load do not run on
/// a batch that failed to load, and the runner ends the run after the step.
#[derive(Resource, Clone, Debug, Default)]
pub struct RunFailure(pub Option<String>);

/// When the PNG plots of a run are drawn (`run.plots`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PlotMode {
    /// No plots.
    Off,
    /// Once, at the end of the run (the default).
    #[default]
    End,
    /// At the end of the run and after every epoch's checkpoint, so a long run can be watched.
    EveryCheckpoint,
}

/// The run-directory outputs beyond `metrics.jsonl` and `summary.json` that the config turns on or off
/// (`run.results_csv`, `run.tensorboard`, `run.plots`). Their plugins do nothing without it.
#[derive(Resource, Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputSettings {
    /// Write `results.csv`, one row per epoch.
    pub results_csv: bool,
    /// Write a TensorBoard event file.
    pub tensorboard: bool,
    /// When to draw the PNG plots.
    pub plots: PlotMode,
}

impl Default for OutputSettings {
    fn default() -> Self {
        OutputSettings { results_csv: true, tensorboard: true, plots: PlotMode::End }
    }
}
