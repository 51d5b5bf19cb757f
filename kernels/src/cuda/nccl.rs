//! NCCL (feature `nccl`): the GPU communication engine of data-parallel CUDA runs, through cudarc's `nccl`
//! bindings, loaded at run time like the rest of CUDA.
//!
//! The engine never implements a collective itself: a [`NcclComm`] is created from a unique id that rank 0
//! draws ([`unique_id`]) and the launcher's other channel (MPI here) hands to every rank; after that every
//! gradient average is an in-place `ncclAllReduce(ncclAvg)` over a range of the device gradient arena on the
//! communicator's own stream: [`NcclComm::average_in_place`] orders it after the compute stream's work so far
//! (the kernels that wrote the range) without holding the compute stream back, so buckets reduce while the
//! backward goes on; [`NcclComm::join`] then orders the compute stream (clipping, the optimizer) after every
//! average. No host round trip either way.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaEvent, CudaStream, CudaViewMut};
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

/// One rank's NCCL communicator, on a stream of its own beside the [`Gpu`]'s compute stream.
pub struct NcclComm {
    comm: Mutex<Comm>,
    /// The GPU's compute stream (what the averages wait for, and what waits for them).
    compute: Arc<CudaStream>,
    /// The communicator's stream.
    stream: Arc<CudaStream>,
    /// Recorded on the compute stream before each average, on the communicator's stream at each join.
    ready: CudaEvent,
    done: CudaEvent,
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
        let stream = gpu.context().new_stream()?;
        let comm = Comm::from_rank(stream.clone(), rank, world, id).map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(NcclComm {
            comm: Mutex::new(comm),
            compute: gpu.stream().clone(),
            stream,
            ready: gpu.context().new_event(None)?,
            done: gpu.context().new_event(None)?,
            rank,
            world,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the communicator.
    pub fn world(&self) -> usize {
        self.world
    }

    /// `buf` averaged over the ranks in place (sum, then divided by the world size) on the communicator's
    /// stream, after everything issued to the compute stream so far; the compute stream goes on meanwhile
    /// (it must not write `buf` before [`join`](Self::join)).
    pub fn average_in_place(&self, buf: &mut CudaViewMut<f32>) -> Result<(), GpuError> {
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        // A stream wait takes the event as last recorded, so one event serves every bucket.
        self.ready.record(&self.compute)?;
        self.stream.wait(&self.ready)?;
        comm.all_reduce_in_place(buf, &ReduceOp::Avg).map_err(|e| nccl_error("ncclAllReduce", e))?;
        Ok(())
    }

    /// Orders the compute stream's later work after every average issued so far.
    pub fn join(&self) -> Result<(), GpuError> {
        let _comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        self.done.record(&self.stream)?;
        self.compute.wait(&self.done)?;
        Ok(())
    }
}
