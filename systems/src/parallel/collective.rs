//! The communicator abstraction. An implementation wraps an existing communication engine (MPI in
//! `ecstrain-engine`'s `mpi` feature; NCCL is the planned GPU one); the engine never implements the
//! collectives itself. Every rank must make the same calls in the same order, as with any MPI program.

use std::sync::Arc;

use bevy_ecs::prelude::*;

/// Collective operations over the processes of a data-parallel run. Calls block until every rank made them.
pub trait Collective: Send + Sync {
    /// This process's index, `0..world()`.
    fn rank(&self) -> usize;
    /// Processes in the run.
    fn world(&self) -> usize;
    /// Element-wise sum over all ranks, in place; every rank ends with the same values.
    fn all_reduce_sum_f32(&self, data: &mut [f32]);
    /// Element-wise sum over all ranks of f64 values (metric sums and counts, flags), in place.
    fn all_reduce_sum_f64(&self, data: &mut [f64]);
    /// Copies rank 0's `data` into every other rank's `data` (same length everywhere).
    fn broadcast_f32(&self, data: &mut [f32]);
    /// Ends every process of the run with `code` (a rank that fails alone would leave the others waiting in
    /// a collective forever). Does not return.
    fn abort(&self, code: i32) -> !;
    /// The communication engine, for messages ("single process", "MPI (Open MPI ...)").
    fn backend(&self) -> String;
}

/// One process: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, _data: &mut [f32]) {}
    fn all_reduce_sum_f64(&self, _data: &mut [f64]) {}
    fn broadcast_f32(&self, _data: &mut [f32]) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn backend(&self) -> String {
        "single process".into()
    }
}

/// The run's communicator (a [`SingleProcess`] when the run is not data parallel).
#[derive(Resource, Clone)]
pub struct Comm(pub Arc<dyn Collective>);

impl Default for Comm {
    fn default() -> Self {
        Comm(Arc::new(SingleProcess))
    }
}

impl Comm {
    /// True on the rank that writes the run directory and prints.
    pub fn is_writer(&self) -> bool {
        self.0.rank() == 0
    }
}

/// Run condition: this process writes the run directory and the terminal output (rank 0, or a run without
/// a communicator).
pub fn is_writer(comm: Option<Res<Comm>>) -> bool {
    comm.is_none_or(|c| c.is_writer())
}
