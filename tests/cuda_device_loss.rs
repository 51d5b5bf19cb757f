//! The device-side loss's ring on its own: when more micro-batches pass than it holds, it flushes itself into
//! the training meters and loses nothing. Run in process with a ring of 3 rows against the CPU's host task
//! over the same 10 steps of the digits MLP. Without a CUDA device the test prints SKIPPED (CI runs it on
//! tools/cuda-emu with `ECSTRAIN_REQUIRE_GPU=1`).

use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner::train_step};
use ecstrain::systems::device::loss::{gpu_flush_train_loss, DeviceLoss};
use ecstrain::systems::device::state::GpuState;

/// The digits MLP on `device`, assembled in process (no log record before step 10^6).
fn app(device: &str) -> ecstrain::engine::app::App {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(&root).unwrap();
    let sets = ["run.log_interval=1000000".to_string(), format!("run.device={device}")];
    let loaded = load_config(&root.join("configs/digits_mlp.yaml"), &sets).unwrap();
    let mut app = assemble(default_app(), loaded, true).unwrap().app;
    let sink = std::fs::File::create("/dev/null").unwrap();
    app.world.insert_resource(ecstrain::systems::logging::jsonl::JsonlLog(std::io::BufWriter::new(sink)));
    app
}

/// The training loss meter's (weighted sum, samples).
fn loss_meter(app: &ecstrain::engine::app::App) -> (f64, f64) {
    let m = app.world.resource::<ecstrain::components::Metrics>();
    m.train.get("loss").map_or((0.0, 0.0), |m| (m.sum, m.count))
}

#[test]
fn device_loss_ring_on_cuda_flushes_itself_when_full() {
    if let Err(e) = ecstrain::kernels::Device::Cuda(0).ensure_available() {
        ecstrain::kernels::cuda::testing::skip_without_gpu(
            "device_loss_ring_on_cuda_flushes_itself_when_full",
            &e.to_string(),
        );
        return;
    }
    const STEPS: usize = 10;
    let mut cpu = app("cpu");
    for _ in 0..STEPS {
        train_step(&mut cpu);
    }
    let mut gpu = app("cuda");
    let (device, capacity) = {
        let g = gpu.world.resource::<GpuState>();
        (g.gpu.clone(), g.acts.capacity)
    };
    let kind = gpu.world.resource::<DeviceLoss>().kind().clone();
    gpu.world.insert_resource(DeviceLoss::with_ring(&device, kind, capacity, 3).unwrap());
    for _ in 0..STEPS {
        train_step(&mut gpu);
    }
    let failure = gpu.world.resource::<ecstrain::components::RunFailure>().0.clone();
    assert!(failure.is_none(), "the CUDA step failed: {failure:?}");
    // Steps 4, 7 and 10 each found the ring full and flushed it first: 9 micro-batches reached the meter, the
    // tenth is still on the device.
    let batch = capacity as f64;
    assert_eq!(gpu.world.resource::<DeviceLoss>().pending(), 1);
    assert_eq!(loss_meter(&gpu).1, 9.0 * batch, "samples in the meter after the ring's own flushes");
    gpu.world.run_system_cached(gpu_flush_train_loss).unwrap();
    assert_eq!(gpu.world.resource::<DeviceLoss>().pending(), 0);
    let ((sc, nc), (sg, ng)) = (loss_meter(&cpu), loss_meter(&gpu));
    eprintln!("after {STEPS} steps: loss meter cpu {sc} / {nc}, cuda {sg} / {ng}");
    assert_eq!(nc, ng, "samples counted");
    assert!((sc - sg).abs() <= 1e-5 * sc.abs(), "weighted loss sums: cpu {sc}, cuda {sg}");
}
