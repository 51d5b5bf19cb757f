//! Registry entries of the built-in models and tasks (datasets: `datasets.rs`, processors: `processors.rs`,
//! optimizers: `optimizers.rs`, LR schedules: `schedulers.rs`).

use bevy_ecs::prelude::*;
use ecstrain_systems::data::TargetSpec;
use ecstrain_systems::device::loss::host_loss;
use ecstrain_systems::models;
use ecstrain_systems::sets::*;
use ecstrain_systems::tasks::classification::{
    classification_eval, classification_loss, reset_confusion, ClassificationTask, ConfusionMatrix,
};

use crate::app::{App, Plugin};
use crate::registry::*;

/// `mlp`, `cnn`, `resnet`, `vit`, `autoencoder`, `sequential`.
pub struct BuiltinModels;

impl Plugin for BuiltinModels {
    fn build(&self, app: &mut App) {
        app.registry.register_model(
            "resnet",
            ModelEntry {
                build: models::resnet::build,
                presets: models::resnet::PRESETS,
                doc: "CIFAR-style ResNet (depth 6n+2, BasicBlocks, torchvision names): input_shape, depth, width, output_size, bn_eps, bn_momentum",
            },
        );
        app.registry.register_model(
            "vit",
            ModelEntry {
                build: models::vit::build,
                presets: models::vit::PRESETS,
                doc: "Vision Transformer (pre-norm, timm names): input_shape, patch, dim, depth, heads, mlp_ratio, pool (cls|mean), output_size, norm_eps, qkv_bias, causal, activation",
            },
        );
        app.registry.register_model(
            "autoencoder",
            ModelEntry {
                build: models::autoencoder::build,
                presets: models::autoencoder::PRESETS,
                doc: "conv autoencoder, a VQ-VAE with codes > 0: input_shape, channels, latent_dim, codes, beta, activation, output_activation",
            },
        );
        app.registry.register_model(
            "sequential",
            ModelEntry {
                build: models::sequential::build,
                presets: &[],
                doc: "a layer list written in YAML: layers: [{type: conv2d|linear|max_pool2d|avg_pool2d|adaptive_avg_pool2d|global_avg_pool|embedding|token_mean|flatten|reshape|permute|batch_norm2d|layer_norm|upsample|residual|relu|gelu|gelu_tanh|tanh|sigmoid|silu|softmax|dropout, ...}]",
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

/// `classification`, `reconstruction`, `regression`, `embedding`.
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
                    ds.describe_targets(),
                    num_classes - 1
                ))
            }
            TargetSpec::Classes { .. } => {}
            TargetSpec::Dense { .. } => {
                return Err(format!(
                    "task classification needs integer class labels (a 1-d int64 or uint8 array); {split} targets of {} are not",
                    ds.describe_targets()
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
    app.insert_resource(ConfusionMatrix::new(classes));
    // On CUDA the device computes it instead (`device::loss::DeviceLoss`, inserted by assembly), as it does
    // for regression, embedding and reconstruction.
    app.add_systems(TrainStep, classification_loss.run_if(host_loss).in_set(StepSet::Loss));
    app.add_systems(ValidationStart, reset_confusion);
    app.add_systems(ValidationStep, classification_eval.in_set(StepSet::Loss));
    Ok(())
}

/// Checks that every split has dense float targets of `numel(output)` values (regression, embedding) and
/// returns that count.
fn dense_target_len(task: &str, ctx: &TaskContext) -> Result<usize, String> {
    let numel: usize = ctx.output_shape.iter().product();
    for (split, ds) in [("train", Some(ctx.train)), ("val", ctx.val)] {
        let Some(ds) = ds else { continue };
        match ds.target_spec() {
            TargetSpec::Dense { len } if len == numel => {}
            TargetSpec::Dense { len } => {
                return Err(format!(
                    "task {task}: {split} targets of {} have shape [{len}] per sample but the model output has shape {:?} ({numel} values); they must have the same number of values",
                    ds.describe_targets(),
                    ctx.output_shape
                ))
            }
            TargetSpec::Classes { .. } => {
                return Err(format!(
                    "task {task} needs float targets (a float32 or float64 array of shape [N, {numel}]); {split} targets of {} are integer class labels",
                    ds.describe_targets()
                ))
            }
        }
    }
    Ok(numel)
}

fn install_reconstruction(app: &mut App, ctx: &TaskContext) -> Result<(), String> {
    use ecstrain_systems::tasks::reconstruction::*;
    let r = ctx.run;
    let loss = ReconLoss::parse(&r.recon_loss)?;
    for (key, v) in [("recon_weight", r.recon_weight), ("vq_weight", r.vq_weight)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("run.{key} must be a finite number >= 0, got {v}"));
        }
    }
    if !(r.data_range.is_finite() && r.data_range > 0.0) {
        return Err(format!(
            "run.data_range must be > 0 (the peak value of the data: 1 for [0, 1], 255 for bytes), got {}",
            r.data_range
        ));
    }
    let numel: usize = ctx.output_shape.iter().product();
    if numel == 0 {
        return Err(format!("task reconstruction needs a non-empty model output, got shape {:?}", ctx.output_shape));
    }
    let train_spec = ctx.train.target_spec();
    if let Some(val) = ctx.val {
        let same = match (&train_spec, val.target_spec()) {
            (TargetSpec::Classes { .. }, TargetSpec::Classes { .. }) => true,
            (TargetSpec::Dense { len: a }, TargetSpec::Dense { len: b }) => *a == b,
            _ => false,
        };
        if !same {
            let kind = |t: &TargetSpec| match t {
                TargetSpec::Classes { .. } => "integer class labels".to_string(),
                TargetSpec::Dense { len } => format!("dense targets of {len} values per sample"),
            };
            return Err(format!(
                "task reconstruction: train targets of {} are {} but val targets of {} are {}; both splits need the same kind of targets",
                ctx.train.describe(),
                kind(&train_spec),
                val.describe(),
                kind(&val.target_spec())
            ));
        }
    }
    let target = match train_spec {
        TargetSpec::Dense { len } if len == numel => ReconTarget::Dense,
        _ => {
            let input_shape = ctx.train.sample_shape();
            let input_numel: usize = input_shape.iter().product();
            if input_numel != numel {
                return Err(format!(
                    "task reconstruction: the model output has shape {:?} ({numel} values) but the input has shape {input_shape:?} ({input_numel} values); an autoencoder must reproduce its input (or the dataset must have dense targets of {numel} values per sample)",
                    ctx.output_shape
                ));
            }
            ReconTarget::Input
        }
    };
    let task = ReconstructionTask::new(loss, r.recon_weight, r.vq_weight, r.data_range, target, ctx.output_shape);
    // Image outputs (grey or RGB): the first samples of every validation pass, for val_reconstructions.png.
    if let Some(image @ (1 | 3, _, _)) = task.image {
        use ecstrain_systems::logging::plots::samples::ReconstructionSamples;
        app.insert_resource(ReconstructionSamples::new(image));
        app.add_systems(ValidationStart, reset_reconstruction_samples);
        app.add_systems(ValidationStep, keep_reconstruction_samples.in_set(StepSet::Loss));
    }
    app.insert_resource(task);
    app.add_systems(TrainStep, reconstruction_loss.run_if(host_loss).in_set(StepSet::Loss));
    app.add_systems(ValidationStep, reconstruction_eval.in_set(StepSet::Loss));
    Ok(())
}

fn install_regression(app: &mut App, ctx: &TaskContext) -> Result<(), String> {
    use ecstrain_systems::tasks::regression::*;
    let outputs = dense_target_len("regression", ctx)?;
    app.insert_resource(RegressionTask::new(outputs));
    app.add_systems(TrainStep, regression_loss.run_if(host_loss).in_set(StepSet::Loss));
    app.add_systems(ValidationStep, regression_eval.in_set(StepSet::Loss));
    app.add_systems(ValidationEnd, regression_r2.before(ValidationEndSet::Summarize));
    Ok(())
}

fn install_embedding(app: &mut App, ctx: &TaskContext) -> Result<(), String> {
    use ecstrain_systems::tasks::embedding::*;
    let dim = dense_target_len("embedding", ctx)?;
    app.insert_resource(EmbeddingTask::new(dim));
    app.add_systems(TrainStep, embedding_loss.run_if(host_loss).in_set(StepSet::Loss));
    app.add_systems(ValidationStep, embedding_eval.in_set(StepSet::Loss));
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
        app.registry.register_task(
            "reconstruction",
            TaskEntry {
                install: install_reconstruction,
                fitness: ("psnr", true),
                doc: "autoencoders, VQ-VAE: recon_loss (mse|l1) * recon_weight + VQ loss * vq_weight against the input (or dense targets); val loss, mse, psnr, ssim (data_range)",
            },
        );
        app.registry.register_task(
            "regression",
            TaskEntry {
                install: install_regression,
                fitness: ("r2", true),
                doc: "MSE against dense float targets; val loss, mse, mae, r2 (over the whole val set)",
            },
        );
        app.registry.register_task(
            "embedding",
            TaskEntry {
                install: install_embedding,
                fitness: ("cosine", true),
                doc: "embedding regression with the cosine loss 1 - cos(out, target); val loss, cosine",
            },
        );
    }
}
