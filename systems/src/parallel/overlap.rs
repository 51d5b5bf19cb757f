//! The gradient all-reduce overlapped with the backward, as PyTorch DDP's gradient buckets do it.
//!
//! The backward visits the graph from the output down, and the gradient arena is laid out in graph order, so the
//! arena becomes final from its end down ([`crate::graph::exec::gradient_cuts`]). The executor hands each final
//! piece over ([`crate::graph::exec::Release`]); pieces are gathered into buckets of about `bucket` elements
//! (DDP's `bucket_cap_mb`; the first bucket is capped at 1 MiB as DDP's is, so communication starts early), and
//! each full bucket goes to a communication thread that all-reduces it and divides it by the world size while the
//! backward goes on. The last bucket (the first layers) is sent when the backward ends, and the training thread
//! then waits for every bucket: after the Backward set the gradients are averaged, as after DDP's backward.
//!
//! Every rank cuts the same buckets (they depend on the graph only), so the collective calls match across ranks.
//! Each element is summed by one all-reduce either way; with two ranks the sum is exact in any order, so the
//! result is bitwise that of the single all-reduce after the backward. The steady state allocates nothing: the
//! job queue keeps its capacity and the pieces are ranges of the arena itself.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bevy_ecs::prelude::*;

use super::collective::Collective;
use super::reduce::BUCKET;
use crate::graph::exec::Release;

/// DDP's cap on the first bucket (`torch.distributed`'s default first bucket: 1 MiB), in f32 elements.
pub const FIRST_BUCKET: usize = (1 << 20) / 4;

/// One bucket: a range of the gradient arena that the training thread has handed over until the job is done.
struct Job {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: a job's range is a piece of the arena that the backward gave up (`Release`), disjoint from every
// other piece and from what the training thread still writes; the session waits for every job before the
// arena's borrow ends.
unsafe impl Send for Job {}

/// What the training thread and the communication thread share.
struct Queue {
    jobs: VecDeque<Job>,
    /// Jobs finished since the reducer started.
    done: u64,
    /// Seconds the communication thread has spent in all-reduces and scaling since it started.
    busy_seconds: f64,
    /// Set by the reducer's drop: the thread exits when the queue is empty.
    shutdown: bool,
    /// Set when the communication thread panicked; waiting for it would never end.
    failed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Seconds spent on one optimizer step's gradient reduction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OverlapStats {
    /// In all-reduce calls (and the division by the world size), on the communication thread.
    pub comm_seconds: f64,
    /// Waited by the training thread after the backward, for the buckets still in flight and the last one.
    pub wait_seconds: f64,
}

/// The communication thread of a data-parallel CPU run and its bucket plan (a resource; present when the
/// gradient all-reduce overlaps the backward, `run.bucket_mb` > 0). Dropping it stops the thread.
#[derive(Resource)]
pub struct OverlapReducer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// [`crate::graph::exec::gradient_cuts`] of the model's graph (shared with each backward without a copy).
    cuts: Arc<[usize]>,
    /// Bucket size in elements.
    bucket: usize,
    /// Jobs submitted since the reducer started.
    submitted: u64,
}

