//! Typed config sections with their defaults. Unknown keys are errors (serde `deny_unknown_fields`), except
//! in the builder-specific parts of `model` and `datasets.<name>`, which the registered builder validates.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A whole config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What to train.
    pub model: ModelSection,
    /// Named datasets (one is supported per run for now).
    pub datasets: BTreeMap<String, DatasetSection>,
    /// How to train.
    #[serde(default)]
    pub run: RunSection,
}

/// `model:` — `arch` names a registered model, `type` an optional preset; other keys go to the builder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelSection {
    /// Registered model name (`mlp`).
    pub arch: String,
    /// Optional preset of the model (LAVIS's `model_type`); explicit keys override its values.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// Initial weights: a safetensors file whose tensors are matched to parameters by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<PathBuf>,
    /// With `pretrained`: fail unless every parameter is found and every tensor used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Name prefixes of parameters to freeze (e.g. `features.` or `layers.0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<String>,
    /// Run each linear layer and the activation that reads it as one fused kernel (the same numbers, one pass
    /// fewer); `false` runs every module as its own node, for benchmarks and debugging.
    #[serde(default = "d::yes", skip_serializing_if = "is_true")]
    pub fuse: bool,
    /// Builder options.
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// `datasets.<name>:` — `builder` names a registered dataset; other keys (splits, files) go to the builder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetSection {
    /// Registered dataset builder (`npy`).
    pub builder: String,
    /// Directory that relative paths are resolved against (default: the working directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Builder options (for `npy`: `train`, `val`, `test` with `x` and `y` files).
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// For `skip_serializing_if`: a `true` flag is the default and need not be written out.
fn is_true(b: &bool) -> bool {
    *b
}

macro_rules! defaults {
    ($($f:ident: $t:ty = $v:expr;)*) => {
        $(pub(super) fn $f() -> $t { $v })*
    };
}

mod d {
    defaults! {
        yes: bool = true;
        task: String = "classification".into();
        epochs: u64 = 100;
        batch: usize = 64;
        optimizer: String = "AdamW".into();
        scheduler: String = "linear".into();
        lr0: f64 = 1e-3;
        lrf: f64 = 0.01;
        momentum: f64 = 0.9;
        beta2: f64 = 0.999;
        eps: f64 = 1e-8;
        weight_decay: f64 = 0.01;
        warmup_epochs: f64 = 0.0;
        nbs: usize = 64;
        patience: u64 = 100;
        device: String = "cpu".into();
        save_dir: std::path::PathBuf = "runs/train".into();
        log_interval: u64 = 10;
        val_interval: u64 = 1;
        save_period: i64 = -1;
        top_k: usize = 5;
        recon_loss: String = "mse".into();
        recon_weight: f64 = 1.0;
        vq_weight: f64 = 1.0;
        data_range: f64 = 1.0;
        resume: serde_json::Value = serde_json::Value::Bool(false);
    }
}

