//! Data: file readers ([`npy`], [`npy_shards`], [`image_decode`]), the [`Dataset`] abstraction ([`dataset`])
//! with the built-in datasets ([`npy_dataset`], [`image_folder`], [`annotations`], [`csv_table`],
//! [`synthetic`]; the image ones share [`image_set`]), per-sample [`processors`], the [`pipeline`] that
//! chains them, and the [`loader`].

pub mod annotations;
pub mod csv_table;
pub mod dataset;
pub mod image_decode;
pub mod image_folder;
pub mod image_set;
pub mod loader;
pub mod npy;
pub mod npy_dataset;
pub mod npy_shards;
pub mod path_or_map;
pub mod pipeline;
pub mod processors;
pub mod sample;
pub mod synthetic;
pub mod unlabeled;

pub use annotations::{AnnotationDataset, AnnotationOptions};
pub use csv_table::{CsvOptions, CsvTable};
pub use dataset::{DataError, Dataset, TargetSpec};
pub use image_folder::{ImageFolderDataset, ImageFolderOptions};
pub use loader::{loader_pool, Loader, LoaderPool, TrainLoader, ValLoader};
pub use npy_dataset::{class_map_json, NpyDataset, NpyOptions, NpySplitFiles};
pub use npy_shards::{FileList, ShardedArray};
pub use pipeline::Pipeline;
pub use processors::Processor;
pub use sample::{Sample, ShapeInfo};
pub use synthetic::{SyntheticDataset, SyntheticOptions};
pub use unlabeled::Unlabeled;
