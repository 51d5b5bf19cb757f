//! ecstrain: a data-oriented, ECS-style deep-learning training engine.
//!
//! This facade re-exports the layers (`kernels` <- `components` <- `systems` <- `deploy` <- `engine`) as one library;
//! tests, benchmarks and user crates depend on it.

pub use ecstrain_components as components;
pub use ecstrain_deploy as deploy;
pub use ecstrain_engine as engine;
pub use ecstrain_kernels as kernels;
pub use ecstrain_systems as systems;
