//! Kernel micro-benchmarks at the W1 shapes (batch 128, 784 -> 512 -> 512 -> 10): linear forward and
//! backward, ReLU, fused softmax + cross-entropy, and the AdamW update over the whole 669,706-parameter arena;
//! the W2 convolution and pool (and each W2 block as the conv + pool pair against the fused kernel); the W3 step's ops at
//! their shapes (`w3_ops`, next to `benches/w3_ops_torch.py`); and `gemm_ceiling`: a 512^3 f32 product through the engine's gemm wrapper,
//! the machine's GEMM ceiling that train-step throughput is compared with (FLOP/s = elem/s).

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

fn conv_pool(c: &mut Criterion) {
    use ops::conv2d::{conv2d_backward, conv2d_forward, Conv2dGeom};
    use ops::pool::{max_pool2d_backward, max_pool2d_forward, Pool2dGeom};
    // The first W2 block at batch 128: Conv(1 -> 32, 3x3, pad 1) on 28x28, then MaxPool 2.
    let g = Conv2dGeom::same_3x3(128, 1, 28, 32);
    let (x, w, b) = (randn(128 * 28 * 28, 10), randn(32 * 9, 11), randn(32, 12));
    let mut y = vec![0.0f32; 128 * 32 * 28 * 28];
    let mut col = vec![0.0f32; g.col_len()];
    c.bench_function("w2_conv1_forward", |bn| bn.iter(|| conv2d_forward(&mut y, &x, &w, Some(&b), &mut col, &g)));
    let (mut dw, mut db) = (vec![0.0f32; 32 * 9], vec![0.0f32; 32]);
    let dy = randn(y.len(), 13);
    c.bench_function("w2_conv1_backward_no_dx", |bn| {
        bn.iter(|| conv2d_backward(None, &mut dw, Some(&mut db), &dy, &x, &w, &mut col, &g))
    });
    let pg = Pool2dGeom { n: 128, c: 32, h: 28, w: 28, kh: 2, kw: 2, stride: (2, 2), padding: (0, 0) };
    let mut p = vec![0.0f32; 128 * 32 * 14 * 14];
    let mut am = vec![0u32; p.len()];
    // After the ReLU of the pipeline: half the inputs are exactly 0 (ties), as in training.
    let yr: Vec<f32> = randn(y.len(), 15).into_iter().map(|v| v.max(0.0)).collect();
    c.bench_function("w2_maxpool1_forward", |bn| bn.iter(|| max_pool2d_forward(&mut p, &mut am, &yr, &pg)));
    let dp = randn(p.len(), 14);
    let mut dx = vec![0.0f32; y.len()];
    c.bench_function("w2_maxpool1_backward", |bn| bn.iter(|| max_pool2d_backward(&mut dx, &dp, &am, &pg)));
}

/// The two W2 blocks at batch 128 (Conv 3x3 pad 1, then MaxPool 2), forward and backward, as the unfused pair
/// of kernels and as the fused `conv2d_maxpool_*` (bit-identical results) side by side.
fn conv_maxpool_fused(c: &mut Criterion) {
    use ops::conv2d::{conv2d_backward, conv2d_forward, conv2d_maxpool_backward, conv2d_maxpool_forward, Conv2dGeom};
    use ops::pool::{max_pool2d_backward, max_pool2d_forward, Pool2dGeom};
    for (name, ch, oc, hw) in [("w2_block1", 1, 32, 28), ("w2_block2", 32, 64, 14)] {
        let n = 128;
        let g = Conv2dGeom::same_3x3(n, ch, hw, oc);
        let pg = Pool2dGeom { n, c: oc, h: hw, w: hw, kh: 2, kw: 2, stride: (2, 2), padding: (0, 0) };
        let (x, w, b) = (randn(n * ch * hw * hw, 20), randn(oc * ch * 9, 21), randn(oc, 22));
        let (full, pooled) = (n * oc * hw * hw, n * oc * (hw / 2) * (hw / 2));
        let (mut y, mut dyf, mut dx) = (vec![0.0f32; full], vec![0.0f32; full], vec![0.0f32; x.len()]);
        let (mut p, mut am, dp) = (vec![0.0f32; pooled], vec![0u32; pooled], randn(pooled, 23));
        let (mut dw, mut db) = (vec![0.0f32; w.len()], vec![0.0f32; oc]);
        let mut scratch = vec![0.0f32; g.maxpool_scratch_len()];
        // The first block's input gradient is not needed (the model input), the second's is.
        let wants_dx = ch > 1;
        let mut group = c.benchmark_group(format!("{name}_conv_maxpool"));
        group.bench_function("forward/pair", |bn| {
            bn.iter(|| {
                conv2d_forward(&mut y, &x, &w, Some(&b), &mut scratch, &g);
                max_pool2d_forward(&mut p, &mut am, &y, &pg);
            })
        });
        group.bench_function("forward/fused", |bn| {
            bn.iter(|| conv2d_maxpool_forward(&mut p, &mut am, &x, &w, Some(&b), &mut scratch, &g, &pg, false))
        });
        group.bench_function("backward/pair", |bn| {
            bn.iter(|| {
                max_pool2d_backward(&mut dyf, &dp, &am, &pg);
                let dx = wants_dx.then_some(&mut dx[..]);
                conv2d_backward(dx, &mut dw, Some(&mut db), &dyf, &x, &w, &mut scratch, &g);
            })
        });
        group.bench_function("backward/fused", |bn| {
            bn.iter(|| {
                let dx = wants_dx.then_some(&mut dx[..]);
                conv2d_maxpool_backward(dx, &mut dw, Some(&mut db), &dp, &am, None, &x, &w, &mut scratch, &g, &pg)
            })
        });
        group.finish();
    }
}

