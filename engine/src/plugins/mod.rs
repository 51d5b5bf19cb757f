//! Built-in plugins. Every engine feature is one, installed through the same [`Plugin`](crate::app::Plugin)
//! API a user plugin uses; [`DefaultPlugins`] is the set `engine` runs with.

pub mod amp;
pub mod builtins;
pub mod checkpoint;
pub mod clipping;
pub mod core;
pub mod cuda;
pub mod datasets;
pub mod ema;
pub mod int8;
pub mod logging;
pub mod optimizers;
pub mod parallel;
pub mod processors;
pub mod qat;
pub mod schedulers;

use crate::app::{App, Plugin};

/// Registry entries, the step pipeline, logging and checkpointing.
pub struct DefaultPlugins;

impl Plugin for DefaultPlugins {
    fn build(&self, app: &mut App) {
        app.add_plugin(builtins::BuiltinModels)
            .add_plugin(datasets::BuiltinDatasets)
            .add_plugin(processors::BuiltinProcessors)
            .add_plugin(builtins::BuiltinTasks)
            .add_plugin(optimizers::BuiltinOptimizers)
            .add_plugin(schedulers::BuiltinSchedulers)
            .add_plugin(core::CorePlugin)
            .add_plugin(cuda::CudaPlugin)
            .add_plugin(clipping::GradClipPlugin)
            .add_plugin(ema::EmaPlugin)
            .add_plugin(amp::AmpPlugin)
            .add_plugin(int8::Int8Plugin)
            .add_plugin(qat::QatPlugin)
            .add_plugin(parallel::DataParallelPlugin)
            .add_plugin(logging::JsonlLogPlugin)
            .add_plugin(logging::ConsolePlugin)
            .add_plugin(logging::SummaryPlugin)
            .add_plugin(logging::ResultsCsvPlugin)
            .add_plugin(logging::TensorBoardPlugin)
            .add_plugin(logging::PlotsPlugin)
            .add_plugin(logging::ProfilePlugin)
            .add_plugin(checkpoint::CheckpointPlugin);
    }
}
