//! The background producer of a prefetching loader.
//!
//! One thread per loader runs ahead of training: it fills batches in sequence (the next batch of the epoch,
//! then the first of the next epoch in that epoch's order) into a bounded queue, processing each batch's rows
//! on the loader's own rayon pool. Buffers travel in a loop: the producer takes an empty buffer from the free
//! list, fills it and queues it with its key (data epoch, batch index); the consumer swaps it with the `Batch`
//! resource and puts the resource's previous buffers on the free list. Both lists live under one mutex with
//! room for every buffer, and waiting is on condition variables, so the steady state allocates nothing on
//! either side.
//!
//! The consumer names the batch it needs. When that is not what the producer's sequence delivers next (the
//! first batch, a resumed run, an order that changed), it restarts the producer at the requested key under a
//! new generation number: what is queued goes back to the free list at once, and a batch of an old
//! generation still being filled is dropped when it is done. A read failure is delivered in place of its
//! batch, after which the producer idles until the next restart.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ecstrain_components::Batch;
use rayon::ThreadPool;

use super::order::EpochOrder;
use super::{fill_batch, Walk};
use crate::data::{DataError, Pipeline};

/// A rayon pool reserved for batch assembly (never the compute pool), shareable by several loaders.
pub type LoaderPool = Arc<ThreadPool>;

/// A pool of `workers` (at least 1) threads named `ecstrain-loader-N` for [`super::Loader::with_prefetch`].
pub fn loader_pool(workers: usize) -> Result<LoaderPool, String> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(workers.max(1))
        .thread_name(|i| format!("ecstrain-loader-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| format!("cannot start {workers} data loading threads: {e}"))
}

/// Where a batch belongs: the generation of the request it answers, its data epoch and its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    generation: u64,
    epoch: u64,
    batch: usize,
}

/// A filled buffer (or the read failure that took its place).
struct Filled {
    key: Key,
    result: Result<(), DataError>,
    buf: Batch,
}

/// Everything the two threads share.
struct State {
    /// The generation of the consumer's latest request.
    generation: u64,
    /// The batch the producer fills next (`None`: idle, waiting for a request).
    next: Option<Key>,
    /// Empty buffers.
    free: Vec<Batch>,
    /// Filled batches of the current generation, in order; at most `depth`.
    ready: VecDeque<Filled>,
    depth: usize,
    /// Set by the consumer when the loader is dropped.
    stop: bool,
    /// Set when the producer thread has ended, with its panic message if it died of one.
    ended: Option<Option<String>>,
}

struct Shared {
    state: Mutex<State>,
    /// The producer waits here for a request, a free buffer, queue room or the stop.
    producer: Condvar,
    /// The consumer waits here for a filled batch or the producer's end.
    consumer: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the lists inconsistent (each change is one push or pop).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The consumer side: owns the producer thread.
pub(super) struct Prefetcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    walk: Walk,
    /// What the current generation delivers next, as (epoch, batch) (`None`: the producer idles).
    expect: Option<(u64, usize)>,
    depth: usize,
    workers: usize,
}

