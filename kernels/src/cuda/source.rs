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
    &crate::optim::loss_scale::CUDA,
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

    /// Assembles `ptx` for `sm` with `ptxas -v` in `dir`: ptxas' account of the module's kernels, or its error.
    fn assemble(
        ptxas: &std::path::Path,
        dir: &std::path::Path,
        name: &str,
        sm: &str,
        ptx: &str,
    ) -> Result<String, String> {
        let file = dir.join(format!("{name}-{sm}.ptx"));
        std::fs::write(&file, ptx).unwrap();
        let out = std::process::Command::new(ptxas)
            .arg(format!("-arch={sm}"))
            .arg("-v")
            .arg(&file)
            .arg("-o")
            .arg(file.with_extension("cubin"))
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("ptxas rejected {name} for {sm}:\n{text}"))
        }
    }

    /// Every kernel source compiles with NVRTC for sm_80 and sm_90 and defines every entry point it lists.
    /// When `ptxas` is found it also assembles to a cubin, and ptxas' account of each kernel must fit the block
    /// size the kernel declares (registers, static shared memory) with no local memory
    /// ([`resources::check_fits`](crate::cuda::resources::check_fits)).
    #[test]
    fn every_kernel_source_compiles() {
        use crate::cuda::resources::{bound_of, check_fits, declared_bounds, parse_ptxas_verbose};
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
        let mut misfits = Vec::new();
        for src in ALL {
            assert!(names.insert(src.name), "two sources are named {}", src.name);
            let declared = declared_bounds(src).unwrap_or_else(|e| panic!("{e}"));
            let mut most = (0u32, 0u32); // registers, static shared bytes
            for (arch, sm) in ARCHES {
                let ptx = compile_uncached(src, arch).unwrap_or_else(|e| panic!("{e}"));
                let Some(ptxas) = &ptxas else { continue };
                let account = assemble(ptxas, &dir, src.name, sm, &ptx).unwrap_or_else(|e| panic!("{e}"));
                let usage = parse_ptxas_verbose(&account);
                for kernel in src.kernels {
                    let Some(u) = usage.iter().find(|u| u.kernel == *kernel) else {
                        panic!("ptxas' account of {} for {sm} does not mention {kernel}:\n{account}", src.name)
                    };
                    let threads = bound_of(&declared, kernel).expect("every_kernel_declares_its_launch_bound");
                    if let Err(e) = check_fits(u, threads) {
                        misfits.push(format!("{sm} {e}"));
                    }
                    most = (most.0.max(u.registers), most.1.max(u.shared_bytes));
                }
            }
            let fit = if ptxas.is_some() {
                format!("; at most {} registers per thread, {} bytes static shared memory", most.0, most.1)
            } else {
                String::new()
            };
            eprintln!("compiled {} ({} kernels) for sm_80 and sm_90{fit}", src.name, src.kernels.len());
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(misfits.is_empty(), "kernels that do not fit their launch bounds:\n{}", misfits.join("\n"));
    }

    /// The resource check is real: ptxas' account of a kernel that keeps an array in local memory, and of one
    /// whose registers cannot fit its declared 1024 threads, are both rejected.
    #[test]
    fn kernels_that_do_not_fit_are_rejected() {
        use crate::cuda::resources::{check_fits, parse_ptxas_verbose};
        if !nvrtc_or_skip("kernels_that_do_not_fit_are_rejected") {
            return;
        }
        let Some(ptxas) = find_ptxas() else {
            eprintln!("SKIPPED kernels_that_do_not_fit_are_rejected: ptxas not found");
            return;
        };
        // An array indexed at run time lives in local memory (a stack frame).
        static LOCAL: KernelSource = KernelSource {
            name: "local_array",
            code: "extern \"C\" __global__ void __launch_bounds__(BLOCK_THREADS) k(float *y, int i) {\n\
                   float a[256];\n for (int j = 0; j < 256; ++j) a[j] = y[j];\n a[i & 255] += 1.0f;\n\
                   float s = 0.0f;\n for (int j = 0; j < 256; ++j) s += a[j] * j;\n y[threadIdx.x] = s;\n}",
            kernels: &["k"],
        };
        let dir = std::env::temp_dir().join(format!("ecstrain-misfit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ptx = compile_uncached(&LOCAL, "compute_90").unwrap_or_else(|e| panic!("{e}"));
        let usage = parse_ptxas_verbose(&assemble(&ptxas, &dir, LOCAL.name, "sm_90", &ptx).unwrap());
        assert_eq!(usage.len(), 1, "{usage:?}");
        assert!(usage[0].stack_bytes > 0, "{usage:?}");
        let e = check_fits(&usage[0], 256).unwrap_err();
        assert!(e.contains("local memory"), "{e}");
        // Without a bound ptxas may use up to 255 registers: 64 live accumulators need far more than the 64 a
        // 1024-thread block allows.
        static GREEDY: KernelSource = KernelSource {
            name: "greedy",
            code: "extern \"C\" __global__ void __launch_bounds__(BLOCK_THREADS) k(float *y, const float *x, int n) {\n\
                   float a[96];\n#pragma unroll\n for (int j = 0; j < 96; ++j) a[j] = x[j * n + threadIdx.x];\n\
                   for (int r = 0; r < n; ++r) {\n#pragma unroll\n for (int j = 0; j < 96; ++j) a[j] = a[j] * a[(j + 1) % 96] + x[r];\n }\n\
                   float s = 0.0f;\n#pragma unroll\n for (int j = 0; j < 96; ++j) s += a[j];\n y[threadIdx.x] = s;\n}",
            kernels: &["k"],
        };
        let ptx = compile_uncached(&GREEDY, "compute_90").unwrap_or_else(|e| panic!("{e}"));
        let usage = parse_ptxas_verbose(&assemble(&ptxas, &dir, GREEDY.name, "sm_90", &ptx).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(usage[0].registers > 64, "{usage:?}");
        assert!(check_fits(&usage[0], 256).is_ok(), "{usage:?}");
        let e = check_fits(&usage[0], 1024).unwrap_err();
        assert!(e.contains("refuses the launch"), "{e}");
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
