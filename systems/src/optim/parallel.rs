//! An element-wise optimizer update over every trainable parameter at once, in parallel whatever their sizes.
//!
//! An update is element-wise: each element of a parameter changes from its own gradient and state, with
//! coefficients that depend only on the parameter's configuration and the step. A loop over the parameters
//! runs each one's kernel in turn, and a kernel splits across threads only from
//! [`PAR_THRESHOLD`](ecstrain_kernels::optim::PAR_THRESHOLD) elements, so a model of many medium tensors (a
//! ViT's 40, a ResNet's 60) was updated on one thread while the others waited: 0.85 ms of W3's 35 ms step.
//! Here the arenas are cut into fixed chunks that run in parallel; each chunk applies, to its part of every
//! parameter it overlaps, that parameter's update. Every element goes through the same arithmetic as in the
//! per-parameter loop, so the bits are the same whatever the chunking and the thread count.

use std::ops::Range;

use rayon::prelude::*;

/// Elements per parallel task: 64 KiB of each arena, so a task's parameter, gradient and state chunks stay in
/// L2, and a model of half a million parameters gives a few dozen tasks to balance.
const CHUNK: usize = 16 * 1024;

/// One parameter's part of an update: its range in the arenas and the configuration of its update.
pub type Job<C> = (Range<usize>, C);

/// The mutable arenas' base pointers and lengths, shared with the tasks (see the SAFETY note in
/// [`par_update`], which alone creates slices from them).
struct Bases<const S: usize> {
    param: *mut f32,
    state: [(*mut f32, usize); S],
}

// SAFETY: the pointers come from `&mut` borrows held for the whole of `par_update`, and every slice made from
// them in a task covers elements no other task's slices cover (see `par_update`).
unsafe impl<const S: usize> Sync for Bases<S> {}

/// Applies `update(param, grad, state, cfg)` to every job's range of the arenas: `params` (updated in place)
/// and `grads` (read; the EMA passes its shadow and the parameters in these two places), and the
/// optimizer's `state` arenas, each as long as `params` or empty (a buffer the optimizer does not keep with
/// these settings, e.g. AMSGrad's: the update gets an empty slice for it). `update` is called on pieces of a
/// job's range, and must be element-wise. `jobs` is sorted by start in place; the ranges must not overlap
/// (panics otherwise).
pub fn par_update<C: Sync, const S: usize>(
    params: &mut [f32],
    grads: &[f32],
    state: [&mut [f32]; S],
    jobs: &mut [Job<C>],
    update: impl Fn(&mut [f32], &[f32], [&mut [f32]; S], &C) + Sync,
) {
    let n = params.len();
    assert_eq!(grads.len(), n, "par_update: the gradient arena must be as long as the parameters");
    for s in &state {
        assert!(s.is_empty() || s.len() == n, "par_update: a state arena must be empty or as long as the parameters");
    }
    jobs.sort_unstable_by_key(|(r, _)| r.start);
    for w in jobs.windows(2) {
        assert!(w[0].0.end <= w[1].0.start, "par_update: parameter ranges {:?} and {:?} overlap", w[0].0, w[1].0);
    }
    assert!(jobs.last().is_none_or(|(r, _)| r.end <= n), "par_update: a parameter range lies outside the arena");
    let bases = Bases { param: params.as_mut_ptr(), state: state.map(|s| (s.as_mut_ptr(), s.len())) };
    let jobs = &*jobs;
    (0..n.div_ceil(CHUNK)).into_par_iter().for_each(|k| {
        let (lo, hi) = (k * CHUNK, ((k + 1) * CHUNK).min(n));
        let first = jobs.partition_point(|(r, _)| r.end <= lo);
        for (r, cfg) in jobs[first..].iter().take_while(|(r, _)| r.start < hi) {
            let (s, e) = (r.start.max(lo), r.end.min(hi));
            if s >= e {
                continue;
            }
            let bases = &bases;
            // SAFETY: `s..e` lies within this task's chunk `lo..hi` and within one job's range. Chunks do not
            // overlap, nor do the jobs (checked above), so no other slice made here, in this task or another,
            // covers these elements; `e <= n`, the length of every non-empty arena; and the arenas stay
            // mutably borrowed, unused elsewhere, until every task has returned.
            let p = unsafe { std::slice::from_raw_parts_mut(bases.param.add(s), e - s) };
            let st = std::array::from_fn(|i| {
                let (ptr, len) = bases.state[i];
                if len == 0 {
                    &mut [][..]
                } else {
                    // SAFETY: as above.
                    unsafe { std::slice::from_raw_parts_mut(ptr.add(s), e - s) }
                }
            });
            update(p, &grads[s..e], st, cfg);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy element-wise update with a per-job coefficient: `p = p * c + g + s0` and `s0 += g`, the empty
    /// second state untouched.
    fn toy(p: &mut [f32], g: &[f32], [s0, s1]: [&mut [f32]; 2], c: &f32) {
        assert!(s1.is_empty());
        for ((p, &g), s) in p.iter_mut().zip(g).zip(s0.iter_mut()) {
            *p = *p * c + g + *s;
            *s += g;
        }
    }

    /// The chunked parallel update equals the per-parameter loop bit for bit: jobs of many sizes (empty, one
    /// element, crossing one or several chunk boundaries), listed out of order, with gaps (frozen parameters)
    /// left untouched, on 1-3 threads.
    #[test]
    fn chunked_update_is_the_per_parameter_loop() {
        let sizes = [0usize, 1, 7, CHUNK - 3, 2 * CHUNK + 5, 300, CHUNK, 5 * CHUNK + 11, 2];
        let mut ranges = Vec::new();
        let mut at = 0;
        for (i, &len) in sizes.iter().enumerate() {
            ranges.push((at..at + len, 1.0 - 0.01 * i as f32));
            at += len + if i % 3 == 0 { 17 } else { 0 }; // every third parameter is followed by a frozen gap
        }
        let n = at + 9;
        let init = |seed: u32| -> Vec<f32> {
            (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 300.0 - 1.5).collect()
        };
        let (p0, g, s0) = (init(1), init(2), init(3));
        let (mut want_p, mut want_s) = (p0.clone(), s0.clone());
        for (r, c) in &ranges {
            toy(&mut want_p[r.clone()], &g[r.clone()], [&mut want_s[r.clone()], &mut []], c);
        }
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (mut p, mut s) = (p0.clone(), s0.clone());
            let mut jobs: Vec<Job<f32>> = ranges.iter().rev().cloned().collect();
            pool.install(|| par_update(&mut p, &g, [&mut s, &mut []], &mut jobs, toy));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p), bits(&want_p), "{threads} threads: parameters");
            assert_eq!(bits(&s), bits(&want_s), "{threads} threads: state");
        }
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_ranges_are_refused() {
        let (mut p, g, mut s) = (vec![0.0f32; 10], vec![0.0f32; 10], vec![0.0f32; 10]);
        let mut jobs = vec![(0..5, 1.0f32), (4..8, 1.0)];
        par_update(&mut p, &g, [&mut s, &mut []], &mut jobs, toy);
    }
}
