//! The device side of a data-parallel CUDA run: which GPU each rank takes, and the device communicator
//! (NCCL with the `nccl` feature) set up once every rank has assembled.

use std::sync::Arc;

use bevy_ecs::prelude::*;
use ecstrain_kernels::Device;
use ecstrain_systems::parallel::Collective;

use crate::launch::LaunchEnv;

/// This process's place in the run (inserted by `engine` next to the communicator).
#[derive(Resource, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch(pub LaunchEnv);

/// The GPU a rank computes on: a plain `cuda` (or `gpu`) in a data-parallel run means `cuda:<local rank>`, one
/// GPU per process on each node as torchrun and srun's GPU binding lay them out; an explicit `cuda:N` is
/// taken as written.
pub fn rank_device(spec: &str, parsed: Device, env: LaunchEnv) -> Device {
    let plain = matches!(spec.trim().to_ascii_lowercase().as_str(), "cuda" | "gpu");
    match parsed {
        Device::Cuda(_) if plain && env.world > 1 => Device::Cuda(env.local_rank),
        d => d,
    }
}

/// Every rank's `ok`, shared: the ranks where it is false (empty when all are fine). One collective call.
fn ranks_failing(comm: &dyn Collective, ok: bool) -> Vec<usize> {
    let mut flags = vec![0.0f64; comm.world()];
    flags[comm.rank()] = f64::from(u8::from(!ok));
    comm.all_reduce_sum_f64(&mut flags);
    flags.iter().enumerate().filter(|(_, &f)| f > 0.0).map(|(r, _)| r).collect()
}

/// Bytes through a float broadcast: each byte rides in the bit pattern of one f32 (a broadcast copies bits).
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
fn broadcast_bytes(comm: &dyn Collective, bytes: &mut [u8]) {
    let mut carrier: Vec<f32> = bytes.iter().map(|&b| f32::from_bits(u32::from(b))).collect();
    comm.broadcast_f32(&mut carrier);
    for (b, f) in bytes.iter_mut().zip(carrier) {
        *b = f.to_bits() as u8;
    }
}

/// After every rank assembled, in a data-parallel CUDA run: connects the device communicator and returns a
/// note saying how gradients are averaged; `None` for any other run. Collective: every rank calls it, and a
/// failure on any rank is an error on all of them (exit 2 together).
pub fn connect(comm: &Arc<dyn Collective>, world: &mut World) -> Result<Option<String>, String> {
    if comm.world() == 1 || !world.contains_resource::<ecstrain_systems::device::state::GpuState>() {
        return Ok(None);
    }
    connect_gpus(comm.as_ref(), world).map(Some)
}

#[cfg(feature = "nccl")]
fn connect_gpus(comm: &dyn Collective, world: &mut World) -> Result<String, String> {
    use ecstrain_kernels::cuda::nccl::{nccl_present, unique_id, NcclComm, ID_BYTES};
    use ecstrain_systems::device::reduce::DeviceComm;

    let bad = ranks_failing(comm, nccl_present());
    if !bad.is_empty() {
        return Err(format!(
            "run.device: NCCL (libnccl.so.2) is missing on rank(s) {bad:?}: install it (pip nvidia-nccl-cu12, or the CUDA toolkit's) and put it on LD_LIBRARY_PATH"
        ));
    }
    // Rank 0 draws the id; a failure there is sent as an all-zero id with the flag below.
    let mut id = [0u8; ID_BYTES];
    let drawn = if comm.rank() == 0 { unique_id().map(|v| id = v) } else { Ok(()) };
    let bad = ranks_failing(comm, drawn.is_ok());
    if !bad.is_empty() {
        return Err(format!(
            "run.device: rank 0 could not create the NCCL id: {}",
            drawn.err().map_or_else(String::new, |e| e.to_string())
        ));
    }
    broadcast_bytes(comm, &mut id);
    let gpu = world.resource::<ecstrain_systems::device::state::GpuState>().gpu.clone();
    let nccl = NcclComm::init(&gpu, comm.rank(), comm.world(), &id).map_err(|e| format!("run.device: {e}"))?;
    world.insert_resource(DeviceComm(Arc::new(Nccl(nccl))));
    Ok(format!("data parallel on cuda:{}: gradients averaged on the device with NCCL", gpu.info.ordinal))
}

#[cfg(not(feature = "nccl"))]
fn connect_gpus(comm: &dyn Collective, world: &mut World) -> Result<String, String> {
    // No device engine: the Reduce system stages the gradients through host memory over the host one.
    let _ = ranks_failing(comm, true);
    let ordinal = world.resource::<ecstrain_systems::device::state::GpuState>().gpu.info.ordinal;
    Ok(format!(
        "data parallel on cuda:{ordinal}: gradients staged through host memory over {} (build with --features nccl for a device all-reduce)",
        comm.backend()
    ))
}

/// NCCL as the systems' device communicator.
#[cfg(feature = "nccl")]
struct Nccl(ecstrain_kernels::cuda::nccl::NcclComm);

#[cfg(feature = "nccl")]
impl ecstrain_systems::device::reduce::DeviceCollective for Nccl {
    fn average_f32(
        &self,
        buf: &mut ecstrain_kernels::cuda::cudarc::driver::CudaViewMut<f32>,
    ) -> Result<(), ecstrain_kernels::cuda::GpuError> {
        self.0.average_in_place(buf)
    }
    fn join(&self) -> Result<(), ecstrain_kernels::cuda::GpuError> {
        self.0.join()
    }
    fn backend(&self) -> String {
        format!("NCCL (rank {} of {})", self.0.rank(), self.0.world())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecstrain_systems::parallel::SingleProcess;

    #[test]
    fn plain_cuda_takes_the_local_rank_in_a_data_parallel_run() {
        let env = LaunchEnv { rank: 3, world: 4, local_rank: 1, launcher: "mpirun" };
        assert_eq!(rank_device("cuda", Device::Cuda(0), env), Device::Cuda(1));
        assert_eq!(rank_device(" GPU ", Device::Cuda(0), env), Device::Cuda(1));
        assert_eq!(rank_device("cuda:0", Device::Cuda(0), env), Device::Cuda(0), "explicit ordinal kept");
        assert_eq!(rank_device("cpu", Device::Cpu, env), Device::Cpu);
        assert_eq!(rank_device("cuda", Device::Cuda(0), LaunchEnv::SINGLE), Device::Cuda(0));
    }

    #[test]
    fn bytes_survive_the_float_carrier() {
        // Every byte value, including those whose f32 bit patterns are subnormal.
        let mut all: Vec<u8> = (0..=255).collect();
        broadcast_bytes(&SingleProcess, &mut all);
        assert_eq!(all, (0..=255).collect::<Vec<u8>>());
        assert!(ranks_failing(&SingleProcess, true).is_empty());
        assert_eq!(ranks_failing(&SingleProcess, false), vec![0]);
    }
}
