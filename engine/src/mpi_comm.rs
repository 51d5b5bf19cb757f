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
/// calls `MPI_Finalize`, and the name server of a torchrun-style launch goes last.
pub struct MpiCollective {
    inner: Mutex<Inner>,
    rank: usize,
    size: usize,
    version: String,
    _universe: Universe,
    _server: Option<crate::rendezvous::OmpiServer>,
}

// SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED (checked in `initialize`), which allows calls from
// any thread as long as no two are concurrent; every call goes through the mutex.
unsafe impl Send for MpiCollective {}
// SAFETY: as above: shared access only reaches MPI through the mutex.
unsafe impl Sync for MpiCollective {}

/// Initialises MPI (once per process) with the thread support the engine needs.
pub(crate) fn initialize() -> Result<Universe, String> {
    let (universe, threading) =
        mpi::initialize_with_threading(Threading::Serialized).ok_or("MPI was already initialised in this process")?;
    if threading < Threading::Serialized {
        return Err(format!(
            "the MPI library offers thread support {threading:?}; the engine needs Serialized (MPI calls come from a worker thread)"
        ));
    }
    Ok(universe)
}

impl MpiCollective {
    /// Initialises MPI (once per process) and takes the world mpirun or srun made.
    pub fn init() -> Result<MpiCollective, String> {
        let universe = initialize()?;
        let world = universe.world();
        Ok(MpiCollective::over(universe, world, None))
    }

    /// The world of a torchrun-style launch, formed at `MASTER_ADDR:MASTER_PORT` (see [`crate::rendezvous`]).
    pub fn rendezvous(
        env: crate::launch::LaunchEnv,
        addr: &crate::rendezvous::StoreAddr,
    ) -> Result<MpiCollective, String> {
        let (universe, world, server) = crate::rendezvous::join_world(env, addr)?;
        Ok(MpiCollective::over(universe, world, server))
    }

    fn over(
        universe: Universe,
        world: SimpleCommunicator,
        server: Option<crate::rendezvous::OmpiServer>,
    ) -> MpiCollective {
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let version = mpi::environment::library_version().unwrap_or_default();
        // "Open MPI v4.1.4, package: ..., ident: ..." (with a NUL inside): the name and version are enough.
        let version = version.split([',', '\n', '\0']).next().unwrap_or("").trim().to_string();
        MpiCollective {
            inner: Mutex::new(Inner { world, scratch: Vec::new(), scratch64: Vec::new() }),
            rank,
            size,
            version,
            _universe: universe,
            _server: server,
        }
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
