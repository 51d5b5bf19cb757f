//! Kernel micro-benchmarks at the W1 shapes (batch 128, 784 -> 512 -> 512 -> 10): linear forward and
//! backward, ReLU, fused softmax + cross-entropy, and the AdamW update over the whole 669,706-parameter arena.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ecstrain::kernels::ops;
use ecstrain::kernels::optim::adamw::{adamw_step, AdamWConfig};
use ecstrain::kernels::rng::Rng;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32 * 0.1).collect()
}

fn linear(c: &mut Criterion) {
    let _ = rayon::ThreadPoolBuilder::new().num_threads(2).build_global();
    let mut g = c.benchmark_group("linear_b128");
    for (cin, cout) in [(784usize, 512usize), (512, 512), (512, 10)] {
        let b = 128;
        let (x, w, bias, dy) = (randn(b * cin, 1), randn(cout * cin, 2), randn(cout, 3), randn(b * cout, 4));
        let mut y = vec![0.0f32; b * cout];
        let (mut dx, mut dw, mut db) = (vec![0.0f32; b * cin], vec![0.0f32; cout * cin], vec![0.0f32; cout]);
        g.throughput(Throughput::Elements((2 * b * cin * cout) as u64));
        g.bench_function(BenchmarkId::new("forward", format!("{cin}x{cout}")), |bn| {
            bn.iter(|| ops::linear_forward(&mut y, &x, &w, Some(&bias), b, cin, cout))
        });
        g.throughput(Throughput::Elements((4 * b * cin * cout) as u64));
        g.bench_function(BenchmarkId::new("backward", format!("{cin}x{cout}")), |bn| {
            bn.iter(|| ops::linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &dy, &x, &w, b, cin, cout))
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let n = 128 * 512;
    let (x, dy) = (randn(n, 5), randn(n, 6));
    let (mut y, mut dx) = (vec![0.0f32; n], vec![0.0f32; n]);
    c.bench_function("relu_forward_128x512", |b| b.iter(|| ops::relu_forward(&mut y, &x)));
    c.bench_function("relu_backward_128x512", |b| b.iter(|| ops::relu_backward(&mut dx, &dy, &x)));
    let (bs, v) = (128, 10);
    let logits = randn(bs * v, 7);
    let targets: Vec<i64> = (0..bs as i64).map(|i| i % 10).collect();
    let (mut probs, mut dl) = (vec![0.0f32; bs * v], vec![0.0f32; bs * v]);
    let opts = ops::CrossEntropyOptions::default();
    c.bench_function("softmax_ce_fwd_bwd_128x10", |b| {
        b.iter(|| {
            let l = ops::softmax_cross_entropy_forward(&mut probs, &logits, &targets, bs, v, &opts).unwrap();
            ops::softmax_cross_entropy_backward(&mut dl, &probs, &targets, bs, v, &opts, 1.0);
            l
        })
    });
}

fn adamw(c: &mut Criterion) {
    let n = 669_706;
    let (mut p, g) = (randn(n, 8), randn(n, 9));
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let cfg = AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
    let mut step = 0;
    let mut grp = c.benchmark_group("adamw");
    grp.throughput(Throughput::Elements(n as u64));
    grp.bench_function("w1_arena_669706", |b| {
        b.iter(|| {
            step += 1;
            adamw_step(&mut p, &g, &mut m, &mut v, &cfg, step)
        })
    });
    grp.finish();
}

criterion_group!(benches, linear, elementwise, adamw);
criterion_main!(benches);
