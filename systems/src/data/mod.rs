//! Data: file readers ([`npy`]), the [`Dataset`] abstraction with the built-in datasets ([`dataset`],
//! [`synthetic`]), per-sample [`processors`], the [`pipeline`] that chains them, and the [`loader`].

pub mod dataset;
pub mod loader;
pub mod npy;
pub mod pipeline;
pub mod processors;
pub mod sample;
pub mod synthetic;

pub use dataset::{DataError, Dataset, NpyDataset, NpySplitFiles, TargetSpec};
pub use loader::{loader_pool, Loader, LoaderPool, TrainLoader, ValLoader};
pub use pipeline::Pipeline;
pub use processors::Processor;
pub use sample::{Sample, ShapeInfo};
pub use synthetic::{SyntheticDataset, SyntheticOptions};
