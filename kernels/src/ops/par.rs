//! Shared parallel loops for the CPU kernels: elementwise maps over chunks and a deterministic blocked sum.
//!
//! Every kernel goes through these so the "is it worth spawning rayon tasks?" decision lives in one place.
//! Below [`PAR_MIN_ELEMS`] the sequential loop wins: rayon's fork/join costs a few microseconds, which is
//! more than a memory-bound pass over 16k floats.

use rayon::prelude::*;

/// Smallest element count for which elementwise kernels split the work across rayon threads.
pub const PAR_MIN_ELEMS: usize = 1 << 17;

/// Elements per rayon task in elementwise kernels: large enough to amortise task overhead, small enough
/// that work stealing balances the load.
pub const PAR_CHUNK: usize = 1 << 14;

/// Number of partial sums a [`blocked_sum`] splits its range into. Fixed (not the thread count) so the
/// summation order, hence the rounded result, does not depend on the machine or on rayon's scheduling.
pub const SUM_BLOCKS: usize = 64;

// The loops of the maps below, each compiled for AVX-512F, for AVX2 + FMA and for the baseline, one picked at
// run time: the closure is inlined into each copy, so its arithmetic vectorises at the widest width the CPU has
// (compiled once at the baseline, an activation's polynomial ran four lanes at a time). Every copy performs the
// same operations (Rust never contracts to FMA on its own), so all give the same bits. `multiversion!` does
// this for named loops; closures need the generic forms here. Index loops: the bounds checks fold away.

/// Which copy of a loop this CPU runs.
#[derive(Clone, Copy)]
enum Width {
    Avx512,
    Avx2,
    Baseline,
}

#[inline(always)]
fn width() -> Width {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Width::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Width::Avx2;
        }
    }
    Width::Baseline
}

#[inline(always)]
fn unary_body<T, U: Copy, F: Fn(U) -> T>(out: &mut [T], inp: &[U], f: &F) {
    let n = out.len().min(inp.len());
    for i in 0..n {
        out[i] = f(inp[i]);
    }
}

#[inline(always)]
fn binary_body<T, U: Copy, F: Fn(U, U) -> T>(out: &mut [T], a: &[U], b: &[U], f: &F) {
    let n = out.len().min(a.len()).min(b.len());
    for i in 0..n {
        out[i] = f(a[i], b[i]);
    }
}

#[inline(always)]
fn indexed_body<T, U: Copy, F: Fn(usize, U) -> T>(out: &mut [T], inp: &[U], base: usize, f: &F) {
    let n = out.len().min(inp.len());
    for i in 0..n {
        out[i] = f(base + i, inp[i]);
    }
}

/// `buf[i] = value` for every element, split across the pool from [`PAR_MIN_ELEMS`] elements (a serial fill of
/// a few MB keeps every other thread waiting: a gradient arena cleared between steps, a gradient buffer
/// zeroed before a sparse write).
pub fn fill<T: Copy + Send + Sync>(buf: &mut [T], value: T) {
    if buf.len() < PAR_MIN_ELEMS {
        buf.fill(value);
    } else {
        buf.par_chunks_mut(PAR_CHUNK).for_each(|c| c.fill(value));
    }
}

/// `out[i] = f(inp[i])` on the calling thread, in the widest copy this CPU runs.
fn unary_loop<T, U: Copy, F: Fn(U) -> T>(out: &mut [T], inp: &[U], f: &F) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn v4<T, U: Copy, F: Fn(U) -> T>(out: &mut [T], inp: &[U], f: &F) {
            unary_body(out, inp, f)
        }
        #[target_feature(enable = "avx2,fma")]
        fn v3<T, U: Copy, F: Fn(U) -> T>(out: &mut [T], inp: &[U], f: &F) {
            unary_body(out, inp, f)
        }
        match width() {
            // SAFETY: `width` found the features each copy is compiled for.
            Width::Avx512 => return unsafe { v4(out, inp, f) },
            // SAFETY: as above.
            Width::Avx2 => return unsafe { v3(out, inp, f) },
            Width::Baseline => {}
        }
    }
    unary_body(out, inp, f)
}

