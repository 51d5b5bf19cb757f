//! The YAML config: three sections as in LAVIS (`model`, `datasets`, `run`), `run` keys named as in
//! Ultralytics where one exists. [`schema`] is the typed form with defaults; [`load`] reads a file (errors
//! carry the file, line and column), applies `--set` overrides and renders the resolved YAML; [`keys`] lists
//! every key the code accepts (for the configuration reference).

pub mod keys;
pub mod load;
pub mod schema;

pub use load::{load_config, parse_override, resolved_yaml, LoadedConfig};
pub use schema::{Config, DatasetSection, ModelSection, RunSection, SplitProcessors};