fn gemm_ceiling(c: &mut Criterion) {
    let _ = rayon::ThreadPoolBuilder::new().num_threads(2).build_global();
    let n = 512;
    let (a, b) = (randn(n * n, 7), randn(n * n, 8));
    let mut out = vec![0.0f32; n * n];
    let mut g = c.benchmark_group("gemm_ceiling");
    g.throughput(Throughput::Elements((2 * n * n * n) as u64));
    g.bench_function("512x512x512", |bn| bn.iter(|| ops::linear::matmul(&mut out, &a, &b, n, n, n, false)));
    g.finish();
}

/// One W3 attention layer (batch 64, 4 heads, 50 tokens, head size 32) on the fused q/k/v layout.
fn attention_w3(c: &mut Criterion) {
    use ecstrain::kernels::ops::attention::{
        attention_fused_backward, attention_fused_backward_queries, attention_fused_forward,
        attention_fused_forward_queries,
    };
    let _ = rayon::ThreadPoolBuilder::new().num_threads(2).build_global();
    let (b, h, t, d) = (64, 4, 50, 32);
    let qkv = randn(b * t * 3 * h * d, 9);
    let dout = randn(b * t * h * d, 10);
    let (mut out, mut att) = (vec![0.0f32; b * t * h * d], vec![0.0f32; b * h * t * t]);
    let (mut dqkv, mut scratch) = (vec![0.0f32; qkv.len()], vec![0.0f32; b * h * t * t]);
    let mut g = c.benchmark_group("attention_w3");
    g.throughput(Throughput::Elements((2 * 2 * b * h * t * t * d) as u64));
    g.bench_function("forward", |bn| bn.iter(|| attention_fused_forward(&mut out, &mut att, &qkv, b, h, t, d, false)));
    g.throughput(Throughput::Elements((4 * 2 * b * h * t * t * d) as u64));
    g.bench_function("backward", |bn| {
        bn.iter(|| attention_fused_backward(&mut dqkv, &dout, &qkv, &att, &mut scratch, b, h, t, d, false))
    });
    // The pruned last block: the class token's query alone (every key and value still read).
    g.throughput(Throughput::Elements((2 * 2 * b * h * t * d) as u64));
    g.bench_function("forward_cls_query", |bn| {
        bn.iter(|| attention_fused_forward_queries(&mut out, &mut att, &qkv, b, h, t, d, false, 1))
    });
    g.throughput(Throughput::Elements((4 * 2 * b * h * t * d) as u64));
    g.bench_function("backward_cls_query", |bn| {
        bn.iter(|| attention_fused_backward_queries(&mut dqkv, &dout, &qkv, &att, &mut scratch, b, h, t, d, false, 1))
    });
    g.finish();
}

/// The activation backward with the bias gradient: the unfused pair (activation backward into a second
/// buffer, then the bias column sums) against the fused in-place pass of `ops::linear_act`, at the W1 hidden
/// layer (128 x 512, ReLU) and the W3 MLP (64 x 50 tokens x 256, GELU). The in-place kernel restores its
/// input each iteration; that copy is timed alone as well.
fn bias_act(c: &mut Criterion) {
    use ecstrain::kernels::ops::activation::{activation_backward, Activation};
    use ecstrain::kernels::ops::linear_act::act_backward_with_bias_sums;
    let mut g = c.benchmark_group("bias_act_backward");
    for (name, rows, n, act) in
        [("w1_relu_128x512", 128, 512, Activation::Relu), ("w3_gelu_3200x256", 3200, 256, Activation::Gelu)]
    {
        let (pre, dy) = (randn(rows * n, 20), randn(rows * n, 21));
        let (mut dpre, mut db) = (vec![0.0f32; rows * n], vec![0.0f32; n]);
        g.throughput(Throughput::Elements((rows * n) as u64));
        g.bench_function(BenchmarkId::new("unfused", name), |b| {
            b.iter(|| {
                activation_backward(act, &mut dpre, &dy, &pre);
                ops::bias_add_backward(&mut db, &dpre, rows, n);
            })
        });
        // In place: each iteration restores the gradient first; the copy alone is timed too, to subtract.
        let mut d = dy.clone();
        g.bench_function(BenchmarkId::new("fused_with_copy", name), |b| {
            b.iter(|| {
                d.copy_from_slice(&dy);
                act_backward_with_bias_sums(act, &mut d, &pre, Some(&mut db), rows, n)
            })
        });
        g.bench_function(BenchmarkId::new("copy_only", name), |b| b.iter(|| d.copy_from_slice(&dy)));
    }
    g.finish();
}