/// `out[i] = f(a[i], b[i])` on the calling thread, in the widest copy this CPU runs.
fn binary_loop<T, U: Copy, F: Fn(U, U) -> T>(out: &mut [T], a: &[U], b: &[U], f: &F) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn v4<T, U: Copy, F: Fn(U, U) -> T>(out: &mut [T], a: &[U], b: &[U], f: &F) {
            binary_body(out, a, b, f)
        }
        #[target_feature(enable = "avx2,fma")]
        fn v3<T, U: Copy, F: Fn(U, U) -> T>(out: &mut [T], a: &[U], b: &[U], f: &F) {
            binary_body(out, a, b, f)
        }
        match width() {
            // SAFETY: `width` found the features each copy is compiled for.
            Width::Avx512 => return unsafe { v4(out, a, b, f) },
            // SAFETY: as above.
            Width::Avx2 => return unsafe { v3(out, a, b, f) },
            Width::Baseline => {}
        }
    }
    binary_body(out, a, b, f)
}

/// `out[i] = f(base + i, inp[i])` on the calling thread, in the widest copy this CPU runs.
fn indexed_loop<T, U: Copy, F: Fn(usize, U) -> T>(out: &mut [T], inp: &[U], base: usize, f: &F) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn v4<T, U: Copy, F: Fn(usize, U) -> T>(out: &mut [T], inp: &[U], base: usize, f: &F) {
            indexed_body(out, inp, base, f)
        }
        #[target_feature(enable = "avx2,fma")]
        fn v3<T, U: Copy, F: Fn(usize, U) -> T>(out: &mut [T], inp: &[U], base: usize, f: &F) {
            indexed_body(out, inp, base, f)
        }
        match width() {
            // SAFETY: `width` found the features each copy is compiled for.
            Width::Avx512 => return unsafe { v4(out, inp, base, f) },
            // SAFETY: as above.
            Width::Avx2 => return unsafe { v3(out, inp, base, f) },
            Width::Baseline => {}
        }
    }
    indexed_body(out, inp, base, f)
}

/// `out[i] = f(inp[i])`, in parallel when the buffers are large.
///
/// Panics if the lengths differ.
pub fn map_unary<T, U, F>(out: &mut [T], inp: &[U], f: F)
where
    T: Send,
    U: Sync + Copy,
    F: Fn(U) -> T + Sync,
{
    assert_eq!(out.len(), inp.len(), "map_unary: out and inp lengths differ");
    if out.len() < PAR_MIN_ELEMS {
        unary_loop(out, inp, &f);
    } else {
        out.par_chunks_mut(PAR_CHUNK).zip(inp.par_chunks(PAR_CHUNK)).for_each(|(o, x)| unary_loop(o, x, &f));
    }
}

/// `out[i] = f(a[i], b[i])`, in parallel when the buffers are large (the shape of every activation
/// backward: `dinp = f(dout, inp)`).
///
/// Panics if the lengths differ.
pub fn map_binary<T, U, F>(out: &mut [T], a: &[U], b: &[U], f: F)
where
    T: Send,
    U: Sync + Copy,
    F: Fn(U, U) -> T + Sync,
{
    assert_eq!(out.len(), a.len(), "map_binary: out and first input lengths differ");
    assert_eq!(out.len(), b.len(), "map_binary: out and second input lengths differ");
    if out.len() < PAR_MIN_ELEMS {
        binary_loop(out, a, b, &f);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(a.par_chunks(PAR_CHUNK))
            .zip(b.par_chunks(PAR_CHUNK))
            .for_each(|((o, x), y)| binary_loop(o, x, y, &f));
    }
}

/// Calls `f(out_chunk, inp_chunk)` on matching chunks of the two buffers: once on the whole buffers when they
/// are small, on [`PAR_CHUNK`]-sized pieces in parallel otherwise. For element-wise kernels whose per-element
/// function is too large to inline into [`map_unary`]'s loop: `f` is then a loop compiled with
/// `multiversion!`, called once per chunk.
///
/// Panics if the lengths differ.
pub fn map_unary_chunks<T, U, F>(out: &mut [T], inp: &[U], f: F)
where
    T: Send,
    U: Sync,
    F: Fn(&mut [T], &[U]) + Sync,
{
    assert_eq!(out.len(), inp.len(), "map_unary_chunks: out and inp lengths differ");
    if out.len() < PAR_MIN_ELEMS {
        f(out, inp);
    } else {
        out.par_chunks_mut(PAR_CHUNK).zip(inp.par_chunks(PAR_CHUNK)).for_each(|(o, x)| f(o, x));
    }
}

