//! What a steady-state CUDA training step asks of the host and the driver, for every model family: no heap
//! allocation on the host (as tests/steady_state_alloc.rs proves for the CPU step), no device allocation, and
//! a bounded number of launches and host synchronisations, printed per step.
//!
//! The driver-call counts come from tools/cuda-emu, which notes every driver entry point it serves
//! (`cuda_emu_counts`); a real driver has no such symbol, so on a GPU only the host allocations are checked.
//! Without a device the test prints SKIPPED (CI runs it on the emulator with `ECSTRAIN_REQUIRE_GPU=1`).

mod alloc_counter;

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::Ordering;

use alloc_counter::{COUNTING, TRACES};

extern "C" {
    fn dlopen(name: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}
const RTLD_NOW: c_int = 2;
const RTLD_NOLOAD: c_int = 4;

/// The emulator's driver-call counts (name -> calls so far), or `None` under a real driver.
fn driver_counts() -> Option<BTreeMap<String, u64>> {
    type Counts = unsafe extern "C" fn(*mut c_char, usize) -> usize;
    // SAFETY: dlopen with RTLD_NOLOAD only looks up the already loaded driver; the symbol, when present, has
    // the signature of cuda_emu_counts in tools/cuda-emu/driver.cpp.
    let f: Counts = unsafe {
        let lib = dlopen(c"libcuda.so.1".as_ptr(), RTLD_NOW | RTLD_NOLOAD);
        if lib.is_null() {
            return None;
        }
        let sym = dlsym(lib, c"cuda_emu_counts".as_ptr());
        if sym.is_null() {
            return None;
        }
        std::mem::transmute::<*mut c_void, Counts>(sym)
    };
    // SAFETY: a null buffer asks for the length only; the second call writes at most `len + 1` bytes.
    let text = unsafe {
        let len = f(std::ptr::null_mut(), 0);
        let mut buf = vec![0u8; len + 1];
        let wrote = f(buf.as_mut_ptr().cast(), len + 1);
        buf.truncate(wrote.min(len));
        buf.push(0);
        CStr::from_bytes_until_nul(&buf).unwrap().to_string_lossy().into_owned()
    };
    Some(
        text.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(name, n)| (name.to_string(), n.parse().unwrap()))
            .collect(),
    )
}

/// `after - before`, entries that changed only.
fn difference(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, &v)| (k.clone(), v - before.get(k).copied().unwrap_or(0))).filter(|&(_, v)| v > 0).collect()
}

/// Steps counted per case (after warm-up).
const STEPS: u64 = 8;

/// Warms `config` up on `cuda`, then counts what 8 steps do: host allocation traces and driver calls.
fn measure(config: &str, overrides: &[&str]) -> (Vec<String>, Option<BTreeMap<String, u64>>) {
    use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner::train_step};
    // ECSTRAIN_REPO: a prebuilt test binary run from another checkout (tools/gpu-session/run.sh).
    let root =
        std::env::var_os("ECSTRAIN_REPO").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), std::path::PathBuf::from);
    let root = root.as_path();
    std::env::set_current_dir(root).unwrap();
    let mut sets = vec!["run.log_interval=1000000".to_string(), "run.device=cuda".to_string()];
    sets.extend(overrides.iter().map(|s| s.to_string()));
    let loaded = load_config(&root.join(config), &sets).unwrap();
    let mut app = assemble(default_app(), loaded, true).unwrap().app;
    let sink = std::fs::File::create("/dev/null").unwrap();
    app.world.insert_resource(ecstrain::systems::logging::jsonl::JsonlLog(std::io::BufWriter::new(sink)));
    for _ in 0..3 {
        train_step(&mut app);
    }
    let before = driver_counts();
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..STEPS {
        train_step(&mut app);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let after = driver_counts();
    let failure = app.world.resource::<ecstrain::components::RunFailure>().0.clone();
    assert!(failure.is_none(), "{config}: the CUDA step failed: {failure:?}");
    let traces = std::mem::take(&mut *TRACES.lock().unwrap());
    (traces, before.zip(after).map(|(b, a)| difference(&b, &a)))
}

