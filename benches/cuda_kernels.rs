//! CUDA kernel benchmarks: prints the device table of `ecstrain::kernels::cuda::bench` (bandwidth of our
//! kernels at 64M elements next to the measured copy bandwidth and cuBLAS SGEMM ceilings), then runs the
//! same kernels under criterion, timed with CUDA events (`iter_custom`), so the statistics cover device time
//! only. On a machine without a CUDA device it prints SKIPPED and exits successfully.

use criterion::{BenchmarkId, Criterion, Throughput};
use ecstrain::kernels::cuda::bench::{device_time, format_table, run_benchmarks, target_report, BENCH_ELEMENTS};
use ecstrain::kernels::cuda::{Gpu, GpuError, SegmentTable};
use ecstrain::kernels::optim::adam::{cuda as adam, AdamConfig};
use ecstrain::kernels::optim::clip::cuda as clip;

/// The criterion group: fused AdamW and clip-by-norm over the 64M-element arena.
fn kernels(c: &mut Criterion, gpu: &Gpu) -> Result<(), GpuError> {
    let n = BENCH_ELEMENTS;
    let s = gpu.stream();
    let (mut p, mut g) = (s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(n)?);
    let (mut m, mut v, mut vmax) = (s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(n)?, s.alloc_zeros::<f32>(n)?);
    let cfg = AdamConfig { weight_decay: 0.01, decoupled_weight_decay: true, ..AdamConfig::default() };
    let mut table = SegmentTable::new(gpu, 1)?;
    table.host[0] = adam::segment(&cfg, 10, 0, n);
    table.upload(gpu)?;
    let mut ws = clip::ClipWorkspace::new(gpu)?;
    let mut group = c.benchmark_group("cuda_64M");
    group.throughput(Throughput::Bytes(7 * 4 * n as u64));
    group.bench_function(BenchmarkId::new("adamw_fused", n), |b| {
        b.iter_custom(|iters| {
            device_time(gpu, iters, || {
                let (mut pv, mut mv, mut vv, mut xv) =
                    (p.as_view_mut(), m.as_view_mut(), v.as_view_mut(), vmax.as_view_mut());
                adam::step(gpu, &mut pv, &g.as_view(), &mut mv, &mut vv, &mut xv, &table)
            })
            .expect("adamw on the device")
        })
    });
    group.throughput(Throughput::Bytes(3 * 4 * n as u64));
    group.bench_function(BenchmarkId::new("clip_grad_norm", n), |b| {
        b.iter_custom(|iters| {
            device_time(gpu, iters, || clip::clip_gradients(gpu, &mut g.as_view_mut(), &table, 0.0, 1.0, &mut ws))
                .expect("clipping on the device")
        })
    });
    group.finish();
    Ok(())
}

fn main() {
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            println!("SKIPPED cuda_kernels: no CUDA device ({e})");
            return;
        }
    };
    match run_benchmarks(&gpu) {
        Ok(rows) => {
            println!("{} ({})\n{}{}", gpu.info.name, gpu.info.arch(), format_table(&rows), target_report(&rows))
        }
        Err(e) => {
            eprintln!("cuda_kernels: {e}");
            std::process::exit(1);
        }
    }
    let mut c = Criterion::default().configure_from_args().sample_size(20);
    if let Err(e) = kernels(&mut c, &gpu) {
        eprintln!("cuda_kernels: {e}");
        std::process::exit(1);
    }
    c.final_summary();
}
