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
    /// Run each linear layer and the activation that reads it as one node (the same numbers bit for bit): the
    /// activation runs on each chunk of the product while it is in cache and keeps its derivative for the
    /// backward, which is then one multiply in place, with no gradient buffer of its own. On by default (W3 4%
    /// faster on AVX-512, W1 the same; benches/README.md); `false` runs the separate ops.
    #[serde(default = "d::fuse", skip_serializing_if = "is_true")]
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
    /// Per-split processors (LAVIS's train / eval processors): lists of registered processor names with
    /// options, run on every sample between the dataset and the batch.
    #[serde(default, skip_serializing_if = "SplitProcessors::is_empty")]
    pub processors: SplitProcessors,
    /// Builder options (for `npy`: `train`, `val`, `test` with `x` and `y` files).
    #[serde(flatten)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// `datasets.<name>.processors:` — the processor list of the training split and of the evaluation splits.
/// Each entry is a name, `name: {options}`, or `{name: ..., options...}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitProcessors {
    /// Applied to training samples (augmentation lives here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub train: Vec<serde_json::Value>,
    /// Applied to validation and test samples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eval: Vec<serde_json::Value>,
}

impl SplitProcessors {
    /// No processors on either split.
    pub fn is_empty(&self) -> bool {
        self.train.is_empty() && self.eval.is_empty()
    }
}

macro_rules! defaults {
    ($($f:ident: $t:ty = $v:expr;)*) => {
        $(pub(super) fn $f() -> $t { $v })*
    };
}

/// Whether a flag is on (serde's `skip_serializing_if` for flags that default to on).
fn is_true(v: &bool) -> bool {
    *v
}

