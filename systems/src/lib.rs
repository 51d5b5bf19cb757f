//! ECS behaviour of the training engine: the systems of every stage of a step, and the built-in builders.
//!
//! Stages (see [`sets::StepSet`]): Load -> Preprocess -> Forward -> Loss -> Backward -> Reduce -> Optimize ->
//! Schedule -> Log. Each module owns one concern and exposes plain functions (testable without a World) plus
//! the systems that wrap them.

pub mod checkpoint;
pub mod data;
pub mod device;
pub mod graph;
pub mod logging;
pub mod models;
pub mod optim;
pub mod parallel;
pub mod qat;
pub mod replace;
pub mod schedule;
pub mod sets;
pub mod tasks;
