//! No allocation in the steady-state training step: after warm-up, a training step (load, forward, loss,
//! backward, optimizer, schedule, log plumbing) makes no heap allocation of its own, for every model family:
//! the W1 MLP, the W2 CNN, the W3 ViT (attention, layer norm, tokens), the digits ResNet (batch norm, residual
//! adds) and the digits VQ-VAE (quantiser, upsampling, the reconstruction task with PSNR / SSIM), and for every
//! registered optimizer (on the digits MLP), and with the background loader (`run.workers`), whose threads
//! count too. A counting global allocator records a backtrace for every allocation in the measured window.
//!
//! Known exceptions, asserted rather than hidden: the `gemm` crate (0.19) allocates its packing workspace
//! inside every matrix product and offers no way to pass one in; those allocations (about 20 per W1 step)
//! are recognised by `gemm_common` in their backtrace. And rayon's global job queue (a crossbeam `Injector`)
//! allocates one block per 63 jobs pushed from outside the pool (amortised, a few per hundred parallel
//! calls), recognised by `crossbeam_deque::deque::Block`. Anything else fails the test.

mod alloc_counter;

use std::sync::atomic::Ordering;

use alloc_counter::{COUNTING, TRACES};

/// Two data-parallel ranks simulated in one process: both hold the same values, so an all-reduce doubles them
/// (without allocating). Lets the data-parallel step (the all-reduce overlapped with the backward, on its own
/// thread) run under the counting allocator.
struct Loopback;

impl ecstrain::systems::parallel::Collective for Loopback {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        2
    }
    fn all_reduce_sum_f32(&self, data: &mut [f32]) {
        data.iter_mut().for_each(|x| *x *= 2.0);
    }
    fn all_reduce_sum_f64(&self, data: &mut [f64]) {
        data.iter_mut().for_each(|x| *x *= 2.0);
    }
    fn broadcast_f32(&self, _data: &mut [f32]) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn backend(&self) -> String {
        "loopback".into()
    }
}

/// Warms `config` up, then counts the allocations of 8 steps; returns the traces outside gemm and the total.
fn allocations(config: &str, overrides: &[&str]) -> (Vec<String>, usize) {
    allocations_with(config, overrides, false)
}

/// [`allocations`], as rank 0 of two [`Loopback`] ranks when `data_parallel`.
fn allocations_with(config: &str, overrides: &[&str], data_parallel: bool) -> (Vec<String>, usize) {
    use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner::train_step};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    // Log records (every log_interval steps) build a metric map; keep them out of the measured window.
    let mut sets = vec!["run.log_interval=1000000".to_string()];
    sets.extend(overrides.iter().map(|s| s.to_string()));
    let loaded = load_config(&root.join(config), &sets).unwrap();
    let mut app = default_app();
    if data_parallel {
        let comm = ecstrain::systems::parallel::Comm(std::sync::Arc::new(Loopback));
        app.world.insert_resource(comm);
    }
    let mut app = assemble(app, loaded, true).unwrap().app;
    let sink = std::fs::File::create("/dev/null").unwrap();
    app.world.insert_resource(ecstrain::systems::logging::jsonl::JsonlLog(std::io::BufWriter::new(sink)));
    for _ in 0..5 {
        train_step(&mut app);
    }
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..8 {
        train_step(&mut app);
    }
    COUNTING.store(false, Ordering::SeqCst);
    let traces = std::mem::take(&mut *TRACES.lock().unwrap());
    let total = traces.len();
    // By symbol, or by source file: with line tables only, inlined frames carry short names
    // (`new<rayon_core::job::JobRef>`) but still their crate's path.
    let exempt = |t: &String| {
        t.contains("gemm_common")
            || t.contains("/gemm-common-")
            || t.contains("crossbeam_deque::deque::Block")
            || t.contains("/crossbeam-deque-")
    };
    (traces.into_iter().filter(|t| !exempt(t)).collect(), total)
}

#[test]
fn training_step_does_not_allocate_after_warm_up() {
    let cases: [(&str, &[&str]); 7] = [
        ("configs/bench_w1_mlp.yaml", &["datasets.synthetic.train_samples=2048"]),
        ("configs/bench_w2_cnn.yaml", &["datasets.synthetic.train_samples=2048", "run.batch=32", "run.nbs=32"]),
        ("configs/bench_w3_vit.yaml", &["datasets.synthetic.train_samples=2048", "run.batch=16", "run.nbs=16"]),
        ("configs/digits_resnet.yaml", &[]),
        ("configs/digits_autoencoder.yaml", &[]),
        // The background loader: its producer thread and pool recycle buffers too (counted: the allocator is
        // global). W1's 16 batches per pass make the producer wrap into the next pass inside the window.
        ("configs/digits_mlp.yaml", &["run.workers=2"]),
        ("configs/bench_w1_mlp.yaml", &["datasets.synthetic.train_samples=2048", "run.workers=2", "run.prefetch=3"]),
    ];
    // One test runs them in turn: the counting allocator is global to the process.
    for (config, overrides) in cases {
        let (ours, total) = allocations(config, overrides);
        assert!(
            ours.is_empty(),
            "{config}: {} allocations outside gemm / rayon's queue in 8 steps; first:\n{}",
            ours.len(),
            ours[0]
        );
        eprintln!("{config}: {total} allocations in 8 steps, all in gemm's packing workspace or rayon's queue");
    }
    // A data-parallel rank: the gradient all-reduce overlapped with the backward (small buckets, so several go
    // to the communication thread each step), and the one all-reduce after the backward.
    for bucket in ["run.bucket_mb=0.05", "run.bucket_mb=0"] {
        let (ours, total) =
            allocations_with("configs/bench_w1_mlp.yaml", &["datasets.synthetic.train_samples=8192", bucket], true);
        assert!(ours.is_empty(), "data parallel, {bucket}: {} allocations; first:\n{}", ours.len(), ours[0]);
        eprintln!("W1 data parallel, {bucket}: {total} allocations in 8 steps, all in gemm or rayon's queue");
    }
    // Every optimizer, with its optional state buffers switched on.
    let optimizers: [&[&str]; 9] = [
        &["run.optimizer=SGD", "run.nesterov=true"],
        &["run.optimizer=Adam", "run.amsgrad=true"],
        &["run.optimizer=AdamW", "run.amsgrad=true"],
        &["run.optimizer=Adamax"],
        &["run.optimizer=NAdam", "run.decoupled_weight_decay=true"],
        &["run.optimizer=RAdam"],
        &["run.optimizer=RMSProp", "run.centered=true"],
        &["run.optimizer=Adagrad", "run.lr_decay=0.01"],
        &["run.optimizer=Adadelta"],
    ];
    for sets in optimizers {
        let (ours, total) = allocations("configs/digits_mlp.yaml", sets);
        assert!(
            ours.is_empty(),
            "{sets:?}: {} allocations outside gemm / rayon's queue; first:\n{}",
            ours.len(),
            ours[0]
        );
        eprintln!("digits MLP {sets:?}: {total} allocations in 8 steps, all in gemm or rayon's queue");
    }
}
