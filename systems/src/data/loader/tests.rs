//! The prefetching loader against the synchronous one: same batches for every access pattern the runners
//! produce (sequential, wrapping, jumping back after a resume), read failures delivered in place, and a
//! clean stop on drop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ecstrain_components::{Batch, Shard, Targets};

use super::*;
use crate::data::{Sample, SyntheticDataset, SyntheticOptions, TargetSpec};

fn synthetic(n: usize) -> Arc<Pipeline> {
    let o: SyntheticOptions =
        serde_json::from_value(serde_json::json!({"shape": [3], "classes": 4, "train_samples": n, "seed": 1})).unwrap();
    Arc::new(Pipeline::plain(Arc::new(SyntheticDataset::generate(&o, n, 0).unwrap())).unwrap())
}

fn empty(loader: &Loader) -> Batch {
    let len: usize = loader.pipeline().sample_shape().iter().product();
    Batch::with_capacity(loader.batch_size(), len, loader.pipeline().empty_targets(loader.batch_size()))
}

/// What a batch holds, for comparisons.
fn content(b: &Batch) -> (Vec<usize>, Vec<f32>, Targets) {
    let mut t = b.targets.clone();
    if let Targets::Classes(v) = &mut t {
        v.truncate(b.size);
    }
    (b.indices.clone(), b.valid_inputs().to_vec(), t)
}

fn batches(loader: &mut Loader, keys: &[(u64, usize)]) -> Vec<(Vec<usize>, Vec<f32>, Targets)> {
    let mut out = empty(loader);
    keys.iter()
        .map(|&(e, b)| {
            loader.fetch(e, b, &mut out).unwrap();
            content(&out)
        })
        .collect()
}

#[test]
fn prefetching_gives_the_batches_of_the_synchronous_loader() {
    let pool = loader_pool(2).unwrap();
    // 10 samples in batches of 4: batches 0, 1, 2 (the last of 2 samples). Sequential with a wrap into the
    // next epoch, a repeat (validation-style restart at 0), and a jump back (a resumed run).
    let keys = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 1), (3, 2), (0, 0), (1, 2), (2, 0), (2, 1)];
    let mut sync = Loader::new(synthetic(10), 4, true, false, 7);
    let want = batches(&mut sync, &keys);
    for depth in [1, 3] {
        let mut pre = Loader::new(synthetic(10), 4, true, false, 7).with_prefetch(pool.clone(), depth).unwrap();
        assert_eq!((pre.workers(), pre.prefetch_depth()), (2, depth));
        assert_eq!(batches(&mut pre, &keys), want, "depth {depth}");
    }
    // A fixed-order loader (validation) repeats epoch 0's batches whatever epoch is asked for.
    let mut val = Loader::new(synthetic(10), 4, false, false, 7).with_prefetch(pool, 2).unwrap();
    let seq = [(0, 0), (0, 1), (0, 2), (0, 0), (0, 1), (5, 2)];
    let got = batches(&mut val, &seq);
    assert_eq!(got[0], got[3]);
    assert_eq!(got[0].0, vec![0, 1, 2, 3]);
    assert_eq!(got[5].0, vec![8, 9]);
}

/// A loader without inputs (`run.device_cache`) gives the same indices and targets, synchronously and
/// prefetched, and never writes the rows.
#[test]
fn a_loader_without_inputs_gives_the_same_indices_and_targets_and_leaves_the_rows() {
    let keys = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (0, 1)];
    let want = batches(&mut Loader::new(synthetic(10), 4, true, false, 7), &keys);
    let sync = Loader::new(synthetic(10), 4, true, false, 7).without_inputs();
    assert!(!sync.fills_inputs());
    let pre = Loader::new(synthetic(10), 4, true, false, 7).without_inputs().with_prefetch(loader_pool(1).unwrap(), 2);
    for (kind, mut loader) in [("synchronous", sync), ("prefetched", pre.unwrap())] {
        let got = batches(&mut loader, &keys);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((&g.0, &g.2), (&w.0, &w.2), "{kind}: indices and targets");
            assert!(g.1.iter().all(|&x| x == 0.0) && w.1.iter().any(|&x| x != 0.0), "{kind}: rows written");
        }
    }
}

#[test]
fn sharded_loaders_cover_the_epoch_in_equal_parts() {
    let world = 3;
    let mut seen = Vec::new();
    for rank in 0..world {
        let mut l = Loader::new(synthetic(10), 2, true, false, 5).with_shard(Shard::new(rank, world).unwrap());
        assert_eq!(l.samples_per_epoch(), 4);
        assert_eq!(l.batches_per_epoch(), 2);
        let keys: Vec<(u64, usize)> = (0..2).map(|b| (4, b)).collect();
        seen.extend(batches(&mut l, &keys).into_iter().flat_map(|(i, _, _)| i));
    }
    let mut all = Loader::new(synthetic(10), 10, true, false, 5);
    all.set_epoch(4);
    let perm = all.order().to_vec();
    seen.sort_unstable();
    let mut want: Vec<usize> = perm.iter().chain(&perm[..2]).copied().collect();
    want.sort_unstable();
    assert_eq!(seen, want, "all ranks together: every sample, plus the first two of the permutation as padding");
}

/// Fails on one index; counts reads.
struct Failing {
    bad: usize,
    reads: AtomicUsize,
}

impl Dataset for Failing {
    fn describe(&self) -> String {
        "failing".into()
    }
    fn len(&self) -> usize {
        12
    }
    fn sample_shape(&self) -> &[usize] {
        &[2]
    }
    fn target_spec(&self) -> TargetSpec {
        TargetSpec::Classes { num_classes: 2 }
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if index == self.bad {
            return Err(format!("failing: sample {index} is unreadable"));
        }
        out.reset(&[2]).fill(index as f32);
        Ok(())
    }
    fn read_targets(&self, indices: &[usize], out: &mut Targets) {
        if let Targets::Classes(v) = out {
            v.clear();
            v.extend(indices.iter().map(|&i| (i % 2) as i64));
        }
    }
}

#[test]
fn a_read_failure_arrives_in_place_of_its_batch_and_drop_stops_the_thread() {
    let ds = Arc::new(Failing { bad: 6, reads: AtomicUsize::new(0) });
    let pipe = Arc::new(Pipeline::plain(ds.clone()).unwrap());
    let mut l = Loader::new(pipe, 4, false, false, 0).with_prefetch(loader_pool(1).unwrap(), 2).unwrap();
    let mut out = empty(&l);
    l.fetch(0, 0, &mut out).unwrap();
    let err = l.fetch(0, 1, &mut out).unwrap_err();
    assert!(err.contains("sample 6 is unreadable"), "{err}");
    // The producer idles after a failure and restarts on request.
    l.fetch(0, 2, &mut out).unwrap();
    assert_eq!(out.indices, [8, 9, 10, 11]);
    drop(l);
    let reads = ds.reads.load(Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(ds.reads.load(Ordering::SeqCst), reads, "the producer still reads after the loader was dropped");
    assert_eq!(Arc::strong_count(&ds), 1, "the producer thread still holds the pipeline");
}