impl Prefetcher {
    /// Starts the producer thread (idle until the first request) with `depth + 1` buffers like `template`.
    pub(super) fn start(
        pipeline: Arc<Pipeline>,
        walk: Walk,
        pool: LoaderPool,
        depth: usize,
        template: &Batch,
    ) -> Result<Prefetcher, String> {
        let depth = depth.max(1);
        let mut free = Vec::with_capacity(depth + 1);
        free.resize_with(depth + 1, || template.clone());
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                next: None,
                free,
                ready: VecDeque::with_capacity(depth),
                depth,
                stop: false,
                ended: None,
            }),
            producer: Condvar::new(),
            consumer: Condvar::new(),
        });
        let workers = pool.current_num_threads();
        let producer = Producer { order: EpochOrder::new(&walk.spec), pipeline, walk, pool, shared: shared.clone() };
        let thread = std::thread::Builder::new()
            .name("ecstrain-loader".into())
            .spawn(move || producer.run_to_end())
            .map_err(|e| format!("cannot start the data loading thread: {e}"))?;
        Ok(Prefetcher { shared, thread: Some(thread), walk, expect: None, depth, workers })
    }

    /// Queue length.
    pub(super) fn depth(&self) -> usize {
        self.depth
    }

    /// Threads of the pool the rows are processed on.
    pub(super) fn workers(&self) -> usize {
        self.workers
    }

    /// Swaps batch `b` of data epoch `epoch` (a canonical key, see [`Walk::key`]) into `out`, blocking until
    /// the producer has it.
    pub(super) fn fetch(&mut self, epoch: u64, b: usize, out: &mut Batch) -> Result<(), DataError> {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if self.expect != Some((epoch, b)) {
            self.restart(&mut st, epoch, b);
        }
        loop {
            if let Some(Filled { key, result, mut buf }) = st.ready.pop_front() {
                if (key.epoch, key.batch) != (epoch, b) {
                    // Not reachable while `expect` tracks the producer; restarting is always correct.
                    st.free.push(buf);
                    self.restart(&mut st, epoch, b);
                    continue;
                }
                match result {
                    Ok(()) => {
                        std::mem::swap(out, &mut buf);
                        self.expect = Some(self.walk.next(epoch, b));
                    }
                    // The producer stopped at the failure; the next request restarts it.
                    Err(_) => self.expect = None,
                }
                st.free.push(buf);
                shared.producer.notify_one();
                return result;
            }
            if let Some(panic) = &st.ended {
                self.expect = None;
                return Err(match panic {
                    Some(m) => format!("the data loading thread stopped: it panicked: {m}"),
                    None => "the data loading thread stopped unexpectedly".into(),
                });
            }
            st = shared.consumer.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A new generation starting at (`epoch`, `b`); what the old one queued goes back to the free list.
    fn restart(&mut self, st: &mut State, epoch: u64, b: usize) {
        st.generation += 1;
        st.next = Some(Key { generation: st.generation, epoch, batch: b });
        while let Some(stale) = st.ready.pop_front() {
            st.free.push(stale.buf);
        }
        self.expect = Some((epoch, b));
        self.shared.producer.notify_one();
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.producer.notify_one();
        if let Some(t) = self.thread.take() {
            // The producer checks `stop` before every batch: at most the batch in hand delays the join.
            let _ = t.join();
        }
    }
}

/// The producer thread's state.
struct Producer {
    pipeline: Arc<Pipeline>,
    walk: Walk,
    order: EpochOrder,
    pool: LoaderPool,
    shared: Arc<Shared>,
}

impl Producer {
    /// Runs until stopped; records how it ended (a panic's message included) for the consumer.
    fn run_to_end(self) {
        let shared = self.shared.clone();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.run()));
        let panic = outcome.err().map(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into())
        });
        shared.lock().ended = Some(panic);
        shared.consumer.notify_one();
    }

    /// Fills batches until told to stop.
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        loop {
            if st.stop {
                return;
            }
            let room = st.ready.len() < st.depth && !st.free.is_empty();
            let Some(key) = st.next.filter(|_| room) else {
                st = shared.producer.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let mut buf = st.free.pop().expect("checked above");
            let (epoch, batch) = self.walk.next(key.epoch, key.batch);
            st.next = Some(Key { epoch, batch, ..key });
            drop(st);

            self.order.set_epoch(&self.walk.spec, key.epoch);
            let (pipeline, order, walk) = (&self.pipeline, &self.order, &self.walk);
            // Inside `install` the pipeline's parallel rows run on the loader's pool, not the compute pool.
            let result = self
                .pool
                .install(|| fill_batch(pipeline, order, &walk.spec, walk.inputs, key.epoch, key.batch, &mut buf));

            st = shared.lock();
            if key.generation != st.generation {
                // The consumer asked for something else meanwhile.
                st.free.push(buf);
                continue;
            }
            if result.is_err() {
                st.next = None;
            }
            st.ready.push_back(Filled { key, result, buf });
            shared.consumer.notify_one();
        }
    }
}
