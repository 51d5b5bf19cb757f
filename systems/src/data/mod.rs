//! Data: file readers ([`npy`]), the [`Dataset`] abstraction with the built-in datasets ([`dataset`],
//! [`synthetic`]), and the [`loader`].

pub mod dataset;
pub mod loader;
pub mod npy;
pub mod synthetic;

pub use dataset::{Dataset, NpyDataset, NpySplitFiles, TargetSpec};
pub use loader::{Loader, TrainLoader, ValLoader};
pub use synthetic::{SyntheticDataset, SyntheticOptions};
