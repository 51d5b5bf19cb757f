//! The vector-quantisation layer of a VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation
//! Learning") with the straight-through estimator.
//!
//! The encoder output `z` is channels-first `[N, D, P]` (P = H*W positions, D the embedding dimension) and the
//! codebook is `[K, D]`. Every (sample, position) vector `z[n, :, p]` is replaced by its nearest code. The
//! caller's VQ loss is `mse(sg[z], e) + beta * mse(z, sg[e])` (codebook and commitment terms, `F.mse_loss` with
//! mean reduction as in common PyTorch VQ-VAE code); both have the value [`VqStats::mse`], so the loss value is
//! `(1 + beta) * mse`. The output is `z + sg[e - z]`, so the downstream gradient passes to `z` unchanged and
//! gives the codebook nothing.

use rayon::prelude::*;

use super::par::{blocked_sum_rows_mut, PAR_CHUNK, PAR_MIN_ELEMS};
use crate::Float;

/// Positions whose distances [`vq_forward`] computes together: the distance accumulators live in a stack array
/// of this size and the inner loop runs over contiguous positions of one `z` row, so it vectorises.
const POS_BLOCK: usize = 64;

/// Multiply-adds (`N*P*K*D`) above which the nearest-code search is split across rayon threads.
const PAR_MIN_SEARCH: usize = 1 << 18;

/// Multiply-adds per rayon task in the nearest-code search: enough to amortise the task overhead.
const SEARCH_WORK_PER_TASK: usize = 1 << 16;

/// Number of codebook-row ranges [`vq_backward`] splits the codebook gradient into when it runs in parallel.
/// Every range scans all indices (cheap `u32` reads), so more ranges mean more scanning.
const CODE_RANGES: usize = 64;

/// Statistics of one [`vq_forward`] call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VqStats<T> {
    /// Mean over all `N*D*P` elements of `(z - out)^2`: the value of both the codebook loss `mse(sg[z], e)` and
    /// the commitment loss `mse(z, sg[e])`. Accumulated in f64; 0 for an empty input.
    pub mse: T,
    /// Codebook perplexity `exp(-sum_k q_k ln q_k)` with `q_k` the fraction of positions assigned to code `k`
    /// (unused codes contribute 0): 1 when one code takes everything, K when all codes are used equally.
    /// 1 for an empty input.
    pub perplexity: T,
}

/// Nearest codes of the rows `first_row .. first_row + idx.len()` (row = `n*P + p`) written to `idx`.
/// Positions are taken in blocks of up to [`POS_BLOCK`] within one sample; for each code the block's
/// distances are accumulated over `d` in ascending order, exactly the naive per-row sum, so the split into
/// blocks and tasks never changes a distance.
#[inline(always)]
fn nearest_codes_body<T: Float>(idx: &mut [u32], first_row: usize, z: &[T], codebook: &[T], d: usize, p: usize) {
    let mut best = [T::ZERO; POS_BLOCK];
    let mut dist = [T::ZERO; POS_BLOCK];
    let mut r = 0;
    while r < idx.len() {
        let (s, p0) = ((first_row + r) / p, (first_row + r) % p);
        let len = (p - p0).min(idx.len() - r).min(POS_BLOCK);
        let zs = &z[s * d * p..(s + 1) * d * p];
        let (best, dist, bi) = (&mut best[..len], &mut dist[..len], &mut idx[r..r + len]);
        for (code, e) in codebook.chunks_exact(d).enumerate() {
            dist.fill(T::ZERO);
            for (j, &ev) in e.iter().enumerate() {
                for (acc, &zv) in dist.iter_mut().zip(&zs[j * p + p0..j * p + p0 + len]) {
                    let t = zv - ev;
                    *acc += t * t;
                }
            }
            if code == 0 {
                best.copy_from_slice(dist);
                bi.fill(0);
            } else {
                // Strict `<` in ascending code order: ties go to the smallest code, and a NaN distance never
                // replaces the current best.
                for ((b, i), &dv) in best.iter_mut().zip(bi.iter_mut()).zip(dist.iter()) {
                    if dv < *b {
                        *b = dv;
                        *i = code as u32;
                    }
                }
            }
        }
        r += len;
    }
}

