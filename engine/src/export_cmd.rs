//! `engine export`: a trained model leaves the engine. The config's model is assembled as for evaluation (on
//! the CPU, without resuming), every parameter and buffer is loaded from the checkpoint (names and shapes must
//! match, so a checkpoint of another model is exit 2), and the model is written as
//! - `onnx`: the static graph at opset 17 with a dynamic batch dimension (`ecstrain_deploy::onnx`), input
//!   `input`, output `output`;
//! - `safetensors`: the weights only, under PyTorch's names (batch-norm counters as int64), loadable into the
//!   model's PyTorch twin with `load_state_dict`.
//!
//! The file is written beside its destination and renamed into place, so a failed export leaves nothing; an
//! existing `--out` must be a regular file (a device or FIFO there is refused, never replaced).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use ecstrain_components::{Buffers, Graph, ParamInfo, ParamSlice, Params};
use ecstrain_deploy::onnx::{export_model, ModelView, QdqPlan};
use ecstrain_systems::checkpoint::safetensors_io::{encode_safetensors, load_safetensors, TensorData};

use crate::assemble::{assemble, Assembly};
use crate::cli::{default_app, load_args, RunArgs};
use crate::error::{usage, EngineError};
use crate::eval::checkpoint_path;
use crate::out_path::{location_error, out_file, NewDirs};

/// The file formats of `engine export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The graph and its weights as an ONNX model.
    Onnx,
    /// The weights only (PyTorch names), as safetensors.
    Safetensors,
}

/// Options of `engine export`.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// The config (and overrides) the model was trained with.
    #[command(flatten)]
    pub run: RunArgs,
    /// `best` or `last` of the latest run directory of the config's run.save_dir, or a checkpoint path.
    #[arg(long, value_name = "best|last|PATH")]
    pub checkpoint: String,
    /// What to write.
    #[arg(long, value_enum, default_value_t = ExportFormat::Onnx)]
    pub format: ExportFormat,
    /// The file to write.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
}

/// The config's model on the CPU with the checkpoint's weights loaded: the starting point of export and
/// quantization.
pub fn assemble_trained(run: &RunArgs, checkpoint: &str) -> Result<(Assembly, PathBuf), EngineError> {
    let (mut loaded, headless) = load_args(run)?;
    // The weights come from --checkpoint; deployment runs on the CPU whatever device the run trained on.
    loaded.config.run.resume = serde_json::Value::Bool(false);
    loaded.config.run.device = "cpu".into();
    let r = &loaded.config.run;
    let ckpt = checkpoint_path(checkpoint, &r.save_dir, r.exist_ok).map_err(usage)?;
    let mut asm = assemble(default_app(), loaded, headless)?;
    let p = ckpt.display();
    if !ckpt.is_file() {
        return Err(usage(format!("--checkpoint: checkpoint not found: {p}")));
    }
    let ck = load_safetensors(&ckpt).map_err(|e| usage(format!("--checkpoint: {p}: {e}")))?;
    crate::weights::load_model_exact(&mut asm.app.world, &ck, &ckpt, "--checkpoint", "").map_err(|m| {
        usage(format!("{m} (the checkpoint does not match the model of {})", asm.loaded.path.display()))
    })?;
    Ok((asm, ckpt))
}

/// Every parameter's name and shape by entity.
pub fn param_infos(asm: &mut Assembly) -> HashMap<bevy_ecs::entity::Entity, ParamInfo> {
    let world = &mut asm.app.world;
    let mut q = world.query::<(bevy_ecs::entity::Entity, &ParamInfo)>();
    q.iter(world).map(|(e, i)| (e, i.clone())).collect()
}

/// The assembled model as an ONNX file (float, or int8 QDQ with `qdq`), written atomically.
pub fn write_onnx(asm: &mut Assembly, qdq: Option<&QdqPlan>, out: &Path) -> Result<usize, EngineError> {
    let infos = param_infos(asm);
    let world = &asm.app.world;
    let view = ModelView {
        graph: world.resource::<Graph>(),
        params: &world.resource::<Params>().0.data,
        buffers: world.resource::<Buffers>(),
        infos: &infos,
    };
    let bytes = export_model(&view, qdq).map_err(|e| usage(format!("export: {e}")))?;
    write_atomically(out, &bytes)?;
    Ok(bytes.len())
}

