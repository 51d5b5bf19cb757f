//! Support for the GPU tests: one shared device when the machine has one, and a clear SKIPPED line when not.
//!
//! Every CUDA op test compares the kernel with its CPU twin on fresh random inputs (a new seed per run,
//! printed so a failure can be replayed with `ECSTRAIN_TEST_SEED`), with output buffers poisoned with NaN
//! before the launch so an element the kernel forgot to write shows up.

use std::sync::OnceLock;

use cudarc::driver::CudaSlice;

use super::gpu::{Gpu, GpuError};

/// The test device (`cuda:0`), opened once per test binary; `None` (after printing why) on a machine
/// without one. Test bodies start with `let Some(gpu) = gpu_or_skip("name") else { return };`.
/// With `ECSTRAIN_REQUIRE_GPU=1` (CI's pass over tools/cuda-emu) a missing device fails the test instead.
pub fn gpu_or_skip(test: &str) -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::open(0).map_err(|e| e.to_string())) {
        Ok(g) => Some(g),
        Err(why) => {
            skip_without_gpu(test, why);
            None
        }
    }
}

/// Prints the SKIPPED line of a GPU test that found no device, or panics if `ECSTRAIN_REQUIRE_GPU=1` (so a
/// run meant to exercise the device path cannot pass by skipping it).
pub fn skip_without_gpu(test: &str, why: &str) {
    if std::env::var("ECSTRAIN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("{test}: ECSTRAIN_REQUIRE_GPU=1 but no CUDA device was found ({why})");
    }
    eprintln!("SKIPPED {test}: no CUDA device ({why})");
}

/// True (after printing the SKIPPED line, or panicking under `ECSTRAIN_REQUIRE_GPU=1`) when `cuda:0` cannot run
/// the engine's kernels (no driver, no device, or no NVRTC for it) for the end-to-end test `test`; such tests open the device through the engine, not through
/// [`gpu_or_skip`]. Test bodies start with `if no_gpu("name") { return; }`.
pub fn no_gpu(test: &str) -> bool {
    match crate::Device::Cuda(0).ensure_available() {
        Ok(()) => false,
        Err(why) => {
            skip_without_gpu(test, &why.to_string());
            true
        }
    }
}

/// A per-run seed for random test inputs: `ECSTRAIN_TEST_SEED` if set, else the clock; printed.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("ECSTRAIN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("{test}: ECSTRAIN_TEST_SEED={seed}");
    seed
}

/// A device buffer of `n` NaNs: an output the kernel must overwrite entirely.
pub fn poisoned(gpu: &Gpu, n: usize) -> Result<CudaSlice<f32>, GpuError> {
    gpu.upload(&vec![f32::NAN; n])
}

/// Asserts `got` matches `want` elementwise within `atol + rtol * |want|` (NaN never matches).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        // Written so that a NaN (in either) fails: every comparison with NaN is false.
        let within = err <= atol + rtol * w.abs();
        if !within {
            panic!("{what}: element {i}: got {g}, want {w} (|err| {err}, atol {atol}, rtol {rtol})");
        }
        if err > worst.1 {
            worst = (i, err);
        }
    }
    eprintln!("{what}: max |err| {:.3e} at {}", worst.1, worst.0);
}
