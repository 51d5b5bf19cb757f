//! Embedding lookup (PyTorch's `nn.Embedding` without `padding_idx` / `max_norm`): `out[i] = table[ids[i]]`,
//! and its backward, a scatter-add of the output gradient rows into the table gradient.

use rayon::prelude::*;

use super::par::{rows_per_task, PAR_MIN_ELEMS};
use crate::Float;

/// Number of table-row ranges [`embedding_backward`] splits the vocabulary into when it runs in parallel.
/// Every range scans all ids, so more ranges mean more scanning; 64 keeps that cheap next to the row adds
/// while giving work stealing enough pieces.
const VOCAB_RANGES: usize = 64;

/// Errors detected by [`embedding_forward`] before anything is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmbeddingError {
    /// An id that is not a row of the table.
    #[error("embedding id {id} at position {position} is outside [0, {vocab})")]
    IdOutOfRange {
        /// Index of the bad id in `ids`.
        position: usize,
        /// The id.
        id: i64,
        /// Number of table rows.
        vocab: usize,
    },
}

/// First id outside `[0, vocab)`, as an error.
fn check_ids(ids: &[i64], vocab: usize) -> Result<(), EmbeddingError> {
    match ids.iter().position(|&id| id < 0 || id as u64 >= vocab as u64) {
        Some(position) => Err(EmbeddingError::IdOutOfRange { position, id: ids[position], vocab }),
        None => Ok(()),
    }
}

/// Embedding forward: copies row `ids[i]` of the table into row `i` of `out` (overwrites `out`).
///
/// ids: [N], table: [vocab, dim], out: [N, dim].
///
/// Every id is checked before anything is written; on error `out` is unchanged.
pub fn embedding_forward<T: Float>(
    out: &mut [T],
    ids: &[i64],
    table: &[T],
    vocab: usize,
    dim: usize,
) -> Result<(), EmbeddingError> {
    assert_eq!(table.len(), vocab * dim, "embedding_forward: table must be [vocab, dim]");
    assert_eq!(out.len(), ids.len() * dim, "embedding_forward: out must be [N, dim]");
    check_ids(ids, vocab)?;
    if dim == 0 {
        return Ok(());
    }
    let rows = |(o, ids): (&mut [T], &[i64])| {
        for (o, &id) in o.chunks_exact_mut(dim).zip(ids) {
            let r = id as usize;
            o.copy_from_slice(&table[r * dim..(r + 1) * dim]);
        }
    };
    if ids.len() > 1 && out.len() >= PAR_MIN_ELEMS {
        let r = rows_per_task(dim);
        out.par_chunks_mut(r * dim).zip(ids.par_chunks(r)).for_each(rows);
    } else {
        rows((out, ids));
    }
    Ok(())
}

/// Embedding backward: `dtable[ids[i]] += dout[i]` for every position `i` (accumulates, it is a parameter
/// gradient). Rows hit by several positions receive their contributions in position order whether or not
/// the work is split across threads, so the result is deterministic and identical to the sequential loop.
///
/// dtable: [vocab, dim], dout: [N, dim], ids: [N].
///
/// Panics on an id outside `[0, vocab)` (before writing); the forward has already reported it as an error.
pub fn embedding_backward<T: Float>(dtable: &mut [T], dout: &[T], ids: &[i64], vocab: usize, dim: usize) {
    assert_eq!(dtable.len(), vocab * dim, "embedding_backward: dtable must be [vocab, dim]");
    assert_eq!(dout.len(), ids.len() * dim, "embedding_backward: dout must be [N, dim]");
    if let Err(e) = check_ids(ids, vocab) {
        panic!("embedding_backward: {e}");
    }
    if dim == 0 {
        return;
    }
    // Table rows [first, first + chunk.len() / dim) are owned by this call: scan every id and add the
    // gradient rows of those that fall in the range. Disjoint ranges need no synchronisation.
    let scatter = |first: usize, chunk: &mut [T]| {
        let end = (first + chunk.len() / dim) as u64;
        for (i, &id) in ids.iter().enumerate() {
            let id = id as u64;
            if id < first as u64 || id >= end {
                continue;
            }
            let r = id as usize - first;
            for (d, &g) in chunk[r * dim..(r + 1) * dim].iter_mut().zip(&dout[i * dim..(i + 1) * dim]) {
                *d += g;
            }
        }
    };
    if vocab > 1 && dout.len() >= PAR_MIN_ELEMS {
        let per_range = vocab.div_ceil(VOCAB_RANGES);
        dtable.par_chunks_mut(per_range * dim).enumerate().for_each(|(k, chunk)| scatter(k * per_range, chunk));
    } else {
        scatter(0, dtable);
    }
}

