//! `engine eval`: one validation pass of a trained model, writing nothing. The app is assembled exactly as for
//! training (same validation, exit 2 on bad input; `run.resume` is ignored), every parameter and buffer is
//! loaded from the checkpoint (names and shapes must match the model; other tensors such as optimizer state are
//! ignored, so any safetensors file with the model's tensors works), and the val (or train) split runs through
//! ValidationStep and ValidationEnd in `Mode::Eval`. With no run directory the checkpoint and log stages of
//! ValidationEnd do not run, and Flush is never called: the metrics come back to the caller to print.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ecstrain_components::Metrics;
use ecstrain_systems::checkpoint::safetensors_io::load_safetensors;
use ecstrain_systems::data::{Dataset, Loader, Pipeline, TrainLoader, ValLoader};

use crate::assemble::Assembly;
use crate::error::{usage, EngineError};
use crate::run_dir::latest_run_dir;
use crate::runner::{in_pool, validation_pass};

/// The split `engine eval` runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The dataset's val split (as validation during training).
    Val,
    /// The train split, in order, without shuffling or dropping a last partial batch.
    Train,
    /// The dataset's test split (through the eval processors, in order), which training never reads.
    Test,
}

impl Split {
    /// The split's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Split::Val => "val",
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// The checkpoint `--checkpoint` names: `best` or `last` is `<run dir>/checkpoints/{best,last}.safetensors` in
/// the latest run directory of the config (see [`latest_run_dir`]); anything else is a path (`./best` for a
/// file of that name).
pub fn checkpoint_path(choice: &str, save_dir: &Path, exist_ok: bool) -> Result<PathBuf, String> {
    if choice != "best" && choice != "last" {
        return Ok(PathBuf::from(choice));
    }
    let dir = latest_run_dir(save_dir, exist_ok).ok_or_else(|| {
        format!(
            "--checkpoint {choice}: no run directory {} (run.save_dir of the config): train first, or give a checkpoint path",
            save_dir.display()
        )
    })?;
    Ok(dir.join("checkpoints").join(format!("{choice}.safetensors")))
}

/// The training samples as validation sees them, in order: the train split through the eval processors (no
/// augmentation), neither shuffled nor with a partial last batch dropped, in batches of `run.batch`.
pub fn ordered_train_loader(asm: &Assembly) -> Result<Loader, EngineError> {
    let app = &asm.app;
    let (name, ds) = asm.loaded.config.datasets.iter().next().expect("assembly checked one dataset");
    let key = format!("datasets.{name}.processors.eval");
    let procs = crate::pipelines::build_processors(&app.registry, &key, &ds.processors.eval).map_err(usage)?;
    let train = &app.world.resource::<TrainLoader>().0;
    let seed = asm.loaded.config.run.seed;
    let pipe =
        Pipeline::new(train.pipeline().dataset().clone(), procs, seed, 1).map_err(|m| usage(format!("{key}: {m}")))?;
    Ok(Loader::new(Arc::new(pipe), train.batch_size(), false, false, 0))
}

/// The result of an evaluation: what ran, and the metrics in name order.
pub struct Evaluation {
    /// Samples in the evaluated split.
    pub samples: usize,
    /// Metric name and value, as a validation record holds them.
    pub metrics: Vec<(String, f64)>,
}

/// Loads the model's parameters and buffers from `checkpoint` into the assembled app (`--checkpoint`; names
/// and shapes must match the model). The checkpoint's plain names are the model to run: with EMA they already
/// hold the averages, so this run's own EMA is removed and never swaps in.
pub fn load_checkpoint(asm: &mut Assembly, checkpoint: &Path) -> Result<(), EngineError> {
    let p = checkpoint.display();
    if !checkpoint.is_file() {
        let hint = if checkpoint.ends_with("best.safetensors") {
            " (best is written only by runs that validate; --checkpoint last is the final state)"
        } else {
            ""
        };
        return Err(usage(format!("--checkpoint: checkpoint not found: {p}{hint}")));
    }
    let ck = load_safetensors(checkpoint).map_err(|e| usage(format!("--checkpoint: {p}: {e}")))?;
    crate::weights::load_model_exact(&mut asm.app.world, &ck, checkpoint, "--checkpoint", "").map_err(usage)?;
    asm.app.world.remove_resource::<ecstrain_components::EmaWeights>();
    Ok(())
}

/// The dataset's name under `datasets:`, for messages.
fn dataset_name(asm: &Assembly) -> &str {
    asm.loaded.config.datasets.keys().next().map_or("?", |n| n.as_str())
}

/// Makes `split` the one the validation schedule reads: the val loader as training built it, or an ordered
/// loader over the train or test split in batches the run's buffers hold.
pub fn use_split(asm: &mut Assembly, split: Split) -> Result<(), EngineError> {
    let loader = match split {
        Split::Val if asm.app.world.contains_resource::<ValLoader>() => return Ok(()),
        Split::Val => {
            let name = dataset_name(asm);
            return Err(usage(format!("--split val: datasets.{name} has no val split; use --split train")));
        }
        Split::Train => ordered_train_loader(asm)?,
        Split::Test => {
            let Some(test) = asm.test.clone() else {
                let name = dataset_name(asm);
                return Err(usage(format!(
                    "--split test: datasets.{name} has no test split; add `test:` to it, or use --split val or train"
                )));
            };
            Loader::new(test, batch_rows(asm), false, false, 0)
        }
    };
    asm.app.world.insert_resource(ValLoader { loader, cursor: 0 });
    Ok(())
}

/// The rows the run's batch buffers were planned for (`run.batch`, capped at the largest split of training).
pub fn batch_rows(asm: &Assembly) -> usize {
    let batch = asm.app.world.resource::<ecstrain_components::Batch>();
    (batch.inputs.len() / batch.input_len.max(1)).max(1)
}

/// Loads `checkpoint` into the assembled app and runs one validation pass over `split`.
pub fn evaluate(asm: &mut Assembly, checkpoint: &Path, split: Split) -> Result<Evaluation, EngineError> {
    load_checkpoint(asm, checkpoint)?;
    use_split(asm, split)?;
    let app = &mut asm.app;
    let samples = app.world.resource::<ValLoader>().loader.pipeline().len();
    in_pool(|| validation_pass(app));
    if let Some(f) = &app.world.resource::<ecstrain_components::RunFailure>().0 {
        return Err(EngineError::Run(f.clone()));
    }
    let metrics = app.world.resource::<Metrics>().last_val.iter().map(|(k, v)| (k.clone(), *v)).collect();
    Ok(Evaluation { samples, metrics })
}
