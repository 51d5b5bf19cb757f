//! Shared pieces of the GPU op tests (random inputs, bitwise comparison); the device handling itself is
//! `cuda::testing`.

use crate::rng::Rng;

/// A fresh generator for `test` (seed printed by `test_seed`, replayable with `ECSTRAIN_TEST_SEED`).
pub fn seeded(test: &str) -> Rng {
    Rng::new(crate::cuda::testing::test_seed(test))
}

/// `n` uniform f32 values in `[lo, hi)`.
pub fn rand_vec(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| lo + (hi - lo) * rng.next_f64() as f32).collect()
}

/// Asserts `got` equals `want` bit for bit (for kernels that round exactly as the CPU does).
pub fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g.to_bits() != w.to_bits()) {
        panic!("{what}: element {i}: got {} want {} (not bitwise equal)", got[i], want[i]);
    }
    eprintln!("{what}: bitwise equal ({} elements)", got.len());
}
