//! The device-side loss in process, against the host task's path on the same device: its ring on its own
//! (when more micro-batches pass than it holds, it flushes itself into the training meters and loses
//! nothing), and f16 loss scaling, which multiplies the output gradient on the device whichever path wrote
//! it, and the VQ layers' auxiliary losses too. Without a CUDA device the tests print SKIPPED (CI runs them on tools/cuda-emu with
//! `ECSTRAIN_REQUIRE_GPU=1`).

mod common;

use common::app_of;
use ecstrain::engine::runner::train_step;
use ecstrain::kernels::cuda::testing::no_gpu;
use ecstrain::systems::device::loss::{gpu_flush_train_loss, DeviceLoss};
use ecstrain::systems::device::state::GpuState;

/// The digits MLP on `device`, assembled in process (no log record before step 10^6).
fn app(device: &str) -> ecstrain::engine::app::App {
    app_with(device, &[])
}

/// [`app`] with more `--set` overrides.
fn app_with(device: &str, more: &[&str]) -> ecstrain::engine::app::App {
    app_of("configs/digits_mlp.yaml", device, more)
}

/// The training loss meter's (weighted sum, samples).
fn loss_meter(app: &ecstrain::engine::app::App) -> (f64, f64) {
    let m = app.world.resource::<ecstrain::components::Metrics>();
    m.train.get("loss").map_or((0.0, 0.0), |m| (m.sum, m.count))
}

#[test]
fn device_loss_ring_on_cuda_flushes_itself_when_full() {
    if no_gpu("device_loss_ring_on_cuda_flushes_itself_when_full") {
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

/// f16 loss scaling on CUDA from 2^40: the device multiplies the output gradient by its scale whether the
/// device loss wrote it or the host task did (a plugin's task keeps the host path), so both paths overflow,
/// skip and back off in the same windows and end with the same scaler state and step count, and weights
/// within the two losses' rounding (the device's softmax uses CUDA's `expf`).
#[test]
fn f16_loss_scaling_on_cuda_scales_the_host_tasks_gradient_too() {
    if no_gpu("f16_loss_scaling_on_cuda_scales_the_host_tasks_gradient_too") {
        return;
    }
    use ecstrain::components::{LossScaler, OptimizerState};
    use ecstrain::systems::device::amp::gpu_settle_loss_scale;
    use ecstrain::systems::device::systems::gpu_sync_down;
    const STEPS: usize = 40;
    let sets = ["run.amp=f16", "run.amp_init_scale=1099511627776", "run.amp_growth_interval=4"];
    let mut device_loss = app_with("cuda", &sets);
    let mut host_loss = app_with("cuda", &sets);
    host_loss.world.remove_resource::<DeviceLoss>();
    let mut ends = Vec::new();
    for app in [&mut device_loss, &mut host_loss] {
        for _ in 0..STEPS {
            train_step(app);
        }
        let failure = app.world.resource::<ecstrain::components::RunFailure>().0.clone();
        assert!(failure.is_none(), "the CUDA step failed: {failure:?}");
        app.world.run_system_cached(gpu_settle_loss_scale).unwrap();
        app.world.run_system_cached(gpu_sync_down).unwrap();
        let scaler = app.world.resource::<LossScaler>().clone();
        let step = app.world.resource::<OptimizerState>().step;
        let params = app.world.resource::<ecstrain::components::Params>().0.data.clone();
        ends.push((scaler, step, params));
    }
    let [(sd, td, pd), (sh, th, ph)] = [ends.remove(0), ends.remove(0)];
    eprintln!("after {STEPS} steps: device loss {sd:?}, {td} steps; host loss {sh:?}, {th} steps");
    assert!(sd.skipped >= 10 && (sd.skipped as usize) < STEPS, "{} of {STEPS} windows skipped", sd.skipped);
    assert_eq!((sd.scale, sd.good_steps, sd.skipped), (sh.scale, sh.good_steps, sh.skipped), "scaler states");
    assert_eq!((td, th), (STEPS as u64 - sd.skipped, STEPS as u64 - sh.skipped), "optimizer steps");
    let diff = pd.iter().zip(&ph).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff <= 1e-4, "weights {diff} apart");
}

/// Under f16 loss scaling the VQ layers' auxiliary losses (codebook and commitment) are scaled on the device
/// with the output gradient, so after the unscale their gradients have their true size. With plain SGD (whose
/// steps scale with the gradient, unlike Adam's) the VQ-VAE's codebook moves as far in 10 steps under f16 as
/// in f32, within the half-precision products' rounding; an unscaled auxiliary weight would leave it at
/// 1/65536 of that.
#[test]
fn f16_loss_scaling_on_cuda_scales_the_vq_losses_too() {
    if no_gpu("f16_loss_scaling_on_cuda_scales_the_vq_losses_too") {
        return;
    }
    use ecstrain::components::{ParamInfo, ParamSlice, Params};
    use ecstrain::systems::device::systems::gpu_sync_down;
    const STEPS: usize = 10;
    let mut moved = Vec::new();
    for amp in ["run.amp=off", "run.amp=f16"] {
        let sets = [amp, "run.optimizer=SGD", "run.lr0=0.5", "run.warmup_epochs=0", "run.nbs=64"];
        let mut app = app_of("configs/digits_autoencoder.yaml", "cuda", &sets);
        let slice = {
            let mut q = app.world.query::<(&ParamInfo, &ParamSlice)>();
            let found = q.iter(&app.world).find(|(i, _)| i.name == "quantizer.embedding.weight");
            *found.expect("the VQ-VAE has a codebook").1
        };
        let before = app.world.resource::<Params>().0.get(slice).to_vec();
        for _ in 0..STEPS {
            train_step(&mut app);
        }
        let failure = app.world.resource::<ecstrain::components::RunFailure>().0.clone();
        assert!(failure.is_none(), "{amp}: the CUDA step failed: {failure:?}");
        app.world.run_system_cached(gpu_sync_down).unwrap();
        let after = app.world.resource::<Params>().0.get(slice).to_vec();
        let dist = before.iter().zip(&after).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        eprintln!("{amp}: the codebook moved {dist:e} in {STEPS} steps");
        moved.push(dist);
    }
    assert!(moved[0] > 0.0, "the f32 run's codebook did not move");
    let ratio = moved[1] / moved[0];
    assert!((0.8..1.25).contains(&ratio), "f16 moved the codebook {ratio} times as far as f32");
}
