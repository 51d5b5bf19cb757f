//! Registry entries of the built-in models, datasets, tasks, optimizers and LR schedules.

use std::path::Path;
use std::sync::Arc;

use bevy_ecs::prelude::*;
use ecstrain_systems::data::{NpyDataset, NpySplitFiles, SyntheticDataset, SyntheticOptions, TargetSpec};
use ecstrain_systems::optim::at_accumulation_boundary;
use ecstrain_systems::schedule::lr::{LrSchedule, LrScheduler, Warmup};
use ecstrain_systems::sets::*;
use ecstrain_systems::tasks::classification::{classification_eval, classification_loss, ClassificationTask};
use ecstrain_systems::{models, optim};
use serde::Deserialize;

use crate::app::{App, Plugin};
use crate::registry::*;

/// `mlp`, `cnn`, `sequential`.
pub struct BuiltinModels;

impl Plugin for BuiltinModels {
    fn build(&self, app: &mut App) {
        app.registry.register_model(
            "sequential",
            ModelEntry {
                build: models::sequential::build,
                presets: &[],
                doc: "a layer list written in YAML: layers: [{type: conv2d|linear|max_pool2d|avg_pool2d|global_avg_pool|flatten|reshape|relu|gelu|gelu_tanh|tanh|sigmoid|dropout, ...}]",
            },
        );
        app.registry.register_model(
            "cnn",
            ModelEntry {
                build: models::cnn::build,
                presets: models::cnn::PRESETS,
                doc: "conv stack + MLP head: input_shape, channels, kernel, stride, padding, pool, activation, hidden_sizes, output_size, dropout, bias",
            },
        );
        app.registry.register_model(
            "mlp",
            ModelEntry {
                build: models::mlp::build,
                presets: models::mlp::PRESETS,
                doc: "multi-layer perceptron: input_size, hidden_sizes, activation, output_size, dropout, bias",
            },
        );
    }
}

/// `npy`.
pub struct BuiltinDatasets;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NpyOptions {
    train: NpySplitFiles,
    #[serde(default)]
    val: Option<NpySplitFiles>,
}

fn build_npy(options: &serde_json::Map<String, serde_json::Value>, root: &Path) -> Result<DatasetSplits, String> {
    let o: NpyOptions =
        serde_json::from_value(serde_json::Value::Object(options.clone())).map_err(|e| e.to_string())?;
    let train = NpyDataset::open(&o.train, root)?;
    let val = o.val.as_ref().map(|v| NpyDataset::open(v, root)).transpose()?;
    if let Some(v) = &val {
        use ecstrain_systems::data::Dataset;
        if v.sample_shape() != train.sample_shape() {
            return Err(format!(
                "val samples have shape {:?} ({}) but train samples have shape {:?} ({})",
                v.sample_shape(),
                v.describe(),
                train.sample_shape(),
                train.describe()
            ));
        }
    }
    Ok(DatasetSplits { train: Arc::new(train), val: val.map(|v| Arc::new(v) as _) })
}

fn build_synthetic(
    options: &serde_json::Map<String, serde_json::Value>,
    _root: &Path,
) -> Result<DatasetSplits, String> {
    let o: SyntheticOptions =
        serde_json::from_value(serde_json::Value::Object(options.clone())).map_err(|e| e.to_string())?;
    let train = SyntheticDataset::generate(&o, o.train_samples, 0)?;
    let val = (o.val_samples > 0).then(|| SyntheticDataset::generate(&o, o.val_samples, 1)).transpose()?;
    Ok(DatasetSplits { train: Arc::new(train), val: val.map(|v| Arc::new(v) as _) })
}

impl Plugin for BuiltinDatasets {
    fn build(&self, app: &mut App) {
        app.registry.register_dataset(
            "synthetic",
            DatasetEntry {
                build: build_synthetic,
                doc: "random normal inputs and uniform labels in memory: shape, classes, train_samples, val_samples, seed",
            },
        );
        app.registry.register_dataset(
            "npy",
            DatasetEntry {
                build: build_npy,
                doc: "memory-mapped .npy arrays: train/val splits, each {x: inputs.npy, y: labels.npy}",
            },
        );
    }
}

/// `classification`.
pub struct BuiltinTasks;