impl OverlapReducer {
    /// Starts the communication thread for `comm`, with buckets of `bucket` elements (at least 1) over a graph
    /// whose [`crate::graph::exec::gradient_cuts`] are `cuts`.
    pub fn new(comm: Arc<dyn Collective>, bucket: usize, cuts: Vec<usize>) -> OverlapReducer {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(64),
                done: 0,
                busy_seconds: 0.0,
                shutdown: false,
                failed: false,
            }),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("grad-all-reduce".into())
            .spawn(move || communicate(&worker, comm.as_ref()))
            .expect("the gradient all-reduce thread starts");
        OverlapReducer { shared, thread: Some(thread), cuts: cuts.into(), bucket: bucket.max(1), submitted: 0 }
    }

    /// Runs `backward`, which hands every piece of the gradient arena to the [`Release`] it is given as soon as
    /// the piece is final (from the end of the arena down, each piece right below the last, all of it in the
    /// end), and averages the pieces over the ranks while it runs. Returns when every piece is averaged, even
    /// when `backward` panics.
    pub fn reduce_during<'g, R>(&mut self, backward: impl FnOnce(Release<'_, 'g>) -> R) -> (R, OverlapStats) {
        let busy0 = self.shared.lock().busy_seconds;
        let cap = FIRST_BUCKET.min(self.bucket);
        let cuts = Arc::clone(&self.cuts);
        let mut session = Session { reducer: self, pending: None, cap };
        let out = backward(Release { cuts: &cuts, on_ready: &mut |piece| session.take(piece) });
        let t0 = Instant::now();
        session.submit_pending();
        drop(session); // waits for every job
        let wait_seconds = t0.elapsed().as_secs_f64();
        let q = self.shared.lock();
        assert!(!q.failed, "the gradient all-reduce thread failed");
        (out, OverlapStats { comm_seconds: q.busy_seconds - busy0, wait_seconds })
    }

    fn submit(&mut self, ptr: *mut f32, len: usize) {
        let mut q = self.shared.lock();
        // MPI counts elements in a C int: a longer piece goes as several jobs.
        let mut start = 0;
        while start < len {
            let n = (len - start).min(BUCKET);
            // SAFETY: start + n <= len, inside the piece.
            q.jobs.push_back(Job { ptr: unsafe { ptr.add(start) }, len: n });
            self.submitted += 1;
            start += n;
        }
        self.shared.changed.notify_all();
    }

    /// Blocks until every submitted job is done (or the thread failed).
    fn wait_all(&self) {
        let mut q = self.shared.lock();
        while q.done < self.submitted && !q.failed {
            q = self.shared.changed.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for OverlapReducer {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One backward's bucketing: the pieces handed over but not yet sent.
struct Session<'r> {
    reducer: &'r mut OverlapReducer,
    /// `(start, len)` of the pieces gathered since the last bucket went out (contiguous).
    pending: Option<(*mut f32, usize)>,
    /// Size at which the pending pieces go out (the first bucket's cap, then the bucket size).
    cap: usize,
}

impl Session<'_> {
    fn take(&mut self, piece: &mut [f32]) {
        let (ptr, len) = (piece.as_mut_ptr(), piece.len());
        self.pending = Some(match self.pending {
            None => (ptr, len),
            Some((start, n)) => {
                // The pieces come from the end of the arena down: this one ends where the pending ones start.
                assert!(
                    std::ptr::eq(ptr.wrapping_add(len), start),
                    "gradient pieces must come in arena order, from the end down"
                );
                (ptr, len + n)
            }
        });
        if self.pending.is_some_and(|(_, n)| n >= self.cap) {
            self.submit_pending();
            self.cap = self.reducer.bucket;
        }
    }

    fn submit_pending(&mut self) {
        if let Some((ptr, len)) = self.pending.take() {
            if len > 0 {
                self.reducer.submit(ptr, len);
            }
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Also on unwinding: no job may outlive the arena's borrow.
        self.reducer.wait_all();
    }
}

/// The communication thread: all-reduces each job and divides it by the world size, in submission order (every
/// rank submits the same jobs in the same order, so the collective calls match).
fn communicate(shared: &Shared, comm: &dyn Collective) {
    let inv = 1.0 / comm.world() as f32;
    loop {
        let job = {
            let mut q = shared.lock();
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.shutdown {
                    return;
                }
                q = shared.changed.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let t0 = Instant::now();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: see `Job`: the range is the thread's alone until `done` counts it.
            let data = unsafe { std::slice::from_raw_parts_mut(job.ptr, job.len) };
            comm.all_reduce_sum_f32(data);
            data.iter_mut().for_each(|g| *g *= inv);
        }))
        .is_ok();
        let mut q = shared.lock();
        q.busy_seconds += t0.elapsed().as_secs_f64();
        q.done += 1;
        q.failed |= !ok;
        shared.changed.notify_all();
        if !ok {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranks simulated in one process: every "all-reduce" multiplies by the world size (all ranks hold the same
    /// values) and records the call's length, so the test sees the buckets.
    struct Recording {
        world: usize,
        calls: Mutex<Vec<usize>>,
    }

    impl Collective for Recording {
        fn rank(&self) -> usize {
            0
        }
        fn world(&self) -> usize {
            self.world
        }
        fn all_reduce_sum_f32(&self, data: &mut [f32]) {
            self.calls.lock().unwrap().push(data.len());
            data.iter_mut().for_each(|x| *x *= self.world as f32);
        }
        fn all_reduce_sum_f64(&self, _data: &mut [f64]) {}
        fn broadcast_f32(&self, _data: &mut [f32]) {}
        fn abort(&self, code: i32) -> ! {
            panic!("abort {code}")
        }
        fn backend(&self) -> String {
            "recording".into()
        }
    }

    /// Hands `grads` over in pieces ending at the release's cuts (taken as descending), as the executor does.
    fn hand_over<'g>(mut grads: &'g mut [f32], release: Release<'_, 'g>) {
        for &cut in release.cuts.iter().chain([0].iter()) {
            if cut < grads.len() {
                let (head, tail) = std::mem::take(&mut grads).split_at_mut(cut);
                grads = head;
                (release.on_ready)(tail);
            }
        }
    }

    #[test]
    fn buckets_follow_the_caps_and_every_element_is_averaged_once() {
        let comm = Arc::new(Recording { world: 3, calls: Mutex::new(Vec::new()) });
        let total = FIRST_BUCKET + 900_000;
        // Pieces (from the end down): 100k, 200k, 300k, 300k, then the rest, ~361k.
        let cuts = [total - 100_000, total - 300_000, total - 600_000, total - 900_000];
        let mut reducer = OverlapReducer::new(comm.clone(), 500_000, cuts.to_vec());
        for round in 0..2 {
            comm.calls.lock().unwrap().clear();
            let mut grads: Vec<f32> = (0..total).map(|i| (i % 97) as f32).collect();
            let ((), stats) = reducer.reduce_during(|release| hand_over(&mut grads, release));
            // The first bucket goes out at 1 MiB (300k >= 262,144), the next ones at 500k, the rest at the end.
            assert_eq!(*comm.calls.lock().unwrap(), vec![300_000, 600_000, total - 900_000], "round {round}");
            for (i, g) in grads.iter().enumerate() {
                // As the communication thread computes it: the sum, then times 1 / world.
                assert_eq!(*g, (i % 97) as f32 * 3.0 * (1.0 / 3.0f32), "element {i}");
            }
            assert!(stats.comm_seconds > 0.0 && stats.wait_seconds >= 0.0);
        }
    }

    #[test]
    fn a_panicking_backward_still_waits_for_the_buckets_in_flight() {
        let comm = Arc::new(Recording { world: 2, calls: Mutex::new(Vec::new()) });
        let mut reducer = OverlapReducer::new(comm.clone(), 10, Vec::new());
        let mut grads = vec![1.0f32; 100];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reducer.reduce_during(|release| {
                let (head, tail) = grads.split_at_mut(50);
                (release.on_ready)(tail);
                let _ = head;
                panic!("backward failed");
            })
        }));
        assert!(r.is_err());
        // The piece that went out was reduced before the panic left reduce_during; the rest was never sent.
        assert_eq!(*comm.calls.lock().unwrap(), vec![50]);
        assert!(grads[50..].iter().all(|&g| g == 1.0) && grads[..50].iter().all(|&g| g == 1.0));
    }
}