/// `bytes` to the file `out` (`--out`): a temporary file beside it, fsync, and a rename, so a failed write
/// leaves nothing. Missing parent directories are created (and removed again when the write fails). `out`
/// must be a new path or a regular file ([`out_file`]: a symbolic link writes to its target); a location that
/// cannot be written (under a file, read-only, /proc) is exit 2, a failure while writing exit 1.
pub fn write_atomically(out: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let target = out_file("--out", out)?;
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dirs = NewDirs::create(parent).map_err(|e| location_error("--out", "create the directory", parent, e))?;
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Named by the process: two exports never share it, and create_new never opens something already there.
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| location_error("--out", "write", out, e))?;
    let written = write_and_rename(file, bytes, &tmp, &target);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::Run(format!("--out: cannot write {}: {e}", out.display())));
    }
    dirs.keep();
    Ok(())
}

/// Writes `bytes` into `file` (open at `tmp`), flushes it to disk, and renames `tmp` over `target`.
fn write_and_rename(mut file: std::fs::File, bytes: &[u8], tmp: &Path, target: &Path) -> std::io::Result<()> {
    use std::io::Write;
    file.write_all(bytes)?;
    // On disk before the rename makes it visible: a crash must not leave an empty file under the final name.
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, target)
}

/// The model's weights (parameters, then buffers) under their names, as safetensors.
fn write_weights(asm: &mut Assembly, out: &Path) -> Result<usize, EngineError> {
    let world = &mut asm.app.world;
    let mut q = world.query::<(&ParamInfo, &ParamSlice)>();
    let mut entries: Vec<(ParamInfo, ParamSlice)> = q.iter(world).map(|(i, s)| (i.clone(), *s)).collect();
    entries.sort_by_key(|(_, s)| s.offset);
    let params = &world.resource::<Params>().0;
    let buffers = world.resource::<Buffers>();
    let ints: Vec<Vec<i64>> =
        buffers.entries.iter().map(|e| buffers.arena.get(e.slice).iter().map(|&v| v as i64).collect()).collect();
    let mut tensors: Vec<(String, Vec<usize>, TensorData)> =
        entries.iter().map(|(i, s)| (i.name.clone(), i.shape.clone(), TensorData::F32(params.get(*s)))).collect();
    for (e, ints) in buffers.entries.iter().zip(&ints) {
        let data = if e.integer { TensorData::I64(ints) } else { TensorData::F32(buffers.arena.get(e.slice)) };
        tensors.push((e.name.clone(), e.shape.clone(), data));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "ecstrain-weights".to_string());
    meta.insert("arch".to_string(), world.resource::<Graph>().arch.clone());
    let bytes = encode_safetensors(out, &tensors, &meta).map_err(|e| EngineError::Run(format!("--out: {e}")))?;
    write_atomically(out, &bytes)?;
    Ok(tensors.len())
}

/// Runs `engine export`.
pub fn run(args: &ExportArgs) -> Result<(), EngineError> {
    // A --out that can never be written fails before the model is built.
    out_file("--out", &args.out)?;
    let (mut asm, ckpt) = assemble_trained(&args.run, &args.checkpoint)?;
    let arch = asm.app.world.resource::<Graph>().arch.clone();
    match args.format {
        ExportFormat::Onnx => {
            let bytes = write_onnx(&mut asm, None, &args.out)?;
            println!(
                "exported {arch} from {} to {} (ONNX opset {}, {bytes} bytes)",
                ckpt.display(),
                args.out.display(),
                ecstrain_deploy::onnx::OPSET
            );
        }
        ExportFormat::Safetensors => {
            let n = write_weights(&mut asm, &args.out)?;
            println!("exported {arch} weights from {} to {} ({n} tensors)", ckpt.display(), args.out.display());
        }
    }
    Ok(())
}
