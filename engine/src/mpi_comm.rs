//! The MPI communicator (feature `mpi`): Open MPI through the `mpi` crate. MPI is initialised with
//! `MPI_THREAD_SERIALIZED` because the training loop runs on a thread of rayon's pool, not the main thread;
//! a mutex serialises the calls. Dropping it finalises MPI.

use std::sync::Mutex;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use ecstrain_systems::parallel::Collective;

struct Inner {
    world: SimpleCommunicator,
    /// Receive buffer of the f32 all-reduce (the crate has no in-place form); grows once to the arena size.
    scratch: Vec<f32>,
    scratch64: Vec<f64>,
}

/// MPI's world communicator. Field order matters: the communicator goes before the universe, whose drop
/// calls `MPI_Finalize`.
pub struct MpiCollective {
    inner: Mutex<Inner>,
    rank: usize,
    size: usize,
    version: String,
    _universe: Universe,
}

// SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED (checked in `init`), which allows calls from any
// thread as long as no two are concurrent; every call goes through the mutex.
unsafe impl Send for MpiCollective {}
// SAFETY: as above: shared access only reaches MPI through the mutex.
unsafe impl Sync for MpiCollective {}

impl MpiCollective {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<MpiCollective, String> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or("MPI was already initialised in this process")?;
        if threading < Threading::Serialized {
            return Err(format!(
                "the MPI library offers thread support {threading:?}; the engine needs Serialized (MPI calls come from a worker thread)"
            ));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let version = mpi::environment::library_version().unwrap_or_default();
        let version = version.lines().next().unwrap_or("").trim().trim_end_matches(',').to_string();
        Ok(MpiCollective {
            inner: Mutex::new(Inner { world, scratch: Vec::new(), scratch64: Vec::new() }),
            rank,
            size,
            version,
            _universe: universe,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.size
    }
    fn all_reduce_sum_f32(&self, data: &mut [f32]) {
        let mut g = self.lock();
        let Inner { world, scratch, .. } = &mut *g;
        if scratch.len() < data.len() {
            scratch.resize(data.len(), 0.0);
        }
        let recv = &mut scratch[..data.len()];
        world.all_reduce_into(&*data, recv, SystemOperation::sum());
        data.copy_from_slice(recv);
    }
    fn all_reduce_sum_f64(&self, data: &mut [f64]) {
        let mut g = self.lock();
        let Inner { world, scratch64, .. } = &mut *g;
        if scratch64.len() < data.len() {
            scratch64.resize(data.len(), 0.0);
        }
        let recv = &mut scratch64[..data.len()];
        world.all_reduce_into(&*data, recv, SystemOperation::sum());
        data.copy_from_slice(recv);
    }
    fn broadcast_f32(&self, data: &mut [f32]) {
        let g = self.lock();
        g.world.process_at_rank(0).broadcast_into(data);
    }
    fn abort(&self, code: i32) -> ! {
        let g = self.lock();
        g.world.abort(code)
    }
    fn backend(&self) -> String {
        format!("MPI ({})", self.version)
    }
}
