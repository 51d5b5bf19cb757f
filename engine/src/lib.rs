//! Assembly of the training engine: the CLI, the YAML config, the registry, the [`App`](app::App) and its
//! plugins, and the runner that drives the schedules.

pub mod app;
pub mod assemble;
pub mod bench_cmd;
pub mod cli;
pub mod config;
pub mod cuda_run;
pub mod data_cmd;
pub mod device_comm;
pub mod error;
pub mod eval;
pub mod export_cmd;
pub mod launch;
pub mod memory_check;
#[cfg(feature = "mpi")]
pub mod mpi_comm;
pub mod out_path;
pub mod param_groups;
pub mod pipelines;
pub mod plugins;
pub mod predict_cmd;
pub mod quantize_cmd;
pub mod registry;
pub mod rendezvous;
pub mod resume;
pub mod run_dir;
pub mod runner;
pub mod signals;
pub mod summary;
pub mod weights;

pub use app::{App, Plugin};
pub use error::EngineError;
