//! Int8 inference kernels against their f32 counterparts: `linear_i8_forward` (quantize, exact int8 GEMM,
//! dequantize + bias) vs `ops::linear_forward` at the digits CNN / ViT-like layer sizes, and a 1024^3
//! product through both. Throughput is reported as elements = multiply-adds · 2, i.e. criterion's
//! elem/s read as OP/s (divide by 1e9 for GOP/s).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ecstrain::kernels::ops;
use ecstrain::kernels::quant::gemm_i8::PackedI8Weights;
use ecstrain::kernels::quant::linear_i8::linear_i8_forward;
use ecstrain::kernels::quant::qparams::{amax, scale_from_amax};
use ecstrain::kernels::rng::Rng;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32 * 0.1).collect()
}

fn linear_int8_vs_f32(c: &mut Criterion) {
    let _ = rayon::ThreadPoolBuilder::new().num_threads(2).build_global();
    let mut g = c.benchmark_group("linear_int8_vs_f32");
    // (rows, in, out): a conv layer's im2col rows for a digits batch, ViT token MLPs, and 1024^3.
    let sizes = [
        (256usize, 64usize, 32usize),
        (1024, 288, 64),
        (4096, 576, 64),
        (1024, 128, 256),
        (2048, 256, 128),
        (1024, 1024, 1024),
    ];
    for (rows, cin, cout) in sizes {
        let (x, w, bias) = (randn(rows * cin, 1), randn(cout * cin, 2), randn(cout, 3));
        let packed = PackedI8Weights::quantize(&w, cout, cin);
        let xs = scale_from_amax(amax(&x));
        let (mut q, mut acc) = (vec![0i8; rows * cin], vec![0i32; rows * cout]);
        let mut y = vec![0.0f32; rows * cout];
        let id = format!("{rows}x{cin}x{cout}");
        g.throughput(Throughput::Elements((2 * rows * cin * cout) as u64));
        g.bench_function(BenchmarkId::new("int8", &id), |b| {
            b.iter(|| linear_i8_forward(&mut y, &x, &packed, Some(&bias), xs, &mut q, &mut acc, rows, cin, cout))
        });
        g.bench_function(BenchmarkId::new("f32", &id), |b| {
            b.iter(|| ops::linear_forward(&mut y, &x, &w, Some(&bias), rows, cin, cout))
        });
    }
    g.finish();
}

criterion_group!(benches, linear_int8_vs_f32);
criterion_main!(benches);
