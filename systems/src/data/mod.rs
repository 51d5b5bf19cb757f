//! Data: file readers ([`npy`]), the [`Dataset`] abstraction with the built-in datasets, and the [`loader`].

pub mod dataset;
pub mod loader;
pub mod npy;

pub use dataset::{Dataset, NpyDataset, NpySplitFiles, TargetSpec};
pub use loader::{Loader, TrainLoader, ValLoader};
