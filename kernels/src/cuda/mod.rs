//! The CUDA backend: our own `.cu` kernels compiled with NVRTC at first use, cuBLAS for matrix products, all
//! through cudarc with dynamic loading.
//!
//! The library is loaded when a CUDA device is first asked for, so the one `engine` binary builds and runs on
//! machines without a driver; [`probe`] turns every way that can fail (no driver, no device, a bad ordinal)
//! into an error before anything would panic. Each op's kernel source sits next to its CPU twin in
//! `ops/<op>.cu` and is registered in [`source::ALL`]; [`compile`] turns a source into PTX for one
//! architecture (cached on disk by source hash and architecture); [`Gpu`] holds the context, the compute and
//! copy streams, the cuBLAS handle and the loaded modules.

pub mod bench;
pub mod compile;
pub mod gpu;
pub mod launch;
pub mod memory;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod probe;
pub mod resources;
pub mod segments;
pub mod source;
pub mod store;
pub mod testing;

pub use cudarc;
pub use gpu::{Gpu, GpuError, MatmulPrecision};
pub use memory::MemoryUse;
pub use probe::{probe, GpuInfo};
pub use segments::{Segment, SegmentTable};
pub use source::KernelSource;
pub use store::{AnyBuf, AnyView, AnyViewMut, Store, StoreKind};
