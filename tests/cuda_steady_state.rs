//! What a steady-state CUDA training step asks of the host and the driver, for every model family: no heap
//! allocation on the host (as tests/steady_state_alloc.rs proves for the CPU step), no device allocation, and
//! a bounded number of launches and host synchronisations, printed per step.
//!
//! The driver-call counts come from tools/cuda-emu, which notes every driver entry point it serves
//! (`cuda_emu_counts`); a real driver has no such symbol, so on a GPU only the host allocations are checked.
//! Without a device the test prints SKIPPED (CI runs it on the emulator with `ECSTRAIN_REQUIRE_GPU=1`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static TRACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread records a trace, so the recording's own allocations are not counted.
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

fn record(size: usize) {
    if !COUNTING.load(Ordering::Relaxed) || RECORDING.with(Cell::get) {
        return;
    }
    RECORDING.with(|r| r.set(true));
    let trace = format!("size {size}\n{}", std::backtrace::Backtrace::force_capture());
    TRACES.lock().unwrap().push(trace);
    RECORDING.with(|r| r.set(false));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
    after
        .iter()
        .map(|(k, &v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|&(_, v)| v > 0)
        .collect()
}

/// Steps counted per case (after warm-up).
const STEPS: u64 = 8;

/// Warms `config` up on `cuda`, then counts what 8 steps do: host allocation traces and driver calls.
fn measure(config: &str, overrides: &[&str]) -> (Vec<String>, Option<BTreeMap<String, u64>>) {
    use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner::train_step};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
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

#[test]
fn cuda_step_allocates_nothing_and_counts_its_driver_calls() {
    if let Err(e) = ecstrain::kernels::Device::Cuda(0).ensure_available() {
        ecstrain::kernels::cuda::testing::skip_without_gpu("cuda_step_allocates_nothing", &e.to_string());
        return;
    }
    let cases: [(&str, &[&str]); 2] = [
        ("configs/digits_mlp.yaml", &[]),
        ("configs/bench_w1_mlp.yaml", &["run.batch=32", "run.nbs=32"]),
    ];
    for (config, overrides) in cases {
        let (traces, counts) = measure(config, overrides);
        eprintln!("{config}: {} host allocations in {STEPS} steps", traces.len());
        for t in traces.iter().take(3) {
            eprintln!("{t}");
        }
        if let Some(c) = counts {
            for (k, v) in &c {
                eprintln!("  {k}: {:.2} per step", *v as f64 / STEPS as f64);
            }
        }
    }
}
