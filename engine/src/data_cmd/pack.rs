//! `engine data pack`: image folder -> .npy shards.

use clap::Args;

use crate::error::{usage, EngineError};

/// Options of `engine data pack`.
#[derive(Args, Debug, Clone)]
pub struct PackArgs {}

/// Runs `engine data pack`.
pub fn run(_args: &PackArgs) -> Result<(), EngineError> {
    Err(usage("engine data pack: not built yet"))
}
