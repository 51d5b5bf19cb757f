//! Assembly of a `run.device: cuda` run: what the CUDA path supports (checked before any data is read where
//! the config alone decides, and once the graph is built for its ops), and the device state it trains on.

use std::sync::Arc;

use bevy_ecs::prelude::*;
use ecstrain_components::{AmpMode, Buffers, Frozen, Graph, LossScaler, OptimizerState, ParamSlice, Params};
use ecstrain_kernels::cuda::memory::{human_bytes, out_of_memory_advice};
use ecstrain_kernels::cuda::{Gpu, GpuError, MatmulPrecision};
use ecstrain_kernels::Device;
use ecstrain_systems::data::{Dataset, TrainLoader};
use ecstrain_systems::device::amp::DeviceScaler;
use ecstrain_systems::device::loss::{DeviceLoss, LossKind};
use ecstrain_systems::device::state::GpuState;
use ecstrain_systems::device::{support, ComputeDevice, DeviceMemory};
use ecstrain_systems::tasks::classification::ClassificationTask;
use ecstrain_systems::tasks::embedding::EmbeddingTask;
use ecstrain_systems::tasks::reconstruction::{ReconLoss, ReconTarget, ReconstructionTask};
use ecstrain_systems::tasks::regression::RegressionTask;

use crate::config::RunSection;

/// Config-level checks of a CUDA run: features whose device path is not wired yet are an error, not a
/// silent fallback.
pub fn check_run(r: &RunSection) -> Result<(), String> {
    let opt = r.optimizer.to_ascii_lowercase();
    if !support::OPTIMIZERS.contains(&opt.as_str()) {
        return Err(format!(
            "run.optimizer: `{}` has no fused CUDA update yet; on run.device: cuda the valid choices are {}",
            r.optimizer,
            support::OPTIMIZERS.join(", ")
        ));
    }
    let unsupported = [(r.qat, "run.qat"), (r.profile, "run.profile")];
    for (on, key) in unsupported {
        if on {
            return Err(format!("{key}: not yet available with run.device: cuda; turn it off or use run.device: cpu"));
        }
    }
    Ok(())
}

