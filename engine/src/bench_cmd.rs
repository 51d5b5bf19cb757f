//! `engine bench [--device cpu|cuda[:N]] [--elements N]`: kernel throughput on a device beside its measured
//! ceilings (copy bandwidth for memory-bound kernels, a large GEMM for matrix products).

use clap::Args;
use ecstrain_kernels::Device;

use crate::error::EngineError;

/// Arguments of `engine bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Device to measure: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Elements per memory-bound kernel on the CPU (default 16M; the GPU benchmarks use 64M).
    #[arg(long)]
    pub elements: Option<usize>,
}

/// Runs the kernel benchmarks and prints one line per kernel.
pub fn run(args: &BenchArgs) -> Result<(), EngineError> {
    let usage = |m: String| EngineError::Usage(format!("engine bench: {m}"));
    let device = Device::parse(&args.device).map_err(|e| usage(format!("--device: {e}")))?;
    if args.elements == Some(0) {
        return Err(usage("--elements must be at least 1".into()));
    }
    // Each kernel holds a few buffers of this many f32 (and the GPU's its own): a sixteenth of the machine's
    // memory per buffer leaves room for them all.
    let most = crate::memory_check::host_memory().map_or(1 << 28, |m| (m / 64) as usize);
    if let Some(n) = args.elements.filter(|&n| n > most) {
        return Err(usage(format!("--elements must be at most {most} on this machine (several f32 buffers of that many elements per kernel), got {n}")));
    }
    match device {
        Device::Cpu => {
            let n = args.elements.unwrap_or(16 << 20);
            println!("device cpu, {} threads, {n} elements per memory-bound kernel", rayon::current_num_threads());
            // The ceilings are measured before and after the kernels and the better of each is kept: on a
            // shared machine a slow spell during one measurement would otherwise put kernels above 100%.
            let (copy0, gemm0) = ecstrain_kernels::bench::cpu_ceilings(n);
            let rows = ecstrain_kernels::bench::cpu_kernels(n);
            let (copy1, gemm1) = ecstrain_kernels::bench::cpu_ceilings(n);
            let (copy, gemm) = (copy0.best_of(copy1), gemm0.best_of(gemm1));
            println!("ceilings: {:.1} GB/s copy, {:.1} GFLOP/s {}", copy.gb_per_s(), gemm.gflop_per_s(), gemm.name);
            for row in rows {
                println!("{}", row.line(copy.gb_per_s(), gemm.gflop_per_s()));
            }
            Ok(())
        }
        Device::Cuda(_) => {
            device.ensure_available().map_err(|e| usage(format!("--device: {e}")))?;
            crate::cuda_run::bench(device).map_err(EngineError::Run)
        }
    }
}
