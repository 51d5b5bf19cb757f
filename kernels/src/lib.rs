//! Numeric core of the engine: tensors, devices and the CPU kernels (forward and backward) of every op.
//!
//! Nothing here knows about the ECS. Kernels work on flat, contiguous buffers with the shapes written in
//! their doc comments (llm.c style); the graph executor in `ecstrain-systems` calls them in order.
//! Each op lives in its own module under [`ops`] with its CPU kernel and its tests (values, a finite-difference
//! gradient check and a float64 reference check); its CUDA source (`<op>.cu`) and host wrappers (`<op>::cuda`)
//! sit next to it, compiled through [`cuda`].

pub mod bench;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod float;
pub mod metrics;
pub mod ops;
pub mod optim;
pub mod quant;
pub mod rng;
#[macro_use]
pub mod simd;
pub mod tensor;

pub use device::{Device, DeviceError};
pub use dtype::DType;
pub use float::Float;
pub use tensor::{Tensor, TensorError};