/// Opens the device and puts the run's state on it: inserts [`ComputeDevice`] and [`GpuState`], and
/// [`DeviceLoss`] where the task's loss runs on the device. With
/// `run.amp` the device's matrix products autocast to f16 / bf16 (f32 master weights and accumulation); with
/// `run.tf32` (and no autocast) they run on TF32 tensor cores. Returns the start-up notices: the device and
/// the form its kernels take ([`device_notice`]), what autocast stores in half
/// ([`GpuActivations::autocast_notice`](ecstrain_systems::device::acts::GpuActivations::autocast_notice)),
/// and the train split kept on the device (`run.device_cache`) if it is.
pub fn install(
    world: &mut World,
    device: Device,
    capacity: usize,
    amp: AmpMode,
    tf32: bool,
) -> Result<Vec<String>, String> {
    let Device::Cuda(ordinal) = device else { return Ok(Vec::new()) };
    support::check_graph(world.resource::<Graph>()).map_err(|m| format!("run.device: {m}"))?;
    let gpu = Arc::new(Gpu::open(ordinal).map_err(|e| format!("run.device: {e}"))?);
    let mut notices = vec![device_notice(&gpu)];
    gpu.set_matmul_precision(match amp {
        AmpMode::Off if tf32 => MatmulPrecision::Tf32,
        AmpMode::Off => MatmulPrecision::F32,
        AmpMode::F16 => MatmulPrecision::F16,
        AmpMode::Bf16 => MatmulPrecision::Bf16,
    });
    let trainable = world.query_filtered::<&ParamSlice, Without<Frozen>>().iter(world).count();
    let gpu_for_errors = gpu.clone();
    let state = GpuState::new(
        gpu,
        world.resource::<Graph>(),
        world.resource::<Params>(),
        world.resource::<Buffers>(),
        world.resource::<OptimizerState>(),
        trainable,
        capacity,
    )
    .map_err(|e| setup_error(&gpu_for_errors, "the run's state", e, capacity, amp))?;
    notices.extend(state.acts.autocast_notice());
    let mut state = state;
    if world.contains_resource::<ecstrain_systems::optim::clip::GradClip>() {
        let ranges: Vec<_> =
            world.query_filtered::<&ParamSlice, Without<Frozen>>().iter(world).map(|s| s.range()).collect();
        state
            .enable_clipping(&ranges)
            .map_err(|e| setup_error(&gpu_for_errors, "gradient clipping's buffers", e, capacity, amp))?;
    }
    if world.contains_resource::<ecstrain_components::EmaWeights>() {
        let params = world.query::<&ParamSlice>().iter(world).count();
        state
            .enable_ema(world.resource::<Buffers>(), params)
            .map_err(|e| setup_error(&gpu_for_errors, "the EMA weights", e, capacity, amp))?;
    }
    // `run.device_cache`: the train loader was built without input rows (assemble::build_loaders); the rows
    // go up once, as the pipeline makes them (no random processor, so the same in every epoch).
    let train = world.resource::<TrainLoader>().0.pipeline().clone();
    if !world.resource::<TrainLoader>().0.fills_inputs() {
        let len: usize = train.sample_shape().iter().product();
        let gpu = state.gpu.clone();
        let mut indices = Vec::new();
        let fill = |first: usize, rows: &mut [f32]| {
            indices.clear();
            indices.extend(first..first + rows.len() / len.max(1));
            train.fill_rows(&indices, 0, rows)
        };
        let bytes = state
            .upload
            .enable_device_rows(&gpu, train.len(), len, capacity, fill)
            .map_err(|m| format!("run.device_cache: cuda:{ordinal}: {m}"))?;
        notices.push(format!(
            "train split on cuda:{ordinal}: {} samples, {:.1} MiB (run.device_cache)",
            train.len(),
            bytes as f64 / 1048576.0
        ));
    }
    // The built-in tasks' losses run on the device (no host wait per step) where a device kernel exists.
    if let Some(kind) = device_loss_kind(world) {
        let dense = match &kind {
            LossKind::Classification { .. } => None,
            LossKind::Regression { outputs } => Some(*outputs),
            LossKind::Embedding { dim, .. } => Some(*dim),
            LossKind::Reconstruction { numel, from_input, .. } => (!from_input).then_some(*numel),
        };
        let gpu = state.gpu.clone();
        let planned = match dense {
            None if matches!(kind, LossKind::Classification { .. }) => state.upload.enable_labels(&gpu, capacity),
            None => Ok(()),
            Some(len) => state.upload.enable_dense(&gpu, capacity * len),
        }
        .and_then(|()| DeviceLoss::new(&gpu, kind, capacity));
        let dl = planned.map_err(|e| setup_error(&gpu, "the loss state", e, capacity, amp))?;
        world.insert_resource(dl);
    }
    // f16 loss scaling keeps its scale and decisions on the device (the scale goes up with the arenas).
    if world.contains_resource::<LossScaler>() {
        let scalars = world.resource::<OptimizerState>().scalars.len();
        let scaler = DeviceScaler::new(&state.gpu, scalars)
            .map_err(|e| setup_error(&state.gpu, "the loss-scale state", e, capacity, amp))?;
        world.insert_resource(scaler);
    }
    // A first step's worth of work now: what grows on first use grows here, so a batch that does not fit
    // fails before anything is written.
    let graph = world.resource::<Graph>();
    state.warm_up(graph).map_err(|e| setup_error(&gpu_for_errors, "a first step's buffers", e, capacity, amp))?;
    if let Ok(m) = state.gpu.memory() {
        notices.push(format!(
            "cuda:{ordinal}: the run holds {} on the device ({} of {} free)",
            human_bytes(m.held),
            human_bytes(m.free),
            human_bytes(m.total)
        ));
    }
    world.insert_resource(DeviceMemory(state.gpu.clone()));
    world.insert_resource(state);
    world.insert_resource(ComputeDevice(device));
    Ok(notices)
}

/// A failure to set the run up on the device. Running out of memory is the batch's fault, not the device's:
/// the message names `run.batch`, says how full the device is, and which keys make the run smaller.
fn setup_error(gpu: &Gpu, what: &str, e: GpuError, batch: usize, amp: AmpMode) -> String {
    let ordinal = gpu.info.ordinal;
    if e.is_out_of_memory() {
        return format!(
            "run.batch: a batch of {batch} does not fit on cuda:{ordinal}: out of memory while allocating {what}: \
             {}; {}",
            gpu.memory_report(),
            out_of_memory_advice(batch, amp != AmpMode::Off)
        );
    }
    format!("run.device: cuda:{ordinal}: could not allocate {what}: {e}")
}

