//! Kernel throughput on the CPU beside the machine's ceilings, for `engine bench` (the CUDA twin is
//! `cuda::bench`). Memory-bound kernels are reported in GB/s against the measured copy bandwidth (all
//! threads, buffers far larger than the caches); matrix products in GFLOP/s against a large square GEMM.
//! This is a measurement tool, not a test: figures vary run to run, compare only figures of one run.

use std::time::Instant;

use rayon::prelude::*;

use crate::ops;
use crate::optim::adamw::{adamw_step, AdamWConfig};

/// One measured kernel.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Kernel and shape, e.g. `gelu forward [16M]`.
    pub name: String,
    /// Best time of one call, seconds.
    pub seconds: f64,
    /// Bytes the kernel must move at least (reads + writes), 0 for compute-bound rows.
    pub bytes: f64,
    /// Floating-point operations, 0 for memory-bound rows.
    pub flops: f64,
}

impl BenchRow {
    /// Achieved GB/s (memory-bound rows).
    pub fn gb_per_s(&self) -> f64 {
        self.bytes / self.seconds / 1e9
    }

    /// Achieved GFLOP/s (compute-bound rows).
    pub fn gflop_per_s(&self) -> f64 {
        self.flops / self.seconds / 1e9
    }

    /// The faster of two measurements of the same thing.
    pub fn best_of(self, other: BenchRow) -> BenchRow {
        if other.seconds < self.seconds {
            other
        } else {
            self
        }
    }

    /// `name  rate  (pct of ceiling)` against the copy bandwidth or the GEMM rate of the same run.
    pub fn line(&self, copy_gb_s: f64, gemm_gflop_s: f64) -> String {
        if self.flops > 0.0 {
            let r = self.gflop_per_s();
            format!("{:<44} {:>9.1} GFLOP/s  {:>5.1}% of GEMM ceiling", self.name, r, 100.0 * r / gemm_gflop_s)
        } else {
            let r = self.gb_per_s();
            format!("{:<44} {:>9.1} GB/s     {:>5.1}% of copy bandwidth", self.name, r, 100.0 * r / copy_gb_s)
        }
    }
}

/// Best wall time of `reps` calls of `f` after one warm-up call.
pub fn best_time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The ceilings: parallel copy bandwidth over `n` f32 (GB/s, read + write counted) and the GFLOP/s of a
/// 1024^3 f32 GEMM on all threads.
pub fn cpu_ceilings(n: usize) -> (BenchRow, BenchRow) {
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let chunk = (n / rayon::current_num_threads().max(1)).max(1 << 16);
    let t = best_time(5, || {
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
    });
    let copy = BenchRow { name: format!("copy [{}]", human(n)), seconds: t, bytes: 8.0 * n as f64, flops: 0.0 };
    let m = 1024;
    let (a, b) = (vec![0.5f32; m * m], vec![0.25f32; m * m]);
    let mut c = vec![0.0f32; m * m];
    let t = best_time(10, || ops::linear::matmul(&mut c, &a, &b, m, m, m, false));
    let gemm = BenchRow { name: format!("gemm {m}x{m}x{m}"), seconds: t, bytes: 0.0, flops: 2.0 * (m * m * m) as f64 };
    (copy, gemm)
}

