//! NCCL (feature `nccl`): the GPU communication engine of data-parallel CUDA runs, through cudarc's `nccl`
//! bindings, loaded at run time like the rest of CUDA.
//!
//! The engine never implements a collective itself: a [`NcclComm`] is created from a unique id that rank 0
//! draws ([`unique_id`]) and the launcher's other channel (MPI here) hands to every rank; after that every
//! gradient all-reduce is one in-place `ncclAllReduce(ncclAvg)` over the device gradient arena on the
//! compute stream, so it is ordered after the backward's kernels and before the optimizer's without a host
//! round trip.

use std::sync::Mutex;

use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::{Gpu, GpuError};

/// Bytes of an NCCL unique id (`ncclUniqueId`).
pub const ID_BYTES: usize = 128;

/// Whether the NCCL library (`libnccl.so`) can be loaded.
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen the library under its usual names; nothing is called.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> GpuError {
    GpuError::Unavailable(format!("NCCL {what}: {e:?}"))
}

/// A fresh NCCL unique id (drawn on rank 0 only), as bytes to send to the other ranks.
pub fn unique_id() -> Result<[u8; ID_BYTES], GpuError> {
    if !nccl_present() {
        return Err(GpuError::Unavailable(
            "NCCL library (libnccl.so.2) not found: install NCCL (pip nvidia-nccl-cu12 or the CUDA toolkit's) and put it on LD_LIBRARY_PATH".into(),
        ));
    }
    let id = Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
    Ok(id.internal().map(|c| c as u8))
}

/// One rank's NCCL communicator, bound to the [`Gpu`]'s compute stream.
pub struct NcclComm {
    comm: Mutex<Comm>,
    rank: usize,
    world: usize,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not overlap; every call
// goes through the mutex. The stream it holds is an Arc'd cudarc stream, itself Send + Sync.
unsafe impl Send for NcclComm {}
// SAFETY: as above.
unsafe impl Sync for NcclComm {}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclComm").field("rank", &self.rank).field("world", &self.world).finish()
    }
}

impl NcclComm {
    /// Joins the communicator of `world` ranks identified by `id` as `rank` (blocks until every rank joined).
    pub fn init(gpu: &Gpu, rank: usize, world: usize, id: &[u8; ID_BYTES]) -> Result<NcclComm, GpuError> {
        if !nccl_present() {
            return unique_id().map(|_| unreachable!("unique_id fails without the library"));
        }
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let comm =
            Comm::from_rank(gpu.stream().clone(), rank, world, id).map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(NcclComm { comm: Mutex::new(comm), rank, world })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the communicator.
    pub fn world(&self) -> usize {
        self.world
    }

    /// `buf` averaged over the ranks in place (sum, then divided by the world size), enqueued on the compute
    /// stream.
    pub fn average_in_place(&self, buf: &mut CudaSlice<f32>) -> Result<(), GpuError> {
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        comm.all_reduce_in_place(buf, &ReduceOp::Avg).map_err(|e| nccl_error("ncclAllReduce", e))?;
        Ok(())
    }
}