mod d {
    defaults! {
        fuse: bool = true;
        amp: serde_json::Value = serde_json::Value::Bool(false);
        amp_init_scale: f64 = 65536.0;
        amp_growth_interval: u64 = 2000;
        amp_growth: f64 = 2.0;
        amp_backoff: f64 = 0.5;
        ema_decay: f64 = 0.9999;
        ema_tau: f64 = 2000.0;
        prefetch: usize = 2;
        bucket_mb: f64 = 25.0;
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
        momentum_decay: f64 = 4e-3;
        alpha: f64 = 0.99;
        rho: f64 = 0.9;
        weight_decay: f64 = 0.01;
        warmup_epochs: f64 = 0.0;
        gamma: f64 = 0.1;
        step_size: u64 = 30;
        power: f64 = 1.0;
        pct_start: f64 = 0.3;
        div_factor: f64 = 25.0;
        final_div_factor: f64 = 1e4;
        base_momentum: f64 = 0.85;
        max_momentum: f64 = 0.95;
        restart_epochs: u64 = 10;
        restart_mult: u64 = 1;
        lr_decay_rate: f64 = 0.9;
        warmup_bias_lr: f64 = 0.1;
        warmup_momentum: f64 = 0.8;
        yolo_variant: String = "current".into();
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
        plots: serde_json::Value = serde_json::Value::String("end".into());
        yes: bool = true;
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
    /// Registered optimizer, case-insensitive: `SGD`, `Adam`, `AdamW`, `Adamax`, `NAdam`, `RAdam`, `RMSProp`,
    /// `Adagrad`, `Adadelta`.
    #[serde(default = "d::optimizer")]
    pub optimizer: String,
    /// LR schedule (`engine list`): torch-like `constant`, `linear` and `cosine` (lr0 -> lr0*lrf), `exponential`,
    /// `polynomial`, `step`, `multistep`, `cosine_restarts`, `one_cycle`; LAVIS `linear_warmup_cosine`,
    /// `linear_warmup_step`; Ultralytics `yolo_linear`, `yolo_cos`.
    #[serde(default = "d::scheduler")]
    pub scheduler: String,
    /// Initial learning rate.
    #[serde(default = "d::lr0")]
    pub lr0: f64,
    /// Final learning rate as a fraction of lr0.
    #[serde(default = "d::lrf")]
    pub lrf: f64,
    /// SGD and RMSprop momentum, or beta1 of the Adam family (Adam, AdamW, Adamax, NAdam, RAdam), as
    /// Ultralytics. RMSprop therefore gets 0.9 by default where torch's default is 0; set 0 for torch's.
    #[serde(default = "d::momentum")]
    pub momentum: f64,
    /// Adam family: beta2.
    #[serde(default = "d::beta2")]
    pub beta2: f64,
    /// Epsilon of the Adam family, RMSprop, Adagrad and Adadelta (torch's defaults differ for the last two:
    /// 1e-10 and 1e-6).
    #[serde(default = "d::eps")]
    pub eps: f64,
    /// SGD: Nesterov momentum.
    #[serde(default)]
    pub nesterov: bool,
    /// SGD: dampening.
    #[serde(default)]
    pub dampening: f64,
    /// Adam, AdamW: the AMSGrad variant (normalise by the running maximum of the second moment).
    #[serde(default)]
    pub amsgrad: bool,
    /// Adam, NAdam, RAdam: decay the parameters as AdamW does (`p *= 1 - lr * weight_decay`) instead of adding
    /// an L2 term to the gradient (AdamW always decouples).
    #[serde(default)]
    pub decoupled_weight_decay: bool,
    /// NAdam: momentum decay psi, `mu_t = beta1 * (1 - 0.5 * 0.96^(t * psi))`.
    #[serde(default = "d::momentum_decay")]
    pub momentum_decay: f64,
    /// RMSprop: smoothing constant of the running averages.
    #[serde(default = "d::alpha")]
    pub alpha: f64,
    /// RMSprop: normalise by the centered second moment (an estimate of the gradient's variance).
    #[serde(default)]
    pub centered: bool,
    /// Adagrad: learning-rate decay, step t uses `lr / (1 + (t - 1) * lr_decay)`.
    #[serde(default)]
    pub lr_decay: f64,
    /// Adagrad: value the sum of squared gradients starts at.
    #[serde(default)]
    pub initial_accumulator_value: f64,
    /// Adadelta: decay of its running averages.
    #[serde(default = "d::rho")]
    pub rho: f64,
    /// Weight decay (scaled by batch * accumulate / nbs, as Ultralytics); biases and other 1-d parameters
    /// get none.
    #[serde(default = "d::weight_decay")]
    pub weight_decay: f64,
    /// Warm-up length in epochs (fractional allowed): for the torch-like schedules a linear ramp from
    /// `warmup_start_factor * lr0` into the schedule; for the Ultralytics ones their bias / momentum warm-up.
    #[serde(default = "d::warmup_epochs")]
    pub warmup_epochs: f64,
    /// LR factor at the first warm-up step.
    #[serde(default)]
    pub warmup_start_factor: f64,
    /// `step` and `multistep`: lr factor at each decay; `exponential`: lr factor per epoch.
    #[serde(default = "d::gamma")]
    pub gamma: f64,
    /// `step`: epochs between two decays by `gamma` (counted from the end of the warm-up).
    #[serde(default = "d::step_size")]
    pub step_size: u64,
    /// `multistep`: epochs at which the lr is multiplied by `gamma`, strictly increasing (counted from the end
    /// of the warm-up, as torch's `SequentialLR`).
    #[serde(default)]
    pub milestones: Vec<u64>,
    /// `polynomial`: exponent of the decay from lr0 to 0 (1 = linear).
    #[serde(default = "d::power")]
    pub power: f64,
    /// `one_cycle`: fraction of the run over which the lr rises to its peak lr0, in (0, 1).
    #[serde(default = "d::pct_start")]
    pub pct_start: f64,
    /// `one_cycle`: the lr starts at lr0 / div_factor.
    #[serde(default = "d::div_factor")]
    pub div_factor: f64,
    /// `one_cycle`: the lr ends at lr0 / div_factor / final_div_factor.
    #[serde(default = "d::final_div_factor")]
    pub final_div_factor: f64,
    /// `one_cycle`: momentum (SGD) or beta1 (Adam family) at the lr peak.
    #[serde(default = "d::base_momentum")]
    pub base_momentum: f64,
    /// `one_cycle`: momentum or beta1 at the start and the end of the cycle.
    #[serde(default = "d::max_momentum")]
    pub max_momentum: f64,
    /// `cosine_restarts`: epochs of the first cosine cycle (torch `T_0`).
    #[serde(default = "d::restart_epochs")]
    pub restart_epochs: u64,
    /// `cosine_restarts`: each cycle is this many times longer than the previous one (torch `T_mult`).
    #[serde(default = "d::restart_mult")]
    pub restart_mult: u64,
    /// LAVIS schedules: the lr never falls below this.
    #[serde(default)]
    pub min_lr: f64,
    /// LAVIS schedules: lr of the first warm-up step (LAVIS `warmup_lr`; default lr0, i.e. no ramp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_lr: Option<f64>,
    /// LAVIS schedules: warm-up length in optimizer steps; the warm-up only happens inside epoch 0.
    #[serde(default)]
    pub warmup_steps: u64,
    /// `linear_warmup_step`: lr factor per epoch (LAVIS `lr_decay_rate`), floored at `min_lr`.
    #[serde(default = "d::lr_decay_rate")]
    pub lr_decay_rate: f64,
    /// Ultralytics schedules: bias lr at the start of the `warmup_epochs` warm-up (it falls to the lr).
    #[serde(default = "d::warmup_bias_lr")]
    pub warmup_bias_lr: f64,
    /// Ultralytics schedules: SGD momentum at the start of the warm-up (it rises to `momentum`).
    #[serde(default = "d::warmup_momentum")]
    pub warmup_momentum: f64,
    /// Ultralytics schedules: `current` (Ultralytics main: warm-up of round(warmup_epochs * steps) steps, epoch e
    /// at lr0*lf(e)) or `legacy` (YOLOv5 / Ultralytics 8.0.x: at least 100 warm-up steps, epoch e at
    /// lr0*lf(e-1)).
    #[serde(default = "d::yolo_variant")]
    pub yolo_variant: String,
    /// Ultralytics' `cos_lr`: `true` turns `linear` into `cosine` and `yolo_linear` into `yolo_cos`.
    #[serde(default)]
    pub cos_lr: bool,
    /// Clip every gradient element to [-v, v] before the optimizer step (0 = off; torch `clip_grad_value_`).
    #[serde(default)]
    pub clip_grad_value: f64,
    /// Scale the gradients so their joint L2 norm is at most this before the optimizer step (0 = off; torch
    /// `clip_grad_norm_`; Ultralytics clips at 10.0). Applied after `clip_grad_value`.
    #[serde(default)]
    pub clip_grad_norm: f64,
    /// Keep an exponential moving average of the weights (Ultralytics' ModelEMA) and validate, select the best
    /// checkpoint and stop early on it.
    #[serde(default)]
    pub ema: bool,
    /// Quantization-aware training: fake-quantize (int8, straight-through gradient) the input of every linear
    /// and conv2d layer and its weights per output channel while training and validating; `engine quantize`
    /// then takes the learned input ranges. Usually a short fine-tune from `model.pretrained`.
    #[serde(default)]
    pub qat: bool,
    /// Time every graph op (forward, backward and evaluation forward) and write the table to `profile.txt` in
    /// the run directory at the end, with the per-op-kind summary on the terminal (CPU only).
    #[serde(default)]
    pub profile: bool,
    /// EMA: asymptotic decay.
    #[serde(default = "d::ema_decay")]
    pub ema_decay: f64,
    /// EMA: the decay ramps up as `ema_decay * (1 - exp(-updates / ema_tau))`.
    #[serde(default = "d::ema_tau")]
    pub ema_tau: f64,
    /// Layer-wise learning-rate decay for transformers (BEiT / BLIP-2): block k of `depth` trains at
    /// `layer_decay^(depth - k)` times the rate, the embeddings at `layer_decay^(depth + 1)`, the head and final
    /// norm at the full rate. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_decay: Option<f64>,
    /// LAVIS's gradient accumulation: optimizer steps every this many batches, weight decay unscaled
    /// (overrides the `nbs` rule when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accum_grad_iters: Option<u64>,
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
    /// Mixed precision: `false` / `off`, `bf16`, or `f16` (`true` = f16, as Ultralytics' `amp: True`). Autocast
    /// needs CUDA; f16's dynamic loss scaling (torch GradScaler) runs on every device.
    #[serde(default = "d::amp")]
    pub amp: serde_json::Value,
    /// CUDA: f32 matrix products (linear, convolution, attention) on TF32 tensor cores, as PyTorch's
    /// `torch.backends.cuda.matmul.allow_tf32` and `torch.backends.cudnn.allow_tf32` (the latter on by default
    /// there). Off by default here: products stay exact f32. Ignored on the CPU and under `amp`.
    #[serde(default)]
    pub tf32: bool,
    /// CUDA: keep the train split's processed inputs in device memory. Each step then uploads only its rows'
    /// indices and gathers the rows on the GPU, so the host neither assembles nor stages input rows. Needs
    /// train processors without random augmentation (their output would differ every epoch) and room on
    /// the device for the whole split. Ignored on the CPU.
    #[serde(default)]
    pub device_cache: bool,
    /// f16 loss scaling: the first scale (torch 2^16).
    #[serde(default = "d::amp_init_scale")]
    pub amp_init_scale: f64,
    /// f16 loss scaling: finite steps in a row before the scale grows.
    #[serde(default = "d::amp_growth_interval")]
    pub amp_growth_interval: u64,
    /// f16 loss scaling: growth factor.
    #[serde(default = "d::amp_growth")]
    pub amp_growth: f64,
    /// f16 loss scaling: factor after a step with inf / NaN gradients (the step is skipped).
    #[serde(default = "d::amp_backoff")]
    pub amp_backoff: f64,
    /// Data-loading threads. 0: each batch is assembled on the training thread when the step needs it. N >= 1:
    /// a background thread assembles batches ahead of the steps (rows in parallel on a pool of N threads of
    /// its own, not the compute threads) into a queue of `prefetch` batches; the results are identical.
    #[serde(default)]
    pub workers: usize,
    /// With `workers` >= 1: batches the background loader keeps ready (at least 1).
    #[serde(default = "d::prefetch")]
    pub prefetch: usize,
    /// Data-parallel CPU runs: MiB of gradients per all-reduce bucket (PyTorch DDP's `bucket_cap_mb`; the first
    /// bucket is capped at 1 MiB, as DDP's is). Buckets are all-reduced on a communication thread as the
    /// backward finishes them, overlapping the communication with the rest of the backward. 0: one all-reduce
    /// of the whole gradient arena after the backward.
    #[serde(default = "d::bucket_mb")]
    pub bucket_mb: f64,
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
    /// Wall-clock budget in hours (Ultralytics' `time`): the run stops after the optimizer step that crosses
    /// it, writes `last.safetensors` (resumable) and exits 0 with stop reason `time_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<f64>,
    /// PNG plots in the run directory (losses, validation metrics, lr, confusion matrix): `end` (at the end
    /// of the run), `true` (also after every epoch's checkpoint), `false` (none).
    #[serde(default = "d::plots")]
    pub plots: serde_json::Value,
    /// Write `results.csv` in the run directory: one row per epoch, Ultralytics-style columns.
    #[serde(default = "d::yes")]
    pub results_csv: bool,
    /// Write a TensorBoard event file in the run directory (`tensorboard --logdir runs/`).
    #[serde(default = "d::yes")]
    pub tensorboard: bool,
}

impl Default for RunSection {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every run key has a default")
    }
}
