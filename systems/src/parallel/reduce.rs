//! Reduce-stage systems of a data-parallel run, and the metric reduction the loggers use.
//!
//! Gradients: the whole gradient arena is one contiguous buffer, so the average over ranks is one in-place
//! all-reduce per optimizer step (split into buckets only past [`BUCKET`] elements, the most one MPI call
//! counts), then a scale by `1 / world`. It runs first in Reduce, so loss-scale unscaling and clipping see
//! the averaged gradient, as DDP + `clip_grad_norm_` does. Batch-norm statistics stay local during training
//! (DDP's default); rank 0's running statistics are broadcast before each validation pass, as DDP's
//! `broadcast_buffers` makes every rank evaluate with rank 0's buffers, so every rank scores the same model.

use std::collections::BTreeMap;
use std::time::Instant;

use bevy_ecs::prelude::*;
use ecstrain_components::{Buffers, EmaWeights, Grads, Meter};

use super::collective::{Collective, Comm};

/// Most elements in one collective call (MPI counts in a C `int`); the arena is cut into buckets of it.
pub const BUCKET: usize = 1 << 28;

/// Time spent in the gradient all-reduce, for the logs and the scaling benchmark.
#[derive(Resource, Clone, Copy, Debug, Default)]
pub struct ReduceTiming {
    /// Seconds in all-reduce calls since the last train record (the logger takes and resets it).
    pub interval_seconds: f64,
    /// Seconds the training thread waited for the reduction since the last train record: all of
    /// `interval_seconds` when the all-reduce follows the backward, only what the backward did not hide when they
    /// overlap ([`crate::parallel::OverlapReducer`]).
    pub interval_wait_seconds: f64,
    /// Optimizer steps the interval covers.
    pub interval_steps: u64,
    /// Seconds in all-reduce calls over the whole run.
    pub total_seconds: f64,
    /// Seconds waited for the reduction over the whole run.
    pub total_wait_seconds: f64,
    /// Optimizer steps reduced over the whole run.
    pub total_steps: u64,
}

impl ReduceTiming {
    /// Counts one optimizer step's reduction: `seconds` in all-reduce calls, `wait` of them on the training
    /// thread.
    pub fn record(&mut self, seconds: f64, wait: f64) {
        self.interval_seconds += seconds;
        self.interval_wait_seconds += wait;
        self.interval_steps += 1;
        self.total_seconds += seconds;
        self.total_wait_seconds += wait;
        self.total_steps += 1;
    }
}

/// Run condition: the run has more than one process.
pub fn is_data_parallel(comm: Option<Res<Comm>>) -> bool {
    comm.is_some_and(|c| c.0.world() > 1)
}

/// Reduce (on accumulation boundaries of a data-parallel run whose all-reduce does not overlap the backward,
/// i.e. without an [`OverlapReducer`](crate::parallel::OverlapReducer)): the gradient arena summed over ranks
/// and divided by the world size, i.e. the gradient of the mean loss over the global batch.
pub fn all_reduce_gradients(comm: Res<Comm>, mut grads: ResMut<Grads>, mut timing: ResMut<ReduceTiming>) {
    let t0 = Instant::now();
    average_over_ranks(comm.0.as_ref(), &mut grads.0.data);
    let seconds = t0.elapsed().as_secs_f64();
    timing.record(seconds, seconds);
}

/// `data` summed over ranks in place (one call per [`BUCKET`]) and divided by the world size: the gradient
/// of the mean loss over the global batch. Shared by the CPU system and the CUDA one's host staging.
pub fn average_over_ranks(comm: &dyn Collective, data: &mut [f32]) {
    for bucket in data.chunks_mut(BUCKET) {
        comm.all_reduce_sum_f32(bucket);
    }
    let inv = 1.0 / comm.world() as f32;
    data.iter_mut().for_each(|g| *g *= inv);
}

/// ValidationStart (before the EMA swap, data-parallel runs): every rank takes rank 0's buffers (batch-norm
/// running statistics, and their moving averages with EMA), so validation, fitness and early stopping agree
/// on every rank.
pub fn broadcast_buffers(comm: Res<Comm>, mut buffers: Option<ResMut<Buffers>>, mut ema: Option<ResMut<EmaWeights>>) {
    if let Some(b) = buffers.as_mut() {
        comm.0.broadcast_f32(&mut b.arena.data);
    }
    if let Some(e) = ema.as_mut() {
        comm.0.broadcast_f32(&mut e.buffers.data);
    }
}

/// `meters` summed over ranks (sums and counts, so the means are exact over the global data, not means of
/// per-rank means). The keys must be the same on every rank (they are: every rank runs the same task on
/// the same number of batches). One collective call.
pub fn reduce_meters(comm: &dyn Collective, meters: &BTreeMap<String, Meter>) -> BTreeMap<String, Meter> {
    if comm.world() <= 1 {
        return meters.clone();
    }
    let mut flat: Vec<f64> = meters.values().flat_map(|m| [m.sum, m.count]).collect();
    comm.all_reduce_sum_f64(&mut flat);
    meters.keys().zip(flat.chunks_exact(2)).map(|(k, p)| (k.clone(), Meter { sum: p[0], count: p[1] })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::SingleProcess;

    #[test]
    fn single_process_reduction_is_the_identity() {
        let mut m = BTreeMap::new();
        m.insert("loss".to_string(), Meter { sum: 3.0, count: 2.0 });
        assert_eq!(reduce_meters(&SingleProcess, &m), m);
    }
}