crate::multiversion!(
    fn nearest_codes<T: Float>(idx: &mut [u32], first_row: usize, z: &[T], codebook: &[T], d: usize, p: usize) => nearest_codes_body
);

/// VQ forward: nearest-code assignment, quantised output, code usage and loss statistics.
///
/// For every sample `n` and position `p` the code `k* = argmin_k sum_d (z[n, d, p] - e[k, d])^2`, computed as
/// that direct sum of squares in `T` (not the `|z|^2 - 2 z.e + |e|^2` expansion, whose cancellation can pick
/// the wrong code); ties go to the smallest `k`. Writes (overwriting) `out[n, :, p] = e[k*]`,
/// `indices[n*P + p] = k*` and `counts[k]` = the number of positions assigned to code `k`.
///
/// out, z: [N, D, P]; indices: [N*P]; counts: [K]; codebook: [K, D].
///
/// Returns the MSE between `z` and `out` and the codebook perplexity (see [`VqStats`]); both are computed in
/// f64 over fixed ranges, so they do not depend on the thread count. A position whose distances are all NaN
/// gets code 0. Panics on wrong lengths, on `K = 0` with positions to assign, or on `K` or `N*P` too large for
/// `u32` indices and counts.
#[allow(clippy::too_many_arguments)]
pub fn vq_forward<T: Float>(
    out: &mut [T],
    indices: &mut [u32],
    counts: &mut [u32],
    z: &[T],
    codebook: &[T],
    n: usize,
    d: usize,
    p: usize,
    k: usize,
) -> VqStats<T> {
    assert_eq!(z.len(), n * d * p, "vq_forward: z must be [N, D, P]");
    assert_eq!(out.len(), n * d * p, "vq_forward: out must be [N, D, P]");
    assert_eq!(indices.len(), n * p, "vq_forward: indices must be [N*P]");
    assert_eq!(counts.len(), k, "vq_forward: counts must be [K]");
    assert_eq!(codebook.len(), k * d, "vq_forward: codebook must be [K, D]");
    assert!(k <= u32::MAX as usize, "vq_forward: K = {k} codes do not fit u32 indices");
    assert!(n * p <= u32::MAX as usize, "vq_forward: N*P = {} positions do not fit u32 counts", n * p);
    let rows = n * p;
    counts.fill(0);
    if rows == 0 {
        return VqStats { mse: T::ZERO, perplexity: T::ONE };
    }
    assert!(k > 0, "vq_forward: empty codebook (K = 0)");

    // 1. Nearest code of every row; rows are independent, so tasks own disjoint ranges of `indices`.
    let work = rows * k * d;
    if d == 0 {
        // Every distance is 0: the tie goes to code 0.
        indices.fill(0);
    } else if rows > 1 && work > PAR_MIN_SEARCH {
        let per_task = (SEARCH_WORK_PER_TASK / (k * d)).max(1);
        indices
            .par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(t, idx)| nearest_codes(idx, t * per_task, z, codebook, d, p));
    } else {
        nearest_codes(indices, 0, z, codebook, d, p);
    }

    // 2. Usage counts and perplexity (O(N*P + K), sequential).
    for &i in indices.iter() {
        counts[i as usize] += 1;
    }
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let q = c as f64 / rows as f64;
            -q * q.ln()
        })
        .sum();
    let perplexity = T::from_f64(entropy.exp());
    if d == 0 {
        return VqStats { mse: T::ZERO, perplexity };
    }

    // 3. Gather the codes into `out`, one (n, d) row of P positions at a time, and sum the squared errors of
    // the same rows. The differences are taken in f64, so for f32 inputs every term is exact.
    let total = blocked_sum_rows_mut(out, p, n * d, out.len() >= PAR_MIN_ELEMS, |first, rows_out| {
        let mut s = 0.0f64;
        for (r, o) in rows_out.chunks_exact_mut(p).enumerate() {
            let (sample, j) = ((first + r) / d, (first + r) % d);
            let (zr, idx) = (&z[(first + r) * p..(first + r + 1) * p], &indices[sample * p..(sample + 1) * p]);
            for ((o, &zv), &i) in o.iter_mut().zip(zr).zip(idx) {
                let e = codebook[i as usize * d + j];
                *o = e;
                let t = zv.to_f64() - e.to_f64();
                s += t * t;
            }
        }
        s
    });
    VqStats { mse: T::from_f64(total / out.len() as f64), perplexity }
}