/// The start-up line naming the GPU and how its kernels were built, e.g. `cuda:0: NVIDIA H100 80GB HBM3
/// (compute capability 9.0, 79.1 GiB, 132 SMs); kernels: sm_90 machine code from NVRTC 12.9`, or `compute_121
/// PTX from NVRTC 12.9, compiled by the driver` for a GPU newer than NVRTC knows.
pub fn device_notice(gpu: &Gpu) -> String {
    use ecstrain_kernels::cuda::compile::{nvrtc_version, Target};
    let i = &gpu.info;
    let (major, minor) = i.compute_capability;
    let nvrtc = nvrtc_version().map(|(a, b)| format!("NVRTC {a}.{b}")).unwrap_or_else(|| "NVRTC".into());
    let kernels = match Target::for_device(i.compute_capability) {
        Ok(t @ Target::Cubin(_)) => format!("{} machine code from {nvrtc}", t.arch()),
        Ok(t @ Target::Ptx(_)) => format!("{} PTX from {nvrtc}, compiled by the driver", t.arch()),
        Err(e) => e.to_string(),
    };
    format!(
        "cuda:{}: {} (compute capability {major}.{minor}, {:.1} GiB, {} SMs); kernels: {kernels}",
        i.ordinal,
        i.name,
        i.total_mem as f64 / (1u64 << 30) as f64,
        i.multiprocessors
    )
}

/// The device-side loss for the run's task, if it has one: classification, regression and embedding on a
/// model without VQ layers (their host tasks ignore the VQ losses), and reconstruction.
fn device_loss_kind(world: &World) -> Option<LossKind> {
    let graph = world.resource::<Graph>();
    let vq = LossKind::vq_layers(graph);
    if let Some(task) = world.get_resource::<ClassificationTask>() {
        let kind = LossKind::Classification { classes: task.num_classes, options: task.options.clone() };
        return vq.is_empty().then_some(kind);
    }
    if let Some(task) = world.get_resource::<RegressionTask>() {
        return vq.is_empty().then_some(LossKind::Regression { outputs: task.outputs });
    }
    if let Some(task) = world.get_resource::<EmbeddingTask>() {
        return vq.is_empty().then_some(LossKind::Embedding { dim: task.dim, eps: task.eps });
    }
    let task = world.get_resource::<ReconstructionTask>()?;
    Some(LossKind::Reconstruction {
        l1: task.loss == ReconLoss::L1,
        numel: task.numel,
        from_input: task.target == ReconTarget::Input,
        recon_weight: task.recon_weight,
        vq_weight: task.vq_weight,
        vq,
    })
}

/// `engine bench --device cuda[:N]`: the device kernels beside the measured copy bandwidth and cuBLAS rate.
pub fn bench(device: Device) -> Result<(), String> {
    let Device::Cuda(ordinal) = device else { return Ok(()) };
    let gpu = Gpu::open(ordinal).map_err(|e| e.to_string())?;
    println!(
        "device cuda:{ordinal} ({}, compute {}.{}, {} SMs, {:.1} GiB)",
        gpu.info.name,
        gpu.info.compute_capability.0,
        gpu.info.compute_capability.1,
        gpu.info.multiprocessors,
        gpu.info.total_mem as f64 / (1u64 << 30) as f64
    );
    let rows = ecstrain_kernels::cuda::bench::run_benchmarks(&gpu).map_err(|e| e.to_string())?;
    print!("{}", ecstrain_kernels::cuda::bench::format_table(&rows));
    print!("{}", ecstrain_kernels::cuda::bench::target_report(&rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_section(yaml: &str) -> RunSection {
        crate::config::load::from_yaml(yaml).expect("valid run section")
    }

    /// Host-only features are refused on cuda with the key named, not silently ignored.
    #[test]
    fn host_only_features_are_refused_by_key() {
        assert!(check_run(&run_section("optimizer: AdamW\n")).is_ok());
        // The model EMA and mixed precision run on the device.
        for on in ["ema: true", "amp: bf16", "amp: f16"] {
            assert!(check_run(&run_section(&format!("optimizer: AdamW\n{on}\n"))).is_ok(), "{on}");
        }
        for key in ["qat", "profile"] {
            let m = check_run(&run_section(&format!("optimizer: AdamW\n{key}: true\n"))).unwrap_err();
            assert!(m.starts_with(&format!("run.{key}: not yet available with run.device: cuda")), "{m}");
        }
    }
}
