//! The command line: `engine --config x.yaml [--set k=v ...] [--headless]` trains; `engine eval` runs one
//! validation pass of a checkpoint; `engine predict` writes a checkpoint's outputs on new inputs; `engine check` validates and prints the resolved config and model summary;
//! `engine list` prints the registry.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::app::App;
use crate::assemble::assemble;
use crate::config::{load_config, LoadedConfig};
use crate::error::EngineError;
use crate::eval::{checkpoint_path, evaluate, Split};
use crate::launch::{connect, LaunchEnv};
use crate::plugins::DefaultPlugins;
use ecstrain_systems::parallel::{Collective, Comm};

/// A data-oriented, ECS-style deep-learning training engine.
#[derive(Parser, Debug)]
#[command(name = "engine", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do (default: train).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Training options when no subcommand is given.
    #[command(flatten)]
    pub train: RunArgs,
}

/// Options shared by the commands that read a config.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// The YAML config of the run.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Override a config value: section.key=value (repeatable; beats the file).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Plain log lines instead of a progress bar (automatic when stdout is not a terminal).
    #[arg(long)]
    pub headless: bool,
}

/// Options of `engine eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// The config (and overrides) the model was trained with.
    #[command(flatten)]
    pub run: RunArgs,
    /// `best` or `last` of the latest run directory of the config's run.save_dir, or a checkpoint path.
    #[arg(long, value_name = "best|last|PATH")]
    pub checkpoint: String,
    /// The split to evaluate.
    #[arg(long, value_enum, default_value_t = Split::Val)]
    pub split: Split,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train (the default).
    Train(RunArgs),
    /// Evaluate a checkpoint: one validation pass of the config's model on a split; writes nothing.
    Eval(EvalArgs),
    /// Validate a config: print the resolved config and the model summary; train nothing.
    Check(RunArgs),
    /// List the registered models, datasets, processors, tasks, optimizers and schedules.
    List,
    /// Dataset tools: pack an image folder into .npy shards, benchmark a config's input pipeline.
    #[command(subcommand)]
    Data(crate::data_cmd::DataCommand),
    /// Kernel throughput on a device beside its measured ceilings (copy bandwidth, GEMM rate).
    Bench(crate::bench_cmd::BenchArgs),
    /// Write a trained model out: the graph as ONNX, or the weights as safetensors under PyTorch names.
    Export(crate::export_cmd::ExportArgs),
    /// Int8 post-training quantization: calibrate, evaluate float vs int8, write a QDQ ONNX model.
    Quantize(crate::quantize_cmd::QuantizeArgs),
    /// Run a checkpoint on new inputs (a .npy array, images) or a split; write its predictions as CSV or .npy.
    Predict(crate::predict_cmd::PredictArgs),
}

/// The app `engine` runs: every built-in plugin.
pub fn default_app() -> App {
    let mut app = App::new();
    app.add_plugin(DefaultPlugins);
    app
}

/// The config of `args` with its overrides, and whether the console is headless; sizes the thread pool.
pub fn load_args(args: &RunArgs) -> Result<(LoadedConfig, bool), EngineError> {
    let path = args.config.clone().ok_or_else(|| crate::error::usage("missing --config <file.yaml>"))?;
    let loaded = load_config(&path, &args.set)?;
    if let Some(n) = loaded.config.run.threads {
        // Checked here, before the pool exists: thousands of threads would hang the start.
        let max = crate::assemble::MAX_THREADS;
        if n > max {
            let at = path.display();
            return Err(crate::error::usage(format!(
                "{at}: run.threads must be at most {max} compute threads, got {n}"
            )));
        }
        // Only the first call in a process can size the global pool; later runs keep it.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global();
    }
    let headless = args.headless || loaded.config.run.headless || !std::io::stdout().is_terminal();
    Ok((loaded, headless))
}

fn loaded_assembly(args: &RunArgs) -> Result<crate::assemble::Assembly, EngineError> {
    let (loaded, headless) = load_args(args)?;
    assemble(default_app(), loaded, headless)
}

/// Training, on one process or as one rank of a data-parallel run: connects to the other ranks (launcher
/// environment, MPI), assembles, and lets every rank learn whether all assembled, so bad input ends every
/// rank with exit 2 together, before any of them trains or writes. A failure during a data-parallel run
/// aborts all ranks (one rank alone would leave the others waiting in a collective).
fn train(args: &RunArgs) -> Result<(), EngineError> {
    let env = LaunchEnv::from_env().map_err(crate::error::usage)?;
    let comm = connect(env).map_err(crate::error::usage)?;
    let (rank, world) = (comm.rank(), comm.world());
    let assembled = load_args(args).and_then(|(loaded, headless)| {
        let mut app = default_app();
        app.insert_resource(Comm(comm.clone()));
        app.insert_resource(crate::device_comm::Launch(env));
        assemble(app, loaded, headless)
    });
    let mut asm = agree(comm.as_ref(), assembled)?;
    // Collective on every rank of a data-parallel CUDA run; a failure anywhere stops all of them with exit 2.
    if let Some(note) = crate::device_comm::connect(&comm, &mut asm.app.world).map_err(crate::error::usage)? {
        asm.notices.push(note);
    }
    if world > 1 {
        asm.notices.push(format!(
            "data parallel: rank {rank} of {world} (launcher {}, local rank {}) over {}; run.batch is per rank",
            env.launcher,
            env.local_rank,
            comm.backend()
        ));
    }
    match crate::runner::train(asm) {
        // Only rank 0 writes, so only it can find the run directory unusable (exit 2): it, too, ends them all.
        Err(e @ (EngineError::Run(_) | EngineError::Usage(_))) if world > 1 => {
            eprintln!("error: rank {rank}: {e}");
            comm.abort(e.exit_code())
        }
        r => r.map(|_| ()),
    }
}