/// `run:` — training options. Keys follow Ultralytics' names where one exists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Registered task (`classification`).
    #[serde(default = "d::task")]
    pub task: String,
    /// Epochs to train (ignored when `max_iters` is set).
    #[serde(default = "d::epochs")]
    pub epochs: u64,
    /// Iteration-based run (LAVIS RunnerIters): optimizer steps in the whole run; replaces `epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_iters: Option<u64>,
    /// With `max_iters`: optimizer steps per inner epoch, the unit of validation, checkpoints, early stopping
    /// and epoch records (1..=max_iters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iters_per_inner_epoch: Option<u64>,
    /// Samples per batch (per process).
    #[serde(default = "d::batch")]
    pub batch: usize,
    /// Registered optimizer, case-insensitive (`SGD`, `AdamW`).
    #[serde(default = "d::optimizer")]
    pub optimizer: String,
    /// LR schedule: `constant`, `linear` (lr0 -> lr0*lrf), `cosine` (lr0 -> lr0*lrf).
    #[serde(default = "d::scheduler")]
    pub scheduler: String,
    /// Initial learning rate.
    #[serde(default = "d::lr0")]
    pub lr0: f64,
    /// Final learning rate as a fraction of lr0.
    #[serde(default = "d::lrf")]
    pub lrf: f64,
    /// SGD momentum, or beta1 of the Adam family (as Ultralytics).
    #[serde(default = "d::momentum")]
    pub momentum: f64,
    /// Adam family: beta2.
    #[serde(default = "d::beta2")]
    pub beta2: f64,
    /// Adam family: epsilon.
    #[serde(default = "d::eps")]
    pub eps: f64,
    /// SGD: Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
    /// SGD: dampening.
    #[serde(default)]
    pub dampening: f64,
    /// Weight decay (scaled by batch * accumulate / nbs, as Ultralytics); biases and other 1-d parameters
    /// get none.
    #[serde(default = "d::weight_decay")]
    pub weight_decay: f64,
    /// Linear warm-up length in epochs (fractional allowed), from `warmup_start_factor * lr0` to the schedule.
    #[serde(default = "d::warmup_epochs")]
    pub warmup_epochs: f64,
    /// LR factor at the first warm-up step.
    #[serde(default)]
    pub warmup_start_factor: f64,
    /// Nominal batch size: gradients accumulate over max(round(nbs / batch), 1) batches.
    #[serde(default = "d::nbs")]
    pub nbs: usize,
    /// Epochs (inner epochs) without improvement of the fitness metric before stopping (0 = never).
    #[serde(default = "d::patience")]
    pub patience: u64,
    /// Validation metric that selects the best checkpoint (default: the task's, e.g. `accuracy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitness: Option<String>,
    /// `max` or `min`: which direction of `fitness` is better (default: the task's for its metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitness_mode: Option<String>,
    /// `cpu`, `cuda`, `cuda:N`.
    #[serde(default = "d::device")]
    pub device: String,
    /// Seed of every random stream (initialisation, shuffling, dropout).
    #[serde(default)]
    pub seed: u64,
    /// Mixed precision (CUDA only; ignored with a notice on the CPU, as Ultralytics does).
    #[serde(default)]
    pub amp: bool,
    /// Data-loading worker threads (0 = load in the training thread).
    #[serde(default)]
    pub workers: usize,
    /// Compute threads for the CPU kernels (default: all cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Run directory; an existing one gets a numbered sibling unless `exist_ok`.
    #[serde(default = "d::save_dir")]
    pub save_dir: PathBuf,
    /// Reuse `save_dir` if it exists.
    #[serde(default)]
    pub exist_ok: bool,
    /// Resume: `false`, `true` / `auto` (`<save_dir>/checkpoints/last.safetensors`), or a checkpoint path.
    #[serde(default = "d::resume")]
    pub resume: serde_json::Value,
    /// Optimizer steps between training log records.
    #[serde(default = "d::log_interval")]
    pub log_interval: u64,
    /// Epochs (inner epochs) between validation passes.
    #[serde(default = "d::val_interval")]
    pub val_interval: u64,
    /// Save `epochN.safetensors` every this many epochs or inner epochs (<= 0: never).
    #[serde(default = "d::save_period")]
    pub save_period: i64,
    /// k of the top-k accuracy metric (classification).
    #[serde(default = "d::top_k")]
    pub top_k: usize,
    /// Label smoothing of the cross-entropy loss (classification).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Reconstruction loss, `mse` or `l1` (reconstruction).
    #[serde(default = "d::recon_loss")]
    pub recon_loss: String,
    /// Weight of the reconstruction term of the loss (reconstruction).
    #[serde(default = "d::recon_weight")]
    pub recon_weight: f64,
    /// Weight of the graph's auxiliary losses, e.g. a VQ layer's codebook + commitment loss (reconstruction).
    #[serde(default = "d::vq_weight")]
    pub vq_weight: f64,
    /// Peak value of the data for PSNR and SSIM: 1 for images in [0, 1], 255 for bytes (reconstruction).
    #[serde(default = "d::data_range")]
    pub data_range: f64,
    /// Drop the last incomplete training batch of each epoch.
    #[serde(default)]
    pub drop_last: bool,
    /// Plain log lines instead of a progress bar (also `--headless`, and automatic without a terminal).
    #[serde(default)]
    pub headless: bool,
}

impl Default for RunSection {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every run key has a default")
    }
}