/// [`map_unary_chunks`] with two inputs (`dinp = f(dout, inp)` chunk by chunk).
///
/// Panics if the lengths differ.
pub fn map_binary_chunks<T, U, F>(out: &mut [T], a: &[U], b: &[U], f: F)
where
    T: Send,
    U: Sync,
    F: Fn(&mut [T], &[U], &[U]) + Sync,
{
    assert_eq!(out.len(), a.len(), "map_binary_chunks: out and first input lengths differ");
    assert_eq!(out.len(), b.len(), "map_binary_chunks: out and second input lengths differ");
    if out.len() < PAR_MIN_ELEMS {
        f(out, a, b);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(a.par_chunks(PAR_CHUNK))
            .zip(b.par_chunks(PAR_CHUNK))
            .for_each(|((o, x), y)| f(o, x, y));
    }
}

/// `out[i] = f(i, inp[i])` with the global index `i`, in parallel when the buffers are large (for
/// counter-based random masks, whose value must not depend on how the work was split).
///
/// Panics if the lengths differ.
pub fn map_indexed<T, U, F>(out: &mut [T], inp: &[U], f: F)
where
    T: Send,
    U: Sync + Copy,
    F: Fn(usize, U) -> T + Sync,
{
    assert_eq!(out.len(), inp.len(), "map_indexed: out and inp lengths differ");
    if out.len() < PAR_MIN_ELEMS {
        indexed_loop(out, inp, 0, &f);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .zip(inp.par_chunks(PAR_CHUNK))
            .enumerate()
            .for_each(|(c, (o, x))| indexed_loop(o, x, c * PAR_CHUNK, &f));
    }
}

/// Sum of `f(lo, hi)` over `n` items split into [`SUM_BLOCKS`] contiguous ranges `[lo, hi)`, in f64.
///
/// `f` sums one range itself (sequentially); the partial sums are then added in range order. The result is
/// bit-identical whether the ranges ran in parallel or not, which keeps losses reproducible across thread
/// counts. No heap allocation: the partials live in a fixed array on the stack. `parallel` says whether
/// the caller judged the work large enough for rayon.
pub fn blocked_sum<F>(n: usize, parallel: bool, f: F) -> f64
where
    F: Fn(usize, usize) -> f64 + Sync,
{
    let per_block = n.div_ceil(SUM_BLOCKS).max(1);
    let mut partial = [0.0f64; SUM_BLOCKS];
    let body = |(blk, p): (usize, &mut f64)| {
        let lo = (blk * per_block).min(n);
        let hi = (lo + per_block).min(n);
        *p = if lo < hi { f(lo, hi) } else { 0.0 };
    };
    if parallel {
        partial.par_iter_mut().enumerate().for_each(body);
    } else {
        partial.iter_mut().enumerate().for_each(body);
    }
    partial.iter().sum()
}

/// Like [`blocked_sum`], but each range also gets its own mutable piece of `data`: item `i` owns
/// `data[i * item_len .. (i + 1) * item_len]` (a row of a `[n, item_len]` buffer). `f(first_item, rows)`
/// processes the rows of one range and returns their sum. Deterministic in the same way: fixed ranges,
/// partials added in order. `item_len` must be non-zero and `data.len()` must be `n * item_len`.
pub fn blocked_sum_rows_mut<T, F>(data: &mut [T], item_len: usize, n: usize, parallel: bool, f: F) -> f64
where
    T: Send,
    F: Fn(usize, &mut [T]) -> f64 + Sync,
{
    assert!(item_len > 0, "blocked_sum_rows_mut: zero-length items");
    assert_eq!(data.len(), n * item_len, "blocked_sum_rows_mut: data must hold n items");
    let per_block = n.div_ceil(SUM_BLOCKS).max(1);
    let mut partial = [0.0f64; SUM_BLOCKS];
    // zip stops at the shorter side: with fewer than SUM_BLOCKS ranges the trailing partials stay 0.
    let body = |(blk, (p, rows)): (usize, (&mut f64, &mut [T]))| *p = f(blk * per_block, rows);
    if parallel {
        partial.par_iter_mut().zip(data.par_chunks_mut(per_block * item_len)).enumerate().for_each(body);
    } else {
        partial.iter_mut().zip(data.chunks_mut(per_block * item_len)).enumerate().for_each(body);
    }
    partial.iter().sum()
}

