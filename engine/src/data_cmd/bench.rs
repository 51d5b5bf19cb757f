//! `engine data bench`: the train loader of a config, timed alone.

use clap::Args;

use crate::error::{usage, EngineError};

/// Options of `engine data bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {}

/// Runs `engine data bench`.
pub fn run(_args: &BenchArgs) -> Result<(), EngineError> {
    Err(usage("engine data bench: not built yet"))
}