/// VQ backward with the straight-through estimator, for the loss
/// `L = L_downstream(out) + vq_weight * (mse(sg[z], e) + beta * mse(z, sg[e]))` with `out = z + sg[e - z]`.
///
/// With `M = N*D*P` and `k*` the code of each position (`indices`, as written by [`vq_forward`]):
/// - `dz[n, :, p] = dout[n, :, p] + vq_weight * beta * 2 (z[n, :, p] - e[k*]) / M` (overwrites): the
///   straight-through path is the identity and only the commitment term sees `z`;
/// - `dcodebook[k*, :] += vq_weight * 2 (e[k*] - z[n, :, p]) / M` for every position (accumulates, it is a
///   parameter gradient): only the codebook term sees `e`, the downstream loss gives it nothing, exactly as
///   PyTorch's `z + (e - z).detach()`. Each element receives its terms in position order (`n` major, then
///   `p`) whether or not the work is split across threads, so the result is deterministic.
///
/// dz, dout, z: [N, D, P]; dcodebook, codebook: [K, D]; indices: [N*P].
/// Panics on wrong lengths or an index outside `[0, K)`.
#[allow(clippy::too_many_arguments)]
pub fn vq_backward<T: Float>(
    dz: &mut [T],
    dcodebook: &mut [T],
    dout: &[T],
    z: &[T],
    codebook: &[T],
    indices: &[u32],
    n: usize,
    d: usize,
    p: usize,
    k: usize,
    beta: T,
    vq_weight: T,
) {
    let m = n * d * p;
    assert_eq!(dz.len(), m, "vq_backward: dz must be [N, D, P]");
    assert_eq!(dout.len(), m, "vq_backward: dout must be [N, D, P]");
    assert_eq!(z.len(), m, "vq_backward: z must be [N, D, P]");
    assert_eq!(dcodebook.len(), k * d, "vq_backward: dcodebook must be [K, D]");
    assert_eq!(codebook.len(), k * d, "vq_backward: codebook must be [K, D]");
    assert_eq!(indices.len(), n * p, "vq_backward: indices must be [N*P]");
    if let Some(pos) = indices.iter().position(|&i| i as usize >= k) {
        panic!("vq_backward: code {} at position {pos} is outside [0, {k})", indices[pos]);
    }
    if m == 0 {
        return;
    }
    let two_over_m = T::from_f64(2.0 / m as f64);
    let parallel = m >= PAR_MIN_ELEMS;

    // dz, one (n, d) row of P positions at a time.
    let (zscale, escale) = (vq_weight * beta * two_over_m, vq_weight * two_over_m);
    let dz_rows = |first: usize, dzc: &mut [T]| {
        for (r, dzr) in dzc.chunks_exact_mut(p).enumerate() {
            let row = first + r;
            let (sample, j) = (row / d, row % d);
            let (g, zr) = (&dout[row * p..(row + 1) * p], &z[row * p..(row + 1) * p]);
            for (((o, &g), &zv), &i) in dzr.iter_mut().zip(g).zip(zr).zip(&indices[sample * p..(sample + 1) * p]) {
                *o = g + zscale * (zv - codebook[i as usize * d + j]);
            }
        }
    };
    if parallel {
        let per_task = (PAR_CHUNK / p).max(1);
        dz.par_chunks_mut(per_task * p).enumerate().for_each(|(t, c)| dz_rows(t * per_task, c));
    } else {
        dz_rows(0, dz);
    }

    // dcodebook: codebook rows [first, first + chunk.len() / D) are owned by this call; it scans the positions
    // in order and adds those assigned to one of its rows, so disjoint ranges need no synchronisation and every
    // element sees the same order of additions as the sequential loop.
    let scatter = |first: usize, chunk: &mut [T]| {
        let end = first + chunk.len() / d;
        for (row, &i) in indices.iter().enumerate() {
            let i = i as usize;
            if i < first || i >= end {
                continue;
            }
            let (sample, pos) = (row / p, row % p);
            let zs = &z[sample * d * p..(sample + 1) * d * p];
            let (dst, e) = (&mut chunk[(i - first) * d..(i - first + 1) * d], &codebook[i * d..(i + 1) * d]);
            for (j, (dv, &ev)) in dst.iter_mut().zip(e).enumerate() {
                *dv += escale * (ev - zs[j * p + pos]);
            }
        }
    };
    if parallel && k > 1 {
        let per_range = k.div_ceil(CODE_RANGES);
        dcodebook.par_chunks_mut(per_range * d).enumerate().for_each(|(r, chunk)| scatter(r * per_range, chunk));
    } else {
        scatter(0, dcodebook);
    }
}