/// `n` as `16M` / `64K` / `1000`.
fn human(n: usize) -> String {
    if n.is_multiple_of(1 << 20) {
        format!("{}M", n >> 20)
    } else if n.is_multiple_of(1 << 10) {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

/// The memory-bound kernels of a training step over `n` elements: activations, the fused AdamW update,
/// softmax + cross-entropy, layer norm, a linear layer's forward GEMM, and W2's second convolution.
pub fn cpu_kernels(n: usize) -> Vec<BenchRow> {
    let mut rows = Vec::new();
    let x: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) / 125.0).collect();
    let g = vec![0.01f32; n];
    let mut y = vec![0.0f32; n];
    let size = human(n);
    for (act, name) in [(ops::activation::Activation::Relu, "relu"), (ops::activation::Activation::Gelu, "gelu")] {
        let t = best_time(5, || ops::activation::activation_forward(act, &mut y, &x));
        rows.push(BenchRow { name: format!("{name} forward [{size}]"), seconds: t, bytes: 8.0 * n as f64, flops: 0.0 });
        let t = best_time(5, || ops::activation::activation_backward(act, &mut y, &g, &x));
        rows.push(BenchRow {
            name: format!("{name} backward [{size}]"),
            seconds: t,
            bytes: 12.0 * n as f64,
            flops: 0.0,
        });
    }
    let (mut p, mut m, mut v) = (x.clone(), vec![0.0f32; n], vec![0.0f32; n]);
    let cfg = AdamWConfig::default();
    let mut step = 0;
    let t = best_time(5, || {
        step += 1;
        adamw_step(&mut p, &g, &mut m, &mut v, &cfg, step);
    });
    // Reads p, g, m, v; writes p, m, v.
    rows.push(BenchRow { name: format!("adamw step [{size}]"), seconds: t, bytes: 28.0 * n as f64, flops: 0.0 });
    let classes = 1000;
    let b = n / classes;
    let targets: Vec<i64> = (0..b).map(|i| (i % classes) as i64).collect();
    let opts = ops::softmax_cross_entropy::CrossEntropyOptions::default();
    let (logits, mut probs) = (&x[..b * classes], vec![0.0f32; b * classes]);
    let t = best_time(5, || {
        let _ =
            ops::softmax_cross_entropy::softmax_cross_entropy_forward(&mut probs, logits, &targets, b, classes, &opts);
    });
    rows.push(BenchRow {
        name: format!("softmax+CE forward [{b}, {classes}]"),
        seconds: t,
        bytes: 8.0 * (b * classes) as f64,
        flops: 0.0,
    });
    let dim = 768;
    let r = n / dim;
    let (mut mean, mut rstd) = (vec![0.0f32; r], vec![0.0f32; r]);
    let (w, bias) = (vec![1.0f32; dim], vec![0.0f32; dim]);
    let t = best_time(5, || {
        ops::layer_norm::layer_norm_forward(
            &mut y[..r * dim],
            &mut mean,
            &mut rstd,
            &x[..r * dim],
            Some(&w),
            Some(&bias),
            r,
            dim,
            1e-5,
        )
    });
    rows.push(BenchRow {
        name: format!("layer norm forward [{r}, {dim}]"),
        seconds: t,
        bytes: 8.0 * (r * dim) as f64,
        flops: 0.0,
    });
    let (bt, c, oc) = (512, 784, 512);
    let (inp, wt) = (vec![0.1f32; bt * c], vec![0.01f32; oc * c]);
    let mut out = vec![0.0f32; bt * oc];
    let t = best_time(5, || ops::linear::linear_forward(&mut out, &inp, &wt, None, bt, c, oc));
    rows.push(BenchRow {
        name: format!("linear forward {bt}x{c} -> {oc}"),
        seconds: t,
        bytes: 0.0,
        flops: 2.0 * (bt * c * oc) as f64,
    });
    // The convolution of W2's second layer (32 -> 64 channels, 14x14, 3x3, padding 1) at up to W2's batch of
    // 128, forward and backward (weight, bias and input gradients), as the GPU bench runs it at batch 512.
    let (c, hw, oc) = (32, 14, 64);
    let batch = (n / (c * hw * hw)).clamp(1, 128);
    let g = ops::conv2d::Conv2dGeom::same_3x3(batch, c, hw, oc);
    let (p, kg) = (hw * hw, c * 9);
    let inp: Vec<f32> = (0..batch * c * p).map(|i| ((i % 7) as f32 - 3.0) * 0.25).collect();
    let (weight, bias) = (vec![0.01f32; oc * kg], vec![0.1f32; oc]);
    let (mut out, mut col) = (vec![0.0f32; batch * oc * p], vec![0.0f32; g.col_len()]);
    let flops = 2.0 * (batch * oc * p * kg) as f64;
    let t = best_time(3, || ops::conv2d::conv2d_forward(&mut out, &inp, &weight, Some(&bias), &mut col, &g));
    rows.push(BenchRow { name: format!("conv2d W2 forward [batch {batch}]"), seconds: t, bytes: 0.0, flops });
    let (mut dinp, mut dweight, mut dbias) = (vec![0.0f32; inp.len()], vec![0.0f32; oc * kg], vec![0.0f32; oc]);
    let t = best_time(3, || {
        ops::conv2d::conv2d_backward(Some(&mut dinp), &mut dweight, Some(&mut dbias), &out, &inp, &weight, &mut col, &g)
    });
    rows.push(BenchRow {
        name: format!("conv2d W2 backward [batch {batch}]"),
        seconds: t,
        bytes: 0.0,
        flops: 2.0 * flops,
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows are well formed (positive times, rates and a printable line); no speed is asserted.
    #[test]
    fn benchmarks_produce_rows() {
        let (copy, gemm) = cpu_ceilings(1 << 16);
        let rows = cpu_kernels(1 << 16);
        assert!(rows.len() >= 9);
        assert!(rows.iter().any(|r| r.name.starts_with("conv2d W2 backward") && r.flops > 0.0));
        for r in rows.iter().chain([&copy, &gemm]) {
            assert!(r.seconds > 0.0 && r.seconds.is_finite(), "{r:?}");
            assert!(r.line(copy.gb_per_s(), gemm.gflop_per_s()).contains(if r.flops > 0.0 {
                "GFLOP/s"
            } else {
                "GB/s"
            }));
        }
    }

    #[test]
    fn best_of_keeps_the_faster_measurement() {
        let row = |seconds| BenchRow { name: "gemm".into(), seconds, bytes: 0.0, flops: 2e9 };
        assert_eq!(row(0.02).best_of(row(0.01)).seconds, 0.01);
        assert_eq!(row(0.01).best_of(row(0.02)).seconds, 0.01);
    }
}