/// Token ids from their float encoding in a batch: `ids[i] = x[i] as i64` (truncation toward zero, saturating,
/// NaN to 0: Rust's `as`), so ids above 2^24 are exact only as far as f32 represents them. ids, x: [N].
pub fn ids_from_f32(ids: &mut [i64], x: &[f32]) {
    assert_eq!(ids.len(), x.len(), "ids_from_f32: ids and x differ in length");
    for (id, &v) in ids.iter_mut().zip(x) {
        *id = v as i64;
    }
}

/// The CUDA kernels of the embedding (`embedding.cu`).
pub static CUDA: crate::cuda::KernelSource = crate::cuda::KernelSource {
    name: "embedding",
    code: include_str!("embedding.cu"),
    kernels: &["embedding_forward_f32", "embedding_backward_f32", "embedding_ids_from_f32"],
};

/// Host side of `embedding.cu`.
#[path = "embedding_cuda.rs"]
pub mod cuda;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gradcheck::*;
    use crate::rng::Rng;

    fn random_ids(seed: u64, n: usize, vocab: usize) -> Vec<i64> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.below(vocab as u64) as i64).collect()
    }

    /// Naive f64 reference from the definition: a gather, and the gradient as a sum over positions of
    /// `[ids[i] == v] * dout[i]` for every table row `v`.
    fn reference(table: &[f64], dout: &[f64], ids: &[i64], vocab: usize, dim: usize) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0.0; ids.len() * dim];
        for (i, &id) in ids.iter().enumerate() {
            for j in 0..dim {
                out[i * dim + j] = table[id as usize * dim + j];
            }
        }
        let mut dtable = vec![0.0; vocab * dim];
        for v in 0..vocab {
            for (i, &id) in ids.iter().enumerate() {
                if id as usize == v {
                    for j in 0..dim {
                        dtable[v * dim + j] += dout[i * dim + j];
                    }
                }
            }
        }
        (out, dtable)
    }

    #[test]
    fn hand_checked_values() {
        let table = [0.0f32, 1.0, 10.0, 11.0, 20.0, 21.0];
        let ids = [2i64, 0, 2];
        let mut out = [9.0f32; 6];
        embedding_forward(&mut out, &ids, &table, 3, 2).unwrap();
        assert_eq!(out, [20.0, 21.0, 0.0, 1.0, 20.0, 21.0]);
        // Row 2 is used twice: both gradient rows add up; row 1 is untouched; the old values are kept (+=).
        let mut dt = [1.0f32; 6];
        embedding_backward(&mut dt, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &ids, 3, 2);
        assert_eq!(dt, [4.0, 5.0, 1.0, 1.0, 7.0, 9.0]);
    }

    #[test]
    fn out_of_range_id_is_an_error_and_writes_nothing() {
        let table = [0.0f64; 6];
        let mut out = [7.0f64; 6];
        for (ids, position, id) in [([0i64, 3, 1], 1usize, 3i64), ([-1, 0, 9], 0, -1), ([0, 1, i64::MIN], 2, i64::MIN)]
        {
            let err = embedding_forward(&mut out, &ids, &table, 3, 2).unwrap_err();
            assert_eq!(err, EmbeddingError::IdOutOfRange { position, id, vocab: 3 });
            let msg = err.to_string();
            assert!(msg.contains(&format!("position {position}")) && msg.contains(&id.to_string()), "{msg}");
        }
        assert_eq!(out, [7.0; 6]);
        // An empty table rejects every id; an empty batch is fine.
        assert!(embedding_forward(&mut out[..2], &[0], &[], 0, 2).is_err());
        assert!(embedding_forward::<f64>(&mut [], &[], &table, 3, 2).is_ok());
    }

    #[test]
    #[should_panic(expected = "position 1")]
    fn backward_panics_on_out_of_range_id() {
        let mut dt = [0.0f32; 4];
        embedding_backward(&mut dt, &[1.0; 4], &[0, 2], 2, 2);
    }

    #[test]
    fn matches_f64_reference() {
        // Small, and 4000 x 40 = 160k elements (parallel gather and scatter) with many repeated ids.
        for (n, vocab, dim, seed) in [(9usize, 5usize, 3usize, 1u64), (4000, 300, 40, 2), (3, 1, 2, 3)] {
            let table = round_f32(&uniform(seed, vocab * dim, -1.0, 1.0));
            let dout = round_f32(&uniform(seed + 1, n * dim, -1.0, 1.0));
            let ids = random_ids(seed + 2, n, vocab);
            let (want, want_dt) = reference(&table, &dout, &ids, vocab, dim);
            let init = round_f32(&uniform(seed + 3, vocab * dim, -1.0, 1.0));
            let want_acc: Vec<f64> = init.iter().zip(&want_dt).map(|(a, b)| a + b).collect();

            let mut out = vec![0.0f64; n * dim];
            embedding_forward(&mut out, &ids, &table, vocab, dim).unwrap();
            assert_eq!(out, want, "the f64 gather is exact");
            let mut dt = vec![0.0f64; vocab * dim];
            embedding_backward(&mut dt, &dout, &ids, vocab, dim);
            assert_close("f64 dtable", &dt, &want_dt, 1e-12, 1e-12);
            // Accumulates into what is already there.
            let mut dt = init.clone();
            embedding_backward(&mut dt, &dout, &ids, vocab, dim);
            assert_close("f64 dtable accumulated", &dt, &want_acc, 1e-12, 1e-12);

            let mut out = vec![0.0f32; n * dim];
            embedding_forward(&mut out, &ids, &to_f32(&table), vocab, dim).unwrap();
            assert_close("f32 out", &out, &want, 0.0, 0.0);
            let mut dt = to_f32(&init);
            embedding_backward(&mut dt, &to_f32(&dout), &ids, vocab, dim);
            assert_close_scaled("f32 dtable accumulated", &dt, &want_acc, 1e-5);
        }
    }

    #[test]
    fn parallel_scatter_is_identical_to_the_sequential_loop() {
        // Position-order accumulation per row, whatever the split: compare bits with a plain loop in f32.
        let (n, vocab, dim) = (5000, 50, 32);
        let dout = to_f32(&uniform(7, n * dim, -1.0, 1.0));
        let ids = random_ids(8, n, vocab);
        let mut dt = vec![0.5f32; vocab * dim];
        embedding_backward(&mut dt, &dout, &ids, vocab, dim);
        let mut want = vec![0.5f32; vocab * dim];
        for (i, &id) in ids.iter().enumerate() {
            for j in 0..dim {
                want[id as usize * dim + j] += dout[i * dim + j];
            }
        }
        assert_eq!(dt, want);
    }

    #[test]
    fn table_gradient_matches_finite_differences() {
        let (n, vocab, dim) = (7, 4, 3);
        let ids = [3i64, 0, 3, 1, 3, 0, 1]; // row 2 unused: its gradient must be 0
        let mut table = uniform(9, vocab * dim, -1.0, 1.0);
        let w = uniform(10, n * dim, -1.0, 1.0);
        let mut dt = vec![0.0; vocab * dim];
        embedding_backward(&mut dt, &w, &ids, vocab, dim);
        assert!(dt[2 * dim..3 * dim].iter().all(|&g| g == 0.0));
        let mut out = vec![0.0; n * dim];
        check_grad("dtable", &mut table, &dt, |t| {
            embedding_forward(&mut out, &ids, t, vocab, dim).unwrap();
            dot(&w, &out)
        });
    }
}
