//! The shared GPU test of the fused optimizer kernels: several steps over one arena of segments with
//! different configurations and a frozen gap, compared with the CPU kernel bit for bit.
//!
//! The frozen gap (and every element the CPU leaves alone) holds NaN in the parameters, gradients and state:
//! the CPU never touches it, so the device result must keep those exact NaN bits; an element the kernel
//! wrongly updated shows up as different bits (device arithmetic on NaN yields the canonical NaN, not the
//! poison's payload).

use cudarc::driver::CudaSlice;

use crate::cuda::testing::{gpu_or_skip, test_seed};
use crate::cuda::{Gpu, Segment, SegmentTable};
use crate::rng::Rng;

/// Arena length: odd, not a multiple of the block, and larger than one block's grid-stride pass.
pub(crate) const N: usize = 70_001;

/// The updated ranges: odd sizes, a one-element parameter, and the frozen gap 50_001..61_007.
pub(crate) const RANGES: [(usize, usize); 4] = [(0, 30_011), (30_011, 50_000), (50_000, 50_001), (61_007, N)];

/// A NaN with a payload device arithmetic never produces (the canonical device NaN is 0x7fffffff).
const POISON: u32 = 0x7fa0_0001;

/// The CPU update of segment `k` (one of [`RANGES`]) at 1-based `step`: (k, param, grad, state, step).
pub(crate) type CpuStep<'a> = dyn FnMut(usize, &mut [f32], &[f32], &mut [&mut [f32]], u64) + 'a;
/// The segment of range `k` at `step`: (k, step, start, end).
pub(crate) type SegmentOf<'a> = dyn FnMut(usize, u64, usize, usize) -> Segment + 'a;
/// The device update of the whole arena: (gpu, param, grad, state, table).
pub(crate) type GpuStep<'a> =
    dyn FnMut(&Gpu, &mut CudaSlice<f32>, &CudaSlice<f32>, &mut [CudaSlice<f32>], &SegmentTable) + 'a;

/// Runs `steps` optimizer steps on the CPU (per segment) and on the GPU (one launch per step) from the same
/// random start; `state_init` is the initial value of every state buffer inside the segments (Adagrad's
/// `initial_accumulator_value`; 0 otherwise). Panics unless parameters and all `nstate` state buffers agree
/// bit for bit over the whole arena.
pub(crate) fn check_fused_bitwise(
    test: &str,
    nstate: usize,
    state_init: f32,
    steps: u64,
    cpu: &mut CpuStep<'_>,
    segment: &mut SegmentOf<'_>,
    gpu_step: &mut GpuStep<'_>,
) {
    let Some(gpu) = gpu_or_skip(test) else { return };
    let mut rng = Rng::new(test_seed(test));
    let poison = f32::from_bits(POISON);
    let inside = |i: usize| RANGES.iter().any(|&(a, b)| (a..b).contains(&i));
    let mut p: Vec<f32> = (0..N).map(|i| if inside(i) { rng.normal() as f32 } else { poison }).collect();
    let mut state: Vec<Vec<f32>> =
        (0..nstate).map(|_| (0..N).map(|i| if inside(i) { state_init } else { poison }).collect()).collect();
    let mut dp = gpu.upload(&p).unwrap();
    let mut dstate: Vec<CudaSlice<f32>> = state.iter().map(|s| gpu.upload(s).unwrap()).collect();
    let mut table = SegmentTable::new(gpu, RANGES.len()).unwrap();
    for step in 1..=steps {
        // Gradients of mixed scale, so the adaptive denominators see small and large values.
        let scale = [1.0, 1e-3, 30.0][(step % 3) as usize];
        let g: Vec<f32> = (0..N).map(|i| if inside(i) { (rng.normal() * scale) as f32 } else { poison }).collect();
        for (k, &(a, b)) in RANGES.iter().enumerate() {
            let mut views: Vec<&mut [f32]> = state.iter_mut().map(|s| &mut s[a..b]).collect();
            cpu(k, &mut p[a..b], &g[a..b], &mut views[..], step);
            table.host[k] = segment(k, step, a, b);
        }
        table.upload(gpu).unwrap();
        let dg = gpu.upload(&g).unwrap();
        gpu_step(gpu, &mut dp, &dg, &mut dstate[..], &table);
    }
    let mut all = vec![("param".to_string(), gpu.download(&dp).unwrap(), p)];
    for (j, (d, h)) in dstate.iter().zip(state).enumerate() {
        all.push((format!("state {j}"), gpu.download(d).unwrap(), h));
    }
    for (what, got, want) in all {
        let bad: Vec<usize> = (0..N).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
        if let Some(&i) = bad.first() {
            panic!(
                "{test}: {what}: {} elements differ from the CPU; first at {i}: {} vs {}",
                bad.len(),
                got[i],
                want[i]
            );
        }
    }
    eprintln!("{test}: {steps} steps over {N} elements bitwise equal to the CPU");
}
