//! The registry: name -> builder for models, datasets, tasks, optimizers and LR schedulers (LAVIS's
//! `registry`). Plugins fill it; configs refer to entries by name; lookups of unknown names fail with the
//! registered names and a suggestion.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ecstrain_components::StateLayout;
use ecstrain_systems::data::{Dataset, Processor};
use ecstrain_systems::models::ModelBuildFn;
use ecstrain_systems::optim::OptimizerSettings;
use ecstrain_systems::schedule::Schedule;

use crate::app::App;
use crate::config::RunSection;
use crate::error::unknown_name;

/// A registered model.
#[derive(Clone)]
pub struct ModelEntry {
    /// Builds the graph from the `model:` options and the data's sample shape.
    pub build: ModelBuildFn,
    /// Presets by `model.type` name: JSON objects of options.
    pub presets: &'static [(&'static str, &'static str)],
    /// One line for `engine list`.
    pub doc: &'static str,
}

/// The splits a dataset builder opened.
pub struct DatasetSplits {
    /// Training split.
    pub train: Arc<dyn Dataset>,
    /// Validation split, if configured.
    pub val: Option<Arc<dyn Dataset>>,
    /// Test split, if configured: read by `engine eval` / `engine predict --split test`, never by training.
    pub test: Option<Arc<dyn Dataset>>,
    /// Messages for the run's output (`note: ...`), e.g. the corrupt images a split skipped.
    pub notices: Vec<String>,
}

impl DatasetSplits {
    /// Train and optional val splits, no test split, no notices.
    pub fn new(train: Arc<dyn Dataset>, val: Option<Arc<dyn Dataset>>) -> DatasetSplits {
        DatasetSplits { train, val, test: None, notices: Vec::new() }
    }
}

/// A dataset builder: `(options, root) -> splits`, or a message naming the file or key at fault.
pub type DatasetBuildFn = fn(&serde_json::Map<String, serde_json::Value>, &Path) -> Result<DatasetSplits, String>;

/// A registered dataset builder.
#[derive(Clone)]
pub struct DatasetEntry {
    /// Opens the splits.
    pub build: DatasetBuildFn,
    /// One line for `engine list`.
    pub doc: &'static str,
}

/// A processor builder: options (a JSON map, `{}` when none were given) -> the processor, or a message naming
/// the bad option and its valid values.
pub type ProcessorBuildFn = fn(&serde_json::Value) -> Result<Box<dyn Processor>, String>;

/// A registered processor.
#[derive(Clone)]
pub struct ProcessorEntry {
    /// Builds the processor.
    pub build: ProcessorBuildFn,
    /// One line for `engine list`.
    pub doc: &'static str,
}

/// What a task needs to know to install itself.
pub struct TaskContext<'a> {
    /// The `run:` section.
    pub run: &'a RunSection,
    /// Per-sample shape of the model output.
    pub output_shape: &'a [usize],
    /// The training split.
    pub train: &'a dyn Dataset,
    /// The validation split.
    pub val: Option<&'a dyn Dataset>,
    /// Largest batch the run will see.
    pub capacity: usize,
}

/// A registered task.
#[derive(Clone)]
pub struct TaskEntry {
    /// Checks the model and data fit the task, inserts its resources and adds its Loss and validation systems.
    pub install: fn(&mut App, &TaskContext) -> Result<(), String>,
    /// Default fitness metric and whether larger is better.
    pub fitness: (&'static str, bool),
    /// One line for `engine list`.
    pub doc: &'static str,
}

/// A registered optimizer.
#[derive(Clone)]
pub struct OptimizerEntry {
    /// Its state for the given settings: arenas (PyTorch's state keys, each the size of the parameter arena,
    /// with their initial value) and scalars.
    pub state: fn(&OptimizerSettings) -> StateLayout,
    /// Adds its update system to the Optimize set.
    pub install: fn(&mut App),
    /// One line for `engine list`.
    pub doc: &'static str,
}

/// Inputs of a scheduler builder. Schedules are indexed by optimizer step: with gradient accumulation a step
/// spans `accumulate` micro-batches, and epoch-based schedules (LAVIS, Ultralytics) count `steps_per_epoch`
/// optimizer steps per epoch.
pub struct ScheduleContext<'a> {
    /// The `run:` section (lr0, lrf, momentum and the schedule keys).
    pub run: &'a RunSection,
    /// Epochs of the run (inner epochs in an iteration-based run).
    pub epochs: u64,
    /// Optimizer steps per epoch (per inner epoch in an iteration-based run; the last, partial accumulation
    /// window of an epoch is a step too).
    pub steps_per_epoch: u64,
    /// Optimizer steps in the whole run (`epochs * steps_per_epoch`).
    pub total_steps: u64,
    /// Micro-batches per optimizer step.
    pub accumulate: u64,
}

