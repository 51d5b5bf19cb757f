//! The registry of kernel sources: every `.cu` file of the crate, with the entry points it must define.

/// One `.cu` source: an op's kernels (forward and backward, every element type it supports).
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// The op's name, also the module name NVRTC reports in errors (`<name>.cu`).
    pub name: &'static str,
    /// The CUDA C++ source (embedded with `include_str!`).
    pub code: &'static str,
    /// Every `extern "C" __global__` function the source defines (checked in the compiled PTX).
    pub kernels: &'static [&'static str],
}

/// Every kernel source of the crate, one per op (the NVRTC compile test walks this list).
pub static ALL: &[&KernelSource] = &[
    &crate::ops::activation::CUDA,
    &crate::optim::adam::CUDA,
    // helper nn (layer ops)
    &crate::ops::bias_add::CUDA,
    &crate::ops::add::CUDA,
    &crate::ops::softmax_cross_entropy::CUDA,
    &crate::ops::mse::CUDA,
    &crate::ops::cosine_loss::CUDA,
    &crate::ops::l1_loss::CUDA,
    &crate::ops::conv2d::CUDA,
    &crate::ops::pool::CUDA,
    &crate::ops::batch_norm::CUDA,
    &crate::ops::dropout::CUDA,
    &crate::ops::layer_norm::CUDA,
    &crate::ops::softmax::CUDA,
    &crate::ops::attention::CUDA,
    &crate::ops::embedding::CUDA,
    &crate::ops::permute::CUDA,
    &crate::ops::upsample::CUDA,
    &crate::ops::linear_act::CUDA,
    &crate::ops::concat::CUDA,
    &crate::ops::vector_quantize::CUDA,
    // helper "opt": the remaining optimizers, clipping, EMA, casts.
    &crate::optim::sgd::CUDA,
    &crate::optim::adamax::CUDA,
    &crate::optim::nadam::CUDA,
    &crate::optim::radam::CUDA,
    &crate::optim::rmsprop::CUDA,
    &crate::optim::adagrad::CUDA,
    &crate::optim::adadelta::CUDA,
    &crate::optim::clip::CUDA,
    &crate::optim::ema::CUDA,
    &crate::ops::cast::CUDA,
    // the device executor (ViT / VQ-VAE ops)
    &crate::ops::token_mean::CUDA,
];

/// `ptxas` for the optional assembly check: `ECSTRAIN_PTXAS`, `ptxas` on `PATH`, the toolkit's, or the pip
/// wheel's `nvidia/cuda_nvcc/bin/ptxas` next to a `nvidia/cuda_nvrtc/lib` on `LD_LIBRARY_PATH`.
pub fn find_ptxas() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let mut c: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("ECSTRAIN_PTXAS") {
        c.push(p.into());
    }
    for var in ["PATH", "LD_LIBRARY_PATH"] {
        if let Ok(v) = std::env::var(var) {
            for dir in std::env::split_paths(&v) {
                c.push(dir.join("ptxas"));
                c.push(dir.join("../../cuda_nvcc/bin/ptxas"));
            }
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(v) = std::env::var(var) {
            c.push(PathBuf::from(v).join("bin/ptxas"));
        }
    }
    c.push("/usr/local/cuda/bin/ptxas".into());
    c.into_iter().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::compile::{compile_uncached, CompileFailure};

    /// The architectures every kernel must build for: A100 and H100 / H200.
    const ARCHES: [(&str, &str); 2] = [("compute_80", "sm_80"), ("compute_90", "sm_90")];

    /// Whether a missing NVRTC fails the test (CI sets `ECSTRAIN_REQUIRE_NVRTC=1`) or skips it.
    fn nvrtc_or_skip(test: &str) -> bool {
        if crate::cuda::probe::nvrtc_present() && !crate::cuda::compile::include_dirs().is_empty() {
            return true;
        }
        let why = "NVRTC (libnvrtc.so on LD_LIBRARY_PATH) or cuda_fp16.h (CUDA_HOME / ECSTRAIN_CUDA_INCLUDE) not found";
        if std::env::var("ECSTRAIN_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("{test}: ECSTRAIN_REQUIRE_NVRTC=1 but {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
        false
    }

    /// Every kernel source compiles with NVRTC for sm_80 and sm_90, defines every entry point it lists, and
    /// (when `ptxas` is found) assembles to a cubin.
    #[test]
    fn every_kernel_source_compiles() {
        if !nvrtc_or_skip("every_kernel_source_compiles") {
            return;
        }
        let ptxas = find_ptxas();
        if ptxas.is_none() {
            eprintln!("note: ptxas not found; checking NVRTC's PTX only");
        }
        let dir = std::env::temp_dir().join(format!("ecstrain-ptx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut names = std::collections::HashSet::new();
        for src in ALL {
            assert!(names.insert(src.name), "two sources are named {}", src.name);
            for (arch, sm) in ARCHES {
                let ptx = compile_uncached(src, arch).unwrap_or_else(|e| panic!("{e}"));
                if let Some(ptxas) = &ptxas {
                    let file = dir.join(format!("{}-{sm}.ptx", src.name));
                    std::fs::write(&file, &ptx).unwrap();
                    let out = std::process::Command::new(ptxas)
                        .arg(format!("-arch={sm}"))
                        .arg(&file)
                        .arg("-o")
                        .arg(file.with_extension("cubin"))
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "ptxas rejected {} for {sm}:\n{}",
                        src.name,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            eprintln!("compiled {} ({} kernels) for sm_80 and sm_90", src.name, src.kernels.len());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The gate above is real: a source with an error is rejected with NVRTC's log, and a source missing a
    /// promised entry point is caught.
    #[test]
    fn broken_kernels_are_rejected() {
        if !nvrtc_or_skip("broken_kernels_are_rejected") {
            return;
        }
        static BROKEN: KernelSource = KernelSource {
            name: "broken",
            code: "extern \"C\" __global__ void k(float *y) { y[threadIdx.x] = undefined_name; }",
            kernels: &["k"],
        };
        match compile_uncached(&BROKEN, "compute_90") {
            Err(CompileFailure::Rejected { log, .. }) => assert!(log.contains("undefined_name"), "{log}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
        static MISSING: KernelSource = KernelSource {
            name: "missing",
            code: "extern \"C\" __global__ void k(float *y) {}",
            kernels: &["k", "k2"],
        };
        assert!(matches!(compile_uncached(&MISSING, "compute_90"), Err(CompileFailure::MissingKernel { .. })));
    }
}