/// The W3 ops at their step shapes (batch 64 x 50 tokens = 3,200 rows, width 128): each linear layer's forward
/// and backward (qkv 128 -> 384, proj 128 -> 128, fc1 128 -> 256, fc2 256 -> 128), the layer norm and the
/// exact GELU. `benches/w3_ops_torch.py` times PyTorch's ops at the same shapes, for a side-by-side reading.
fn w3_ops(c: &mut Criterion) {
    use ecstrain::kernels::ops::gelu::{gelu_backward, gelu_forward, GeluApprox};
    use ecstrain::kernels::ops::layer_norm::{layer_norm_backward, layer_norm_forward};
    let _ = rayon::ThreadPoolBuilder::new().num_threads(2).build_global();
    let rows = 64 * 50;
    let mut g = c.benchmark_group("w3_ops");
    for (name, cin, cout) in [("qkv", 128usize, 384usize), ("proj", 128, 128), ("fc1", 128, 256), ("fc2", 256, 128)] {
        let (x, w, bias, dy) = (randn(rows * cin, 1), randn(cout * cin, 2), randn(cout, 3), randn(rows * cout, 4));
        let mut y = vec![0.0f32; rows * cout];
        let (mut dx, mut dw, mut db) = (vec![0.0f32; rows * cin], vec![0.0f32; cout * cin], vec![0.0f32; cout]);
        g.throughput(Throughput::Elements((2 * rows * cin * cout) as u64));
        g.bench_function(BenchmarkId::new("linear_forward", name), |bn| {
            bn.iter(|| ops::linear_forward(&mut y, &x, &w, Some(&bias), rows, cin, cout))
        });
        g.throughput(Throughput::Elements((4 * rows * cin * cout) as u64));
        g.bench_function(BenchmarkId::new("linear_backward", name), |bn| {
            bn.iter(|| ops::linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &dy, &x, &w, rows, cin, cout))
        });
    }
    let dim = 128;
    let (x, w, bias, dy) = (randn(rows * dim, 5), randn(dim, 6), randn(dim, 7), randn(rows * dim, 8));
    let (mut y, mut dx) = (vec![0.0f32; rows * dim], vec![0.0f32; rows * dim]);
    let (mut mean, mut rstd) = (vec![0.0f32; rows], vec![0.0f32; rows]);
    let (mut dw, mut db) = (vec![0.0f32; dim], vec![0.0f32; dim]);
    g.throughput(Throughput::Bytes((2 * 4 * rows * dim) as u64));
    g.bench_function("layer_norm_forward", |bn| {
        bn.iter(|| layer_norm_forward(&mut y, &mut mean, &mut rstd, &x, Some(&w), Some(&bias), rows, dim, 1e-5))
    });
    g.throughput(Throughput::Bytes((3 * 4 * rows * dim) as u64));
    g.bench_function("layer_norm_backward", |bn| {
        bn.iter(|| {
            layer_norm_backward(&mut dx, Some(&mut dw), Some(&mut db), &dy, &x, &mean, &rstd, Some(&w), rows, dim)
        })
    });
    let n = rows * 256;
    let (x, dy) = (randn(n, 9), randn(n, 10));
    let (mut y, mut dx) = (vec![0.0f32; n], vec![0.0f32; n]);
    g.throughput(Throughput::Bytes((2 * 4 * n) as u64));
    g.bench_function("gelu_forward", |bn| bn.iter(|| gelu_forward(&mut y, &x, GeluApprox::None)));
    g.throughput(Throughput::Bytes((3 * 4 * n) as u64));
    g.bench_function("gelu_backward", |bn| bn.iter(|| gelu_backward(&mut dx, &dy, &x, GeluApprox::None)));
    g.finish();
}

criterion_group!(
    benches,
    linear,
    elementwise,
    adamw,
    conv_pool,
    conv_maxpool_fused,
    gemm_ceiling,
    attention_w3,
    bias_act,
    w3_ops
);
criterion_main!(benches);