/// What one case asks per step, from the counted window.
struct PerStep<'a>(&'a BTreeMap<String, u64>);

impl PerStep<'_> {
    /// Calls per step of the entry points named (summed).
    fn of(&self, names: &[&str]) -> f64 {
        names.iter().map(|n| self.0.get(*n).copied().unwrap_or(0)).sum::<u64>() as f64 / STEPS as f64
    }
    /// Kernel launches per step.
    fn kernels(&self) -> f64 {
        self.of(&["cuLaunchKernel"])
    }
}

#[test]
fn cuda_step_allocates_nothing_and_counts_its_driver_calls() {
    if ecstrain::kernels::cuda::testing::no_gpu("cuda_step_allocates_nothing") {
        return;
    }
    let cases: [(&str, &[&str]); 14] = [
        ("configs/digits_mlp.yaml", &[]),
        ("configs/bench_w1_mlp.yaml", &["run.batch=32", "run.nbs=32"]),
        ("configs/digits_cnn.yaml", &["run.batch=32", "run.nbs=32"]),
        ("configs/digits_vit.yaml", &["run.batch=16", "run.nbs=16"]),
        ("configs/digits_resnet.yaml", &["run.batch=16", "run.nbs=16"]),
        ("configs/digits_autoencoder.yaml", &["run.batch=16", "run.nbs=16"]),
        // f16 autocast with dynamic loss scaling (the unscale's found-inf flag), gradient clipping and the EMA.
        ("configs/digits_mlp.yaml", &["run.amp=f16"]),
        // bf16 autocast with the CNN's activations stored half (convolutions, pools, the hidden linear).
        ("configs/digits_cnn.yaml", &["run.batch=32", "run.nbs=32", "run.amp=bf16"]),
        // f16 with the ViT's attention and MLP activations stored half beside its f32 residual stream.
        ("configs/digits_vit.yaml", &["run.batch=16", "run.nbs=16", "run.amp=f16"]),
        // bf16 with the ResNet stored half through its batch norms, residual sums and pooling.
        ("configs/digits_resnet.yaml", &["run.batch=16", "run.nbs=16", "run.amp=bf16"]),
        // bf16 with the VQ-VAE's decoder (convolutions, upsampling) stored half around its f32 quantizer.
        ("configs/digits_autoencoder.yaml", &["run.batch=16", "run.nbs=16", "run.amp=bf16"]),
        ("configs/digits_mlp.yaml", &["run.clip_grad_norm=1.0", "run.ema=true"]),
        ("configs/digits_mlp.yaml", &["run.optimizer=SGD", "run.nbs=128"]),
        // The train split kept on the device: a step uploads its rows' indices and gathers the rows there.
        ("configs/digits_mlp.yaml", &["run.device_cache=true"]),
    ];
    let (mut uploads_uncached, mut event_waits_plain) = (f64::NAN, f64::NAN);
    for (config, overrides) in cases {
        let (traces, counts) = measure(config, overrides);
        assert!(
            traces.is_empty(),
            "{config} {overrides:?} on cuda: {} host allocations in {STEPS} steps; first:\n{}",
            traces.len(),
            traces[0]
        );
        let Some(counts) = counts else {
            eprintln!("{config} {overrides:?}: no host allocation in {STEPS} steps (driver calls not countable here)");
            continue;
        };
        let per = PerStep(&counts);
        let allocations = per.of(&["cuMemAlloc_v2", "cuMemAllocAsync", "cuMemHostAlloc", "cuMemAllocHost_v2"]);
        let frees = per.of(&["cuMemFree_v2", "cuMemFreeAsync", "cuMemFreeHost"]);
        let host_waits = per.of(&["cuStreamSynchronize", "cuCtxSynchronize"]);
        let events = per.of(&["cuEventRecord", "cuStreamWaitEvent", "cuEventSynchronize"]);
        let copies = per.of(&["cuMemcpyHtoDAsync_v2", "cuMemcpyDtoHAsync_v2", "cuMemcpyHtoD_v2", "cuMemcpyDtoH_v2"]);
        let products = per.of(&["cublas:product"]);
        eprintln!(
            "{config} {overrides:?}: per step {:.1} kernels + {products:.1} cuBLAS products, {copies:.1} copies, \
             {host_waits:.1} host waits, {events:.1} event calls, {allocations} allocations; no host allocation",
            per.kernels()
        );
        let all: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {:.2}", *v as f64 / STEPS as f64)).collect();
        eprintln!("  {}", all.join(", "));
        assert_eq!(allocations + frees, 0.0, "{config} {overrides:?}: device memory allocated or freed each step");
        // With the train split on the device the rows' indices go up instead of the rows (as many uploads as
        // the same run without it) and one gather kernel writes the input.
        let up = per.of(&["cuMemcpyHtoDAsync_v2"]);
        if overrides.is_empty() && config.ends_with("digits_mlp.yaml") {
            uploads_uncached = up;
        }
        if overrides.contains(&"run.device_cache=true") {
            let gathers = per.of(&["kernel:embedding_forward_f32"]);
            assert_eq!((gathers, up), (1.0, uploads_uncached), "{overrides:?}: gathers and uploads per step");
        }
        // cuBLAS calls must not grow with the batch (a product per sample, as the convolution's weight gradient
        // and attention once made, costs a launch per sample on a GPU): the same step at half the batch makes
        // as many.
        if let Some(b) = overrides.iter().find_map(|o| o.strip_prefix("run.batch=")) {
            let half = (b.parse::<usize>().unwrap() / 2).to_string();
            let smaller: Vec<String> = overrides
                .iter()
                .map(|o| {
                    if o.starts_with("run.batch=") || o.starts_with("run.nbs=") {
                        format!("{}={half}", o.split('=').next().unwrap())
                    } else {
                        o.to_string()
                    }
                })
                .collect();
            let smaller: Vec<&str> = smaller.iter().map(String::as_str).collect();
            let (_, c) = measure(config, &smaller);
            let c = c.expect("counted above");
            let half_products = PerStep(&c).of(&["cublas:product"]);
            eprintln!("  at batch {half}: {half_products:.1} cuBLAS products per step");
            assert_eq!(half_products, products, "{config}: cuBLAS products per step depend on the batch size");
        }
        // `train_step` runs one micro-batch. Every task here computes its loss on the device and never waits
        // for it (the losses come down when a record reads the meters, here never). f16 loss scaling keeps its
        // scale and its skip decision on the device too (torch's fused-optimizer path, not `.item()` every
        // step): the host reads each window's found-inf flag a window later, from page-locked memory (one
        // event wait on a copy the device finished while the next step's forward and backward were issued).
        assert_eq!(host_waits, 0.0, "{config} {overrides:?}: {host_waits} host waits per step");
        let f16 = overrides.contains(&"run.amp=f16");
        let event_waits = per.of(&["cuEventSynchronize"]);
        if overrides.is_empty() && config.ends_with("digits_mlp.yaml") {
            event_waits_plain = event_waits;
        }
        if f16 {
            // The unscale and check, the scale's update, the skip; the output gradient is scaled inside the
            // device loss's own kernel (before it is rounded into the half logits), not by a launch of its own.
            let scaling = per.of(&[
                "kernel:loss_scale_mul_f32",
                "kernel:loss_scale_unscale_check_f32",
                "kernel:loss_scale_update",
                "kernel:loss_scale_skip_segments",
            ]);
            assert_eq!(scaling, 3.0, "{overrides:?}: loss-scaling launches per step");
            // The flag's read: its copy's event, and cudarc's no-op wait on the page-locked slice's own.
            assert_eq!(event_waits, event_waits_plain + 2.0, "{overrides:?}: event waits per step (the flag's read)");
        }
        let targets = if config.contains("autoencoder") { 0.0 } else { 2.0 };
        // f16: cudarc's no-op stream wait before the flag's copy into page-locked memory, the copy's event
        // record, and the two waits of the flag's read a window later.
        let flag = if f16 { 4.0 } else { 0.0 };
        assert!(events <= 7.0 + targets + flag, "{config} {overrides:?}: {events} event calls per step");
    }
}
