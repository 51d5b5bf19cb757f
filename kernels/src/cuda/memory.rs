//! Device memory: what a run holds on its GPU (logged as `gpu_mem`, as Ultralytics logs `GPU_mem`), and the
//! words for running out of it.
//!
//! The run's share is measured, not summed: the drop in the device's free memory since [`Gpu::open`] made the
//! context and streams. So it counts everything the driver hands this process afterwards (the arenas, the
//! planned activations, grown scratch, cuBLAS's workspace, the loaded modules), as torch's
//! `memory_reserved` counts what its caching allocator holds. Another process allocating on the same GPU
//! during the run would count too; cluster jobs normally own their GPU.

use std::sync::atomic::Ordering;

use cudarc::cublas::sys::cublasStatus_t;
use cudarc::driver::sys::CUresult;

use super::{Gpu, GpuError};

/// One reading of a device's memory, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryUse {
    /// Free on the device now.
    pub free: usize,
    /// The device's total memory.
    pub total: usize,
    /// Taken since the device was opened (see the module docs).
    pub held: usize,
    /// The most [`held`](Self::held) of any reading so far.
    pub peak: usize,
}

/// Bytes in GiB.
pub fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Bytes as the shortest readable unit: `512 KiB`, `37.5 MiB`, `1.25 GiB`.
pub fn human_bytes(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", gib(bytes))
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

impl Gpu {
    /// The device's memory now and this run's part of it; also raises the recorded peak. One driver query
    /// (`cuMemGetInfo`, no synchronisation).
    pub fn memory(&self) -> Result<MemoryUse, GpuError> {
        let (free, total) = self.context().mem_get_info()?;
        let held = self.free_at_open.saturating_sub(free);
        let peak = self.peak_held.fetch_max(held, Ordering::Relaxed).max(held);
        Ok(MemoryUse { free, total, held, peak })
    }

    /// `cuda:N has X free of Y and this run holds Z`, for an out-of-memory report; the bare device name
    /// when even that query fails.
    pub fn memory_report(&self) -> String {
        match self.memory() {
            Ok(m) => format!(
                "cuda:{} has {} free of {} and this run holds {}",
                self.info.ordinal,
                human_bytes(m.free),
                human_bytes(m.total),
                human_bytes(m.held)
            ),
            Err(_) => format!("cuda:{}", self.info.ordinal),
        }
    }
}

impl GpuError {
    /// Whether the device ran out of memory: a driver allocation that failed, or cuBLAS unable to allocate
    /// its workspace.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            GpuError::Driver(e) => e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY,
            GpuError::Blas(e) => e.0 == cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED,
            _ => false,
        }
    }
}

/// `the device has X free of Y` for the context bound to this thread (a failure report where the [`Gpu`] is
/// out of reach); empty when the driver cannot say.
pub fn current_device_report() -> String {
    match cudarc::driver::result::mem_get_info() {
        Ok((free, total)) => format!("the device has {} free of {}", human_bytes(free), human_bytes(total)),
        Err(_) => String::new(),
    }
}

/// The way out of an out-of-memory failure, for a run of `batch` samples per step: the keys that shrink
/// what the device holds.
pub fn out_of_memory_advice(batch: usize, amp_on: bool) -> String {
    let amp = if amp_on { "" } else { ", or run.amp: bf16 (or f16) to store activations in half precision" };
    format!("lower run.batch (now {batch}; run.nbs keeps the effective batch by accumulating gradients){amp}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_in_the_nearest_unit() {
        assert_eq!(human_bytes(512 * 1024), "512 KiB");
        assert_eq!(human_bytes(37 * 1048576 + 524288), "37.5 MiB");
        assert_eq!(human_bytes(5 << 29), "2.50 GiB");
        assert_eq!(gib(3 << 30), 3.0);
    }

    #[test]
    fn out_of_memory_is_recognised_from_the_driver_and_cublas() {
        use cudarc::cublas::result::CublasError;
        use cudarc::driver::DriverError;
        assert!(GpuError::Driver(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)).is_out_of_memory());
        assert!(GpuError::Blas(CublasError(cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED)).is_out_of_memory());
        assert!(!GpuError::Driver(DriverError(CUresult::CUDA_ERROR_INVALID_VALUE)).is_out_of_memory());
        assert!(!GpuError::Unavailable("no driver".into()).is_out_of_memory());
    }

    #[test]
    fn the_advice_names_the_keys_that_shrink_the_run() {
        let a = out_of_memory_advice(512, false);
        assert!(a.contains("run.batch (now 512") && a.contains("run.amp"), "{a}");
        assert!(!out_of_memory_advice(512, true).contains("run.amp"));
    }
}
