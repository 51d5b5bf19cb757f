//! `engine data ...`: tools for datasets outside a training run.

pub mod bench;
pub mod pack;

use clap::Subcommand;

/// `engine data` subcommands.
#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Convert an image folder (one subfolder per class) into .npy shards (uint8 NCHW + int64 labels) for
    /// memory-mapped training with the `npy` dataset.
    Pack(pack::PackArgs),
    /// Measure the input pipeline of a config alone (no model): samples/s of its train loader.
    Bench(bench::BenchArgs),
}

/// Runs an `engine data` subcommand.
pub fn run(cmd: &DataCommand) -> Result<(), crate::error::EngineError> {
    match cmd {
        DataCommand::Pack(a) => pack::run(a),
        DataCommand::Bench(a) => bench::run(a),
    }
}
