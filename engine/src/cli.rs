//! The command line: `engine --config x.yaml [--set k=v ...] [--headless]` trains; `engine check` validates
//! and prints the resolved config and model summary; `engine list` prints the registry.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::app::App;
use crate::assemble::assemble;
use crate::config::load_config;
use crate::error::EngineError;
use crate::plugins::DefaultPlugins;

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

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train (the default).
    Train(RunArgs),
    /// Validate a config: print the resolved config and the model summary; train nothing.
    Check(RunArgs),
    /// List the registered models, datasets, tasks, optimizers and schedules.
    List,
}

/// The app `engine` runs: every built-in plugin.
pub fn default_app() -> App {
    let mut app = App::new();
    app.add_plugin(DefaultPlugins);
    app
}

fn loaded_assembly(args: &RunArgs) -> Result<crate::assemble::Assembly, EngineError> {
    let path = args.config.clone().ok_or_else(|| crate::error::usage("missing --config <file.yaml>"))?;
    let loaded = load_config(&path, &args.set)?;
    if let Some(n) = loaded.config.run.threads {
        // Only the first call in a process can size the global pool; later runs keep it.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global();
    }
    let headless = args.headless || loaded.config.run.headless || !std::io::stdout().is_terminal();
    assemble(default_app(), loaded, headless)
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<(), EngineError> {
    match cli.command {
        None => crate::runner::train(loaded_assembly(&cli.train)?).map(|_| ()),
        Some(Command::Train(a)) => crate::runner::train(loaded_assembly(&a)?).map(|_| ()),
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
        Some(Command::List) => {
            for (kind, entries) in default_app().registry.listing() {
                println!("{kind}:");
                for (name, doc) in entries {
                    println!("  {name:<16} {doc}");
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
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