/// Rows per rayon task for a row-wise kernel with rows of `row_len` elements, so each task carries about
/// [`PAR_CHUNK`] elements even when rows are short.
pub fn rows_per_task(row_len: usize) -> usize {
    (PAR_CHUNK / row_len.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The maps run their closure in the widest copy this CPU has (AVX-512 here): the results are bit for bit a
    /// plain loop in this test, compiled at the baseline, for closures whose polynomials vectorise (exp, tanh,
    /// erf, a division), on the sequential and the parallel paths.
    #[test]
    fn widest_copies_give_the_baseline_bits() {
        use crate::Float;
        let n = PAR_MIN_ELEMS + 3 * PAR_CHUNK + 7;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 20011) as f32 / 1000.0 - 10.0).collect();
        let y: Vec<f32> = (0..n).map(|i| ((i * 104729) % 3001) as f32 / 1000.0 - 1.5).collect();
        // Closures, not function pointers: each is inlined into the map's copies.
        fn unary(what: &str, x: &[f32], f: impl Fn(f32) -> f32 + Sync) {
            for len in [1000, x.len()] {
                let mut got = vec![f32::NAN; len];
                map_unary(&mut got, &x[..len], &f);
                let want: Vec<f32> = x[..len].iter().map(|&v| f(v)).collect();
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}, {len}");
            }
        }
        unary("exp", &x, |v| v.exp());
        unary("tanh", &x, |v| v.tanh());
        unary("silu", &x, |v| v / (1.0 + (-v).exp()));
        let binary = |g: f32, v: f32| g * Float::erf(v * std::f32::consts::FRAC_1_SQRT_2);
        let mut got = vec![f32::NAN; n];
        map_binary(&mut got, &y, &x, binary);
        let want: Vec<f32> = y.iter().zip(&x).map(|(&g, &v)| binary(g, v)).collect();
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "binary");
        let indexed = |i: usize, v: f32| v * (i % 7) as f32 + (v * 0.5).exp();
        map_indexed(&mut got, &x, indexed);
        let want: Vec<f32> = x.iter().enumerate().map(|(i, &v)| indexed(i, v)).collect();
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "indexed");
    }

    #[test]
    fn maps_agree_between_sequential_and_parallel_paths() {
        for n in [5usize, PAR_MIN_ELEMS + 3 * PAR_CHUNK + 7] {
            let a: Vec<f64> = (0..n).map(|i| i as f64).collect();
            let b: Vec<f64> = (0..n).map(|i| 2.0 * i as f64).collect();
            let mut o = vec![0.0; n];
            map_unary(&mut o, &a, |x| x + 1.0);
            assert!(o.iter().enumerate().all(|(i, &v)| v == i as f64 + 1.0));
            map_binary(&mut o, &a, &b, |x, y| x + y);
            assert!(o.iter().enumerate().all(|(i, &v)| v == 3.0 * i as f64));
            map_indexed(&mut o, &a, |i, x| i as f64 - x);
            assert!(o.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn blocked_sum_is_identical_in_parallel_and_sequentially() {
        let v: Vec<f64> = (0..100_003).map(|i| ((i * 7919) % 1000) as f64 * 1e-3 + 0.1).collect();
        let f = |lo: usize, hi: usize| v[lo..hi].iter().sum::<f64>();
        let s = blocked_sum(v.len(), false, f);
        let p = blocked_sum(v.len(), true, f);
        assert_eq!(s.to_bits(), p.to_bits());
        assert!((s - v.iter().sum::<f64>()).abs() < 1e-6);
        assert_eq!(blocked_sum(0, true, f), 0.0);
        assert_eq!(blocked_sum(3, false, f), v[..3].iter().sum::<f64>());
    }

    #[test]
    fn blocked_rows_cover_every_row_once_on_both_paths() {
        for n in [1usize, 5, 64, 1000] {
            for parallel in [false, true] {
                let mut data = vec![0u32; n * 3];
                let s = blocked_sum_rows_mut(&mut data, 3, n, parallel, |first, rows| {
                    for (r, row) in rows.chunks_exact_mut(3).enumerate() {
                        row.fill((first + r) as u32 + 1);
                    }
                    (rows.len() / 3) as f64
                });
                assert_eq!(s, n as f64);
                assert!(data.chunks_exact(3).enumerate().all(|(i, r)| r.iter().all(|&x| x == i as u32 + 1)));
            }
        }
    }
}