/// Every rank's assembly outcome, shared: the assembly when all ranks assembled; this rank's own error, or an
/// error naming the failed ranks, otherwise (exit 2 on every rank). One collective call.
fn agree(
    comm: &dyn Collective,
    assembled: Result<crate::assemble::Assembly, EngineError>,
) -> Result<crate::assemble::Assembly, EngineError> {
    if comm.world() == 1 {
        return assembled;
    }
    let mut failed = vec![0.0f64; comm.world()];
    failed[comm.rank()] = f64::from(u8::from(assembled.is_err()));
    comm.all_reduce_sum_f64(&mut failed);
    let bad: Vec<String> = failed.iter().enumerate().filter(|(_, &f)| f > 0.0).map(|(r, _)| r.to_string()).collect();
    let e = match assembled {
        Err(e) => crate::error::usage(format!("rank {}: {e}", comm.rank())),
        Ok(_) if !bad.is_empty() => crate::error::usage(format!(
            "rank {} rejected the config or data (its message above); every rank stops with exit 2",
            bad.join(", ")
        )),
        Ok(asm) => return Ok(asm),
    };
    // Every rank prints its message, then waits for the others (one more collective) before any exits: the
    // launcher kills the remaining ranks once one exits with an error, and a rank still printing would be cut
    // off.
    eprintln!("error: {e}");
    let _ = std::io::Write::flush(&mut std::io::stderr());
    comm.all_reduce_sum_f64(&mut [0.0]);
    Err(EngineError::Reported(e.exit_code()))
}

/// `engine eval`: assembles as training would (without resuming), evaluates, prints one metric a line.
fn eval(args: &EvalArgs) -> Result<(), EngineError> {
    let (mut loaded, headless) = load_args(&args.run)?;
    // The weights come from --checkpoint; a resume setting of the training config must not load (or fail on)
    // another file first.
    loaded.config.run.resume = serde_json::Value::Bool(false);
    let run = &loaded.config.run;
    let ckpt = checkpoint_path(&args.checkpoint, &run.save_dir, run.exist_ok).map_err(crate::error::usage)?;
    let mut asm = assemble(default_app(), loaded, headless)?;
    for n in &asm.notices {
        println!("note: {n}");
    }
    let result = evaluate(&mut asm, &ckpt, args.split)?;
    println!("evaluated {} on the {} split ({} samples)", ckpt.display(), args.split.name(), result.samples);
    for (name, value) in &result.metrics {
        // `{}` prints the shortest text that reads back as the same f64, as metrics.jsonl does.
        println!("{name:<16} {value}");
    }
    Ok(())
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<(), EngineError> {
    match cli.command {
        None => train(&cli.train),
        Some(Command::Train(a)) => train(&a),
        Some(Command::Eval(a)) => eval(&a),
        Some(Command::Check(a)) => {
            let asm = loaded_assembly(&a)?;
            for n in &asm.notices {
                println!("note: {n}");
            }
            println!(
                "# resolved config ({})\n{}\n# model\n{}",
                asm.loaded.path.display(),
                asm.resolved_yaml,
                asm.summary
            );
            println!("config OK");
            Ok(())
        }
        Some(Command::Data(d)) => crate::data_cmd::run(&d),
        Some(Command::Bench(b)) => crate::bench_cmd::run(&b),
        Some(Command::Export(e)) => crate::export_cmd::run(&e),
        Some(Command::Quantize(q)) => crate::quantize_cmd::run(&q),
        Some(Command::Predict(p)) => crate::predict_cmd::run(&p),
        Some(Command::List) => {
            for (kind, entries) in default_app().registry.listing() {
                println!("{kind}:");
                // Docs start in one column per kind, past its longest name (processor names run long).
                let width = entries.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(16);
                for (name, doc) in entries {
                    println!("  {name:<width$} {doc}");
                }
            }
            Ok(())
        }
    }
}

/// Entry point of the `engine` binary: parses arguments, runs, prints errors, returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => 0,
        Err(EngineError::Interrupted(m)) => {
            println!("{m}");
            EngineError::Interrupted(m).exit_code()
        }
        Err(EngineError::Reported(code)) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