/// A registered LR schedule.
#[derive(Clone)]
pub struct SchedulerEntry {
    /// Builds the schedule, or explains which `run.` key is out of range.
    pub build: fn(&ScheduleContext) -> Result<Schedule, String>,
    /// One line for `engine list`.
    pub doc: &'static str,
}

/// Name -> entry maps, one per kind. Names are matched case-insensitively (stored lower-case).
#[derive(Default, Clone)]
pub struct Registry {
    /// Models by name.
    pub models: BTreeMap<String, ModelEntry>,
    /// Datasets by builder name.
    pub datasets: BTreeMap<String, DatasetEntry>,
    /// Processors by name.
    pub processors: BTreeMap<String, ProcessorEntry>,
    /// Tasks by name.
    pub tasks: BTreeMap<String, TaskEntry>,
    /// Optimizers by name.
    pub optimizers: BTreeMap<String, OptimizerEntry>,
    /// LR schedules by name.
    pub schedulers: BTreeMap<String, SchedulerEntry>,
}

fn find<'a, T>(map: &'a BTreeMap<String, T>, what: &str, key: &str, name: &str) -> Result<&'a T, String> {
    map.get(&name.to_ascii_lowercase()).ok_or_else(|| {
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        unknown_name(what, key, name, &names)
    })
}

impl Registry {
    /// Registers a model.
    pub fn register_model(&mut self, name: &str, entry: ModelEntry) {
        self.models.insert(name.to_ascii_lowercase(), entry);
    }
    /// Registers a dataset builder.
    pub fn register_dataset(&mut self, name: &str, entry: DatasetEntry) {
        self.datasets.insert(name.to_ascii_lowercase(), entry);
    }
    /// Registers a processor.
    pub fn register_processor(&mut self, name: &str, entry: ProcessorEntry) {
        self.processors.insert(name.to_ascii_lowercase(), entry);
    }
    /// Registers a task.
    pub fn register_task(&mut self, name: &str, entry: TaskEntry) {
        self.tasks.insert(name.to_ascii_lowercase(), entry);
    }
    /// Registers an optimizer.
    pub fn register_optimizer(&mut self, name: &str, entry: OptimizerEntry) {
        self.optimizers.insert(name.to_ascii_lowercase(), entry);
    }
    /// Registers an LR schedule.
    pub fn register_scheduler(&mut self, name: &str, entry: SchedulerEntry) {
        self.schedulers.insert(name.to_ascii_lowercase(), entry);
    }

    /// The model named `name` (error lists the registered models).
    pub fn model(&self, name: &str) -> Result<&ModelEntry, String> {
        find(&self.models, "model", "model.arch", name)
    }
    /// The dataset builder named `name`.
    pub fn dataset(&self, key: &str, name: &str) -> Result<&DatasetEntry, String> {
        find(&self.datasets, "dataset builder", key, name)
    }
    /// The processor named `name`; `key` is the config position for the message.
    pub fn processor(&self, key: &str, name: &str) -> Result<&ProcessorEntry, String> {
        find(&self.processors, "processor", key, name)
    }
    /// The task named `name`.
    pub fn task(&self, name: &str) -> Result<&TaskEntry, String> {
        find(&self.tasks, "task", "run.task", name)
    }
    /// The optimizer named `name`.
    pub fn optimizer(&self, name: &str) -> Result<&OptimizerEntry, String> {
        find(&self.optimizers, "optimizer", "run.optimizer", name)
    }
    /// The LR schedule named `name`.
    pub fn scheduler(&self, name: &str) -> Result<&SchedulerEntry, String> {
        find(&self.schedulers, "scheduler", "run.scheduler", name)
    }

    /// `(kind, [(name, doc)])` for `engine list`.
    pub fn listing(&self) -> Vec<(&'static str, Vec<(String, &'static str)>)> {
        fn l<T>(m: &BTreeMap<String, T>, doc: impl Fn(&T) -> &'static str) -> Vec<(String, &'static str)> {
            m.iter().map(|(k, v)| (k.clone(), doc(v))).collect()
        }
        vec![
            ("models", l(&self.models, |e| e.doc)),
            ("datasets", l(&self.datasets, |e| e.doc)),
            ("processors", l(&self.processors, |e| e.doc)),
            ("tasks", l(&self.tasks, |e| e.doc)),
            ("optimizers", l(&self.optimizers, |e| e.doc)),
            ("schedulers", l(&self.schedulers, |e| e.doc)),
        ]
    }
}
