//! Data parallelism across processes: the [`Collective`] abstraction over a communication engine (MPI today;
//! one process is a no-op), the [`Comm`] resource holding this process's communicator, and the systems of the
//! Reduce stage that use it (gradient all-reduce, buffer broadcast before validation, metric reduction).

pub mod collective;
pub mod overlap;
pub mod reduce;

pub use collective::{is_writer, Collective, Comm, SingleProcess};
pub use overlap::{OverlapReducer, OverlapStats};
pub use reduce::{all_reduce_gradients, broadcast_buffers, is_data_parallel, reduce_meters, ReduceTiming};