fn install_classification(app: &mut App, ctx: &TaskContext) -> Result<(), String> {
    let [classes] = ctx.output_shape else {
        return Err(format!("task classification needs a model output of shape [classes], got {:?}", ctx.output_shape));
    };
    let classes = *classes;
    for (split, ds) in [("train", Some(ctx.train)), ("val", ctx.val)] {
        let Some(ds) = ds else { continue };
        match ds.target_spec() {
            TargetSpec::Classes { num_classes } if num_classes > classes => {
                return Err(format!(
                    "{split} labels ({}) go up to {} but the model has {classes} outputs",
                    ds.describe(),
                    num_classes - 1
                ))
            }
            TargetSpec::Classes { .. } => {}
            TargetSpec::Dense { .. } => {
                return Err(format!(
                    "task classification needs integer class labels (a 1-d int64 or uint8 array); {split} targets of {} are not",
                    ds.describe()
                ))
            }
        }
    }
    let r = ctx.run;
    if !(0.0..=1.0).contains(&r.label_smoothing) {
        return Err(format!("run.label_smoothing must be in [0, 1], got {}", r.label_smoothing));
    }
    let opts = ecstrain_kernels::ops::softmax_cross_entropy::CrossEntropyOptions {
        ignore_index: None,
        label_smoothing: r.label_smoothing,
    };
    app.insert_resource(ClassificationTask::new(classes, r.top_k, opts, ctx.capacity));
    app.add_systems(TrainStep, classification_loss.in_set(StepSet::Loss));
    app.add_systems(ValidationStep, classification_eval.in_set(StepSet::Loss));
    Ok(())
}

impl Plugin for BuiltinTasks {
    fn build(&self, app: &mut App) {
        app.registry.register_task(
            "classification",
            TaskEntry {
                install: install_classification,
                fitness: ("accuracy", true),
                doc: "softmax cross-entropy; val loss, accuracy, top-k accuracy",
            },
        );
    }
}

/// `sgd`, `adamw`.
pub struct BuiltinOptimizers;

impl Plugin for BuiltinOptimizers {
    fn build(&self, app: &mut App) {
        app.registry.register_optimizer(
            "sgd",
            OptimizerEntry {
                state: optim::sgd::STATE,
                install: |app| {
                    app.add_systems(
                        TrainStep,
                        optim::sgd::sgd_update.run_if(at_accumulation_boundary).in_set(StepSet::Optimize),
                    );
                },
                doc: "SGD as torch.optim.SGD: momentum, dampening, nesterov, weight_decay",
            },
        );
        app.registry.register_optimizer(
            "adamw",
            OptimizerEntry {
                state: optim::adamw::STATE,
                install: |app| {
                    app.add_systems(
                        TrainStep,
                        optim::adamw::adamw_update.run_if(at_accumulation_boundary).in_set(StepSet::Optimize),
                    );
                },
                doc: "AdamW as torch.optim.AdamW: betas (momentum, beta2), eps, decoupled weight_decay",
            },
        );
    }
}

/// `constant`, `linear`, `cosine`, each after an optional linear warm-up.
pub struct BuiltinSchedulers;

fn with_warmup(ctx: &ScheduleContext, main: impl Fn(u64) -> LrSchedule) -> Result<LrScheduler, String> {
    let r = ctx.run;
    let warm = (r.warmup_epochs * ctx.steps_per_epoch as f64).round() as u64;
    let warm = warm.min(ctx.total_steps);
    let rest = ctx.total_steps - warm;
    Ok(LrScheduler {
        base_lr: r.lr0,
        warmup: (warm > 0).then_some(Warmup { steps: warm, start_factor: r.warmup_start_factor }),
        schedule: main(rest.max(1)),
    })
}

impl Plugin for BuiltinSchedulers {
    fn build(&self, app: &mut App) {
        app.registry.register_scheduler(
            "constant",
            SchedulerEntry {
                build: |c| with_warmup(c, |_| LrSchedule::Constant),
                doc: "lr0 throughout (after warm-up)",
            },
        );
        app.registry.register_scheduler(
            "linear",
            SchedulerEntry {
                build: |c| {
                    let f = c.run.lrf;
                    with_warmup(c, |n| LrSchedule::Linear { total_steps: n, start_factor: 1.0, end_factor: f })
                },
                doc: "linear from lr0 to lr0*lrf over the run (torch LinearLR)",
            },
        );
        app.registry.register_scheduler(
            "cosine",
            SchedulerEntry {
                build: |c| {
                    let f = c.run.lrf;
                    with_warmup(c, |n| LrSchedule::Cosine { total_steps: n, final_factor: f })
                },
                doc: "cosine from lr0 to lr0*lrf over the run (torch CosineAnnealingLR)",
            },
        );
    }
}