/// The CUDA kernels of vector quantisation (`vector_quantize.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "vector_quantize",
    code: include_str!("vector_quantize.cu"),
    kernels: &[
        "vq_nearest_f32_f32",
        "vq_nearest_f32_f16",
        "vq_nearest_f16_f32",
        "vq_nearest_f16_f16",
        "vq_nearest_f32_bf16",
        "vq_nearest_bf16_f32",
        "vq_nearest_bf16_bf16",
        "vq_backward_dz_f32_f32",
        "vq_backward_dz_f32_f16",
        "vq_backward_dz_f16_f32",
        "vq_backward_dz_f16_f16",
        "vq_backward_dz_f32_bf16",
        "vq_backward_dz_bf16_f32",
        "vq_backward_dz_bf16_bf16",
        "vq_stats_f32",
        "vq_stats_f16",
        "vq_stats_bf16",
        "vq_backward_codebook_f32",
        "vq_backward_codebook_f16",
        "vq_backward_codebook_bf16",
    ],
};

/// Host side of `vector_quantize.cu`.
#[path = "vector_quantize_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;

    /// Naive f64 reference from the definitions.
    struct Reference {
        out: Vec<f64>,
        indices: Vec<u32>,
        counts: Vec<u32>,
        mse: f64,
        perplexity: f64,
        /// Smallest gap between the best and the second-best squared distance over all positions.
        min_gap: f64,
        dz: Vec<f64>,
        /// Codebook gradient added to `dcodebook0`.
        dcodebook: Vec<f64>,
    }

    #[allow(clippy::too_many_arguments)]
    fn reference(
        z: &[f64],
        codebook: &[f64],
        dout: &[f64],
        dcodebook0: &[f64],
        (n, d, p, k): (usize, usize, usize, usize),
        beta: f64,
        vq_weight: f64,
    ) -> Reference {
        let m = (n * d * p) as f64;
        let (mut out, mut indices, mut counts) = (vec![0.0; n * d * p], vec![0u32; n * p], vec![0u32; k]);
        let (mut sq, mut min_gap) = (0.0, f64::INFINITY);
        let (mut dz, mut dcb) = (vec![0.0; n * d * p], dcodebook0.to_vec());
        for s in 0..n {
            for q in 0..p {
                let dists: Vec<f64> = (0..k)
                    .map(|c| (0..d).map(|j| (z[(s * d + j) * p + q] - codebook[c * d + j]).powi(2)).sum())
                    .collect();
                let mut best = 0;
                for c in 1..k {
                    if dists[c] < dists[best] {
                        best = c;
                    }
                }
                for c in 0..k {
                    if c != best {
                        min_gap = min_gap.min(dists[c] - dists[best]);
                    }
                }
                indices[s * p + q] = best as u32;
                counts[best] += 1;
                for j in 0..d {
                    let (zi, e) = ((s * d + j) * p + q, codebook[best * d + j]);
                    out[zi] = e;
                    sq += (z[zi] - e).powi(2);
                    dz[zi] = dout[zi] + vq_weight * beta * 2.0 * (z[zi] - e) / m;
                    dcb[best * d + j] += vq_weight * 2.0 * (e - z[zi]) / m;
                }
            }
        }
        let mut h = 0.0;
        for &c in &counts {
            if c > 0 {
                let q = c as f64 / (n * p) as f64;
                h -= q * q.ln();
            }
        }
        Reference { out, indices, counts, mse: sq / m, perplexity: h.exp(), min_gap, dz, dcodebook: dcb }
    }

    #[test]
    fn hand_checked_values() {
        // D = 2, K = 4 codes e0 = (0, 0), e1 = (2, 0), e2 = (0, 2), e3 = (10, 10) (never used); N = 1, P = 4
        // positions (0.1, -0.2) -> e0, (1.9, 0.3) -> e1, (1.5, 1.5) -> e1 (squared distance 2.5 to both e1 and
        // e2: the tie goes to the smaller code), (0.2, 2.5) -> e2. z is [N, D, P]: first all x, then all y.
        let z = [0.1f64, 1.9, 1.5, 0.2, -0.2, 0.3, 1.5, 2.5];
        let cb = [0.0f64, 0.0, 2.0, 0.0, 0.0, 2.0, 10.0, 10.0];
        let (mut out, mut idx, mut counts) = ([9.0f64; 8], [9u32; 4], [9u32; 4]);
        let st = vq_forward(&mut out, &mut idx, &mut counts, &z, &cb, 1, 2, 4, 4);
        assert_eq!(idx, [0, 1, 1, 2]);
        assert_eq!(counts, [1, 2, 1, 0]);
        assert_eq!(out, [0.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 2.0]);
        // Squared errors 0.05 + 0.10 + 2.5 + 0.29 = 2.94 over 8 elements.
        assert!((st.mse - 0.3675).abs() < 1e-15, "mse {}", st.mse);
        // q = (1/4, 1/2, 1/4, 0): entropy 1.5 ln 2, perplexity 2^1.5.
        assert!((st.perplexity - 2f64.powf(1.5)).abs() < 1e-15, "perplexity {}", st.perplexity);

        // beta = 0.25, vq_weight = 2, M = 8: dz = dout + 2 * 0.25 * 2 (z - e) / 8 = dout + (z - e) / 8;
        // dcodebook += 2 * 2 (e - z) / 8 = (e - z) / 2 summed per code, on top of the old value 1.
        let dout = [1.0f64, -1.0, 0.5, 0.0, 2.0, 0.0, -0.5, 1.0];
        let mut dz = [9.0f64; 8];
        let mut dcb = [1.0f64; 8];
        vq_backward(&mut dz, &mut dcb, &dout, &z, &cb, &idx, 1, 2, 4, 4, 0.25, 2.0);
        let want_dz = [
            1.0 + 0.1 / 8.0,
            -1.0 - 0.1 / 8.0,
            0.5 - 0.5 / 8.0,
            0.2 / 8.0,
            2.0 - 0.2 / 8.0,
            0.3 / 8.0,
            -0.5 + 1.5 / 8.0,
            1.0 + 0.5 / 8.0,
        ];
        assert_close("dz", &dz, &want_dz, 1e-14, 1e-15);
        // e0: (e - z) = (-0.1, 0.2); e1: (0.1, -0.3) + (0.5, -1.5) = (0.6, -1.8); e2: (-0.2, -0.5); e3 unused.
        let want_dcb = [0.95, 1.1, 1.3, 0.1, 0.9, 0.75, 1.0, 1.0];
        assert_close("dcodebook", &dcb, &want_dcb, 1e-14, 1e-15);

        // Empty input: nothing assigned, perplexity 1, mse 0.
        let mut counts = [7u32; 3];
        let st = vq_forward::<f32>(&mut [], &mut [], &mut counts, &[], &[0.0; 6], 0, 2, 5, 3);
        assert_eq!((st.mse, st.perplexity, counts), (0.0, 1.0, [0; 3]));
    }

    #[test]
    fn matches_f64_reference() {
        let (n, d, p, k) = (3, 4, 5, 7);
        let (beta, vq_weight) = (0.25, 1.5);
        let z = round_f32(&uniform(1, n * d * p, -1.0, 1.0));
        let cb = round_f32(&uniform(2, k * d, -1.0, 1.0));
        let dout = round_f32(&uniform(3, n * d * p, -1.0, 1.0));
        let dcb0 = round_f32(&uniform(4, k * d, -1.0, 1.0));
        let r = reference(&z, &cb, &dout, &dcb0, (n, d, p, k), beta, vq_weight);
        // Clear winners: f32 rounding of the distances (~1e-7) cannot change a code.
        assert!(r.min_gap > 1e-3, "min gap {}", r.min_gap);
        assert!(r.counts.iter().filter(|&&c| c > 0).count() > 2, "test data should use several codes");

        let (mut out, mut idx, mut counts) = (vec![f64::NAN; z.len()], vec![99u32; n * p], vec![99u32; k]);
        let st = vq_forward(&mut out, &mut idx, &mut counts, &z, &cb, n, d, p, k);
        assert_eq!(idx, r.indices);
        assert_eq!(counts, r.counts);
        assert_eq!(out, r.out);
        assert_close("f64 mse", &[st.mse], &[r.mse], 1e-12, 0.0);
        assert_close("f64 perplexity", &[st.perplexity], &[r.perplexity], 1e-12, 0.0);
        let (mut dz, mut dcb) = (vec![f64::NAN; z.len()], dcb0.clone());
        vq_backward(&mut dz, &mut dcb, &dout, &z, &cb, &idx, n, d, p, k, beta, vq_weight);
        assert_close("f64 dz", &dz, &r.dz, 1e-12, 1e-12);
        assert_close("f64 dcodebook", &dcb, &r.dcodebook, 1e-12, 1e-12);

        let (z32, cb32) = (to_f32(&z), to_f32(&cb));
        let (mut out, mut idx, mut counts) = (vec![f32::NAN; z.len()], vec![99u32; n * p], vec![99u32; k]);
        let st = vq_forward(&mut out, &mut idx, &mut counts, &z32, &cb32, n, d, p, k);
        assert_eq!(idx, r.indices);
        assert_eq!(counts, r.counts);
        assert_close("f32 out", &out, &r.out, 0.0, 0.0);
        assert_close("f32 mse", &[st.mse], &[r.mse], 1e-5, 0.0);
        assert_close("f32 perplexity", &[st.perplexity], &[r.perplexity], 1e-5, 0.0);
        let (mut dz, mut dcb) = (vec![f32::NAN; z.len()], to_f32(&dcb0));
        vq_backward(&mut dz, &mut dcb, &to_f32(&dout), &z32, &cb32, &idx, n, d, p, k, beta as f32, vq_weight as f32);
        assert_close("f32 dz", &dz, &r.dz, 1e-5, 1e-6);
        assert_close("f32 dcodebook", &dcb, &r.dcodebook, 1e-5, 1e-6);
    }

    /// The straight-through estimator is not the derivative of the loss *value*: `out = z + sg[e - z]` equals
    /// `e[k*]`, which does not move with `z`, and the two VQ terms have the same value while stop-gradients
    /// hide `e` from one and `z` from the other. So the finite differences run on the surrogates whose true
    /// derivatives are the STE gradients:
    /// - w.r.t. z: `F(z) = dot(w, z) + vq_weight * beta * mse(z, e_sel)` (the output acts as the identity of z;
    ///   the codebook term `mse(sg[z], e)` has no z-gradient);
    /// - w.r.t. the codebook: `G(e) = vq_weight * mse(z, e_sel)` (the codebook term only: the downstream path
    ///   and the commitment term `mse(z, sg[e])` give e nothing).
    ///
    /// `e_sel` is the codebook row picked by the forward. The random data has no near-ties (asserted), so the
    /// 1e-6 perturbations keep every code; the closures re-run the forward and check that they did.
    #[test]
    fn gradients_match_finite_differences_of_the_ste_surrogates() {
        let (n, d, p, k) = (2, 3, 4, 5);
        let (beta, vq_weight) = (0.25, 1.5);
        let mut z = uniform(5, n * d * p, -1.0, 1.0);
        let mut cb = uniform(6, k * d, -1.0, 1.0);
        let w = uniform(7, n * d * p, -1.0, 1.0);
        let r = reference(&z, &cb, &w, &vec![0.0; k * d], (n, d, p, k), beta, vq_weight);
        assert!(r.min_gap > 1e-3, "min gap {}", r.min_gap);

        let (mut out, mut idx, mut counts) = (vec![0.0; z.len()], vec![0u32; n * p], vec![0u32; k]);
        vq_forward(&mut out, &mut idx, &mut counts, &z, &cb, n, d, p, k);
        let (mut dz, mut dcb) = (vec![0.0; z.len()], vec![0.0; k * d]);
        vq_backward(&mut dz, &mut dcb, &w, &z, &cb, &idx, n, d, p, k, beta, vq_weight);

        let mse = |z: &[f64], cb: &[f64]| {
            let (mut o, mut i, mut c) = (vec![0.0; z.len()], vec![0u32; n * p], vec![0u32; k]);
            let st = vq_forward(&mut o, &mut i, &mut c, z, cb, n, d, p, k);
            assert_eq!(i, idx, "a perturbation changed a code");
            st.mse
        };
        let cb_fixed = cb.clone();
        check_grad("dz", &mut z, &dz, |v| dot(&w, v) + vq_weight * beta * mse(v, &cb_fixed));
        let z_fixed = z.clone();
        check_grad("dcodebook", &mut cb, &dcb, |v| vq_weight * mse(&z_fixed, v));
    }

    /// Big enough for the rayon paths of the search (N*P*K*D multiply-adds), the output gather and both
    /// backward loops (N*D*P >= PAR_MIN_ELEMS); P = 60 is not a multiple of the search task size, so tasks
    /// straddle samples. Also checks the results are bit-identical on 1 and 4 threads.
    #[test]
    fn large_case_matches_reference_and_is_deterministic() {
        let (n, d, p, k) = (72, 32, 60, 256);
        assert!(n * p * k * d > PAR_MIN_SEARCH && n * d * p >= PAR_MIN_ELEMS);
        assert!(p % (SEARCH_WORK_PER_TASK / (k * d)) != 0);
        let (beta, vq_weight) = (0.25, 1.0);
        let z = uniform(11, n * d * p, -1.0, 1.0);
        let cb = uniform(12, k * d, -1.0, 1.0);
        let dout = uniform(13, n * d * p, -1.0, 1.0);
        let dcb0 = uniform(14, k * d, -1.0, 1.0);
        let r = reference(&z, &cb, &dout, &dcb0, (n, d, p, k), beta, vq_weight);

        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (mut out, mut idx, mut counts) = (vec![0.0; z.len()], vec![0u32; n * p], vec![0u32; k]);
                let st = vq_forward(&mut out, &mut idx, &mut counts, &z, &cb, n, d, p, k);
                let (mut dz, mut dcb) = (vec![0.0; z.len()], dcb0.clone());
                vq_backward(&mut dz, &mut dcb, &dout, &z, &cb, &idx, n, d, p, k, beta, vq_weight);
                (out, idx, counts, st, dz, dcb)
            })
        };
        let (out, idx, counts, st, dz, dcb) = run(4);
        assert_eq!(idx, r.indices);
        assert_eq!(counts, r.counts);
        assert_eq!(out, r.out);
        assert_close("mse", &[st.mse], &[r.mse], 1e-12, 0.0);
        assert_close("perplexity", &[st.perplexity], &[r.perplexity], 1e-12, 0.0);
        assert_close("dz", &dz, &r.dz, 1e-12, 1e-12);
        assert_close("dcodebook", &dcb, &r.dcodebook, 1e-12, 1e-12);

        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
        let (out1, idx1, counts1, st1, dz1, dcb1) = run(1);
        assert_eq!((idx1, counts1), (idx, counts));
        assert_eq!(st1.mse.to_bits(), st.mse.to_bits());
        assert_eq!(st1.perplexity.to_bits(), st.perplexity.to_bits());
        assert!(bits(&out1) == bits(&out) && bits(&dz1) == bits(&dz) && bits(&dcb1) == bits(&dcb));
    }

    #[test]
    #[should_panic(expected = "outside [0, 3)")]
    fn backward_rejects_bad_indices() {
        vq_backward::<f32>(
            &mut [0.0; 2],
            &mut [0.0; 3],
            &[0.0; 2],
            &[0.0; 2],
            &[0.0; 3],
            &[1, 3],
            1,
            1,
            2,
            3,
            0.25,
            1.0,
        );
    }
}
