//! ECS data of the training engine: components, resources and the model graph IR.
//!
//! Nothing here runs training code; behaviour lives in `ecstrain-systems`. The split follows design.md:
//! parameter entities carry identity, names and markers ([`param`]); the numbers they name live in contiguous
//! arenas ([`arena`]); everything global to a run is a resource ([`clock`], [`batch`], [`metrics`], [`run`], [`ema`]);
//! the model is a static graph described as data ([`graph`]).

pub mod amp;
pub mod arena;
pub mod batch;
pub mod clock;
pub mod ema;
pub mod graph;
pub mod metrics;
pub mod param;
pub mod qat;
pub mod run;

pub use amp::{AmpMode, LossScaler};
pub use arena::{Arena, Grads, OptimizerState, Params, StateLayout};
pub use batch::{Batch, ExtraArray, Extras, Mode, Targets};
pub use clock::{Clock, LearningRate};
pub use ema::{EmaShadow, EmaWeights};
pub use graph::{
    Activation, BufferEntry, Buffers, Conv2dSpec, Graph, Node, OpKind, ParamRef, Pool2dSpec, ValueId, ValueInfo,
};
pub use metrics::{Meter, MetricEvent, Metrics};
pub use param::{Bias, Frozen, LrScale, NoDecay, ParamInfo, ParamSlice};
pub use qat::QatWeights;
pub use run::{
    DataWait, IterPlan, OutputSettings, PlotMode, RunFailure, RunInfo, RunSettings, RunTimer, Shard, StopRequest,
    TrainingState,
};
