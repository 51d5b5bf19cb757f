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

/// A storage type in the GPU op tests: conversions to and from f32 as the `half` crate rounds (round to
/// nearest even, as the kernels' `st` does).
pub trait TestStore: crate::cuda::Store {
    /// The type's unit in the last place relative to 1 (its rounding moves a value by at most half of this
    /// times its magnitude, outside the subnormals).
    const ULP: f32;
    /// `x` rounded into this type.
    fn from_f32(x: f32) -> Self;
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
    /// `x` as this type stores it.
    fn round(x: f32) -> f32 {
        Self::from_f32(x).to_f32()
    }
}

impl TestStore for f32 {
    const ULP: f32 = f32::EPSILON;
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl TestStore for half::f16 {
    const ULP: f32 = 1.0 / 1024.0;
    fn from_f32(x: f32) -> Self {
        half::f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl TestStore for half::bf16 {
    const ULP: f32 = 1.0 / 128.0;
    fn from_f32(x: f32) -> Self {
        half::bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

/// `xs` stored in `T` on the device, and the stored values read back as f32 on the host.
pub fn upload_as<T: TestStore>(gpu: &crate::cuda::Gpu, xs: &[f32]) -> (cudarc::driver::CudaSlice<T>, Vec<f32>) {
    let stored: Vec<T> = xs.iter().map(|&x| T::from_f32(x)).collect();
    let back = stored.iter().map(|&x| x.to_f32()).collect();
    (gpu.upload(&stored).unwrap(), back)
}

/// `n` NaNs stored in `T` on the device: an output the kernel must overwrite entirely.
pub fn poisoned_as<T: TestStore>(gpu: &crate::cuda::Gpu, n: usize) -> cudarc::driver::CudaSlice<T> {
    gpu.upload(&vec![T::from_f32(f32::NAN); n]).unwrap()
}

/// A device buffer in `T` read back as f32.
pub fn download_f32<T: TestStore>(gpu: &crate::cuda::Gpu, buf: &cudarc::driver::CudaSlice<T>) -> Vec<f32> {
    gpu.download(buf).unwrap().into_iter().map(T::to_f32).collect()
}

/// Asserts a half-precision output stored in two roundings (a product rounded into the storage type, then its
/// sum with a bias rounded again) is within them of the reference: `|got - want| <= ulp * (|product| +
/// |want|) + 1e-4` per element, `ulp` the type's unit in the last place relative to 1. The GPU sums the
/// product in another order than the reference, so a product near a tie of the type may round the other way,
/// moving the output by one unit of the *product's* magnitude, and the sum by one of the output's. NaN fails.
pub fn assert_within_two_roundings(what: &str, got: &[f32], want: &[f32], product: &[f32], ulp: f32) {
    assert!(got.len() == want.len() && want.len() == product.len(), "{what}: lengths differ");
    let mut worst = 0.0f32;
    for i in 0..got.len() {
        let (g, w) = (got[i], want[i]);
        let bound = ulp * (product[i].abs() + w.abs()) + 1e-4;
        let err = (g - w).abs();
        // A NaN in either makes `err` NaN, which fails.
        if err.is_nan() || err > bound {
            panic!("{what}: element {i}: got {g}, want {w} (product {}, |err| {err}, bound {bound})", product[i]);
        }
        worst = worst.max(err / bound);
    }
    eprintln!("{what}: within two roundings (worst {worst:.2} of the bound)");
}

/// Calls a test case generic over an (input, output) storage pair for each pair autocast mixes: half to
/// half, f32 to half and half to f32, in f16 and in bf16 (the f32 pair has its own test). The `products:`
/// form adds the products' half type as a third parameter.
macro_rules! for_each_half_pair {
    ($case:ident($($arg:expr),* $(,)?)) => {{
        use half::{bf16, f16};
        $case::<f16, f16>($($arg),*);
        $case::<f32, f16>($($arg),*);
        $case::<f16, f32>($($arg),*);
        $case::<bf16, bf16>($($arg),*);
        $case::<f32, bf16>($($arg),*);
        $case::<bf16, f32>($($arg),*);
    }};
    (products: $case:ident($($arg:expr),* $(,)?)) => {{
        use half::{bf16, f16};
        $case::<f16, f16, f16>($($arg),*);
        $case::<f32, f16, f16>($($arg),*);
        $case::<f16, f32, f16>($($arg),*);
        $case::<bf16, bf16, bf16>($($arg),*);
        $case::<f32, bf16, bf16>($($arg),*);
        $case::<bf16, f32, bf16>($($arg),*);
    }};
}
pub(crate) use for_each_half_pair;
