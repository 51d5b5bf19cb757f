//! NVRTC compilation of the kernel sources, with an on-disk PTX cache.
//!
//! Every source is compiled with [`COMMON`] in front of it (shared loads, stores and reductions) for one
//! virtual architecture (`compute_80`, `compute_90`, ...). The half-precision headers (`cuda_fp16.h`,
//! `cuda_bf16.h`) are not built into NVRTC, so [`include_dirs`] looks for a directory holding them: the
//! toolkit's (`CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda`), `ECSTRAIN_CUDA_INCLUDE`, or the pip wheels'
//! `nvidia/cuda_runtime/include` next to a `nvidia/cuda_nvrtc/lib` on `LD_LIBRARY_PATH`.
//!
//! The cache key is a 64-bit FNV-1a hash of the full source, the architecture, the options and the NVRTC
//! version, so an edited kernel or another toolkit never reuses stale PTX.

use std::path::{Path, PathBuf};

use super::source::KernelSource;

/// Device helpers prepended to every kernel source.
pub const COMMON: &str = include_str!("common.cuh");

/// Why a kernel could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileFailure {
    /// NVRTC is not installed.
    #[error(
        "NVRTC (libnvrtc.so) could not be loaded: install the CUDA toolkit, or `pip install nvidia-cuda-nvrtc-cu12` \
         and put its lib directory on LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    /// The compiler rejected the source.
    #[error("NVRTC could not compile kernel source `{name}` for {arch}:\n{log}")]
    Rejected {
        /// The source's name.
        name: String,
        /// The architecture.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// The compiled PTX lacks a kernel the source promises.
    #[error("kernel source `{name}` compiled but defines no `{kernel}` entry point")]
    MissingKernel {
        /// The source's name.
        name: String,
        /// The missing function.
        kernel: String,
    },
}

/// Directories that hold `cuda_fp16.h`, in search order.
pub fn include_dirs() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(v) = std::env::var("ECSTRAIN_CUDA_INCLUDE") {
        candidates.extend(std::env::split_paths(&v));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Ok(v) = std::env::var(var) {
            candidates.push(Path::new(&v).join("include"));
        }
    }
    candidates.push("/usr/local/cuda/include".into());
    // pip wheels: .../nvidia/cuda_nvrtc/lib on the library path -> .../nvidia/cuda_runtime/include.
    if let Ok(v) = std::env::var("LD_LIBRARY_PATH") {
        for dir in std::env::split_paths(&v) {
            candidates.push(dir.join("../../cuda_runtime/include"));
            candidates.push(dir.join("../include"));
        }
    }
    let mut found: Vec<PathBuf> = Vec::new();
    for c in candidates {
        if c.join("cuda_fp16.h").is_file() {
            let c = c.canonicalize().unwrap_or(c);
            if !found.contains(&c) {
                found.push(c);
            }
        }
    }
    found
}

/// The NVRTC version as (major, minor), when the library loads.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !super::probe::nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); the call only writes the two integers.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (rc == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// The full program NVRTC sees for `src`.
pub fn program_text(src: &KernelSource) -> String {
    format!("#line 1 \"common.cuh\"\n{COMMON}\n#line 1 \"{}.cu\"\n{}", src.name, src.code)
}

/// NVRTC options for `arch` (e.g. `compute_90`).
fn options(arch: &str) -> Vec<String> {
    let mut o = vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string()];
    o.extend(include_dirs().iter().map(|d| format!("--include-path={}", d.display())));
    o
}

/// 64-bit FNV-1a: a stable hash (std's hasher may change between Rust releases).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff; // separates the parts
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Where compiled PTX is cached: `ECSTRAIN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ecstrain/kernels`, else
/// `~/.cache/ecstrain/kernels`; `None` when no such directory can be named.
pub fn cache_dir() -> Option<PathBuf> {
    if let Ok(v) = std::env::var("ECSTRAIN_KERNEL_CACHE") {
        return Some(v.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("ecstrain").join("kernels"))
}

/// Compiles `src` for `arch` with NVRTC (no cache) and checks that every promised kernel is in the PTX.
pub fn compile_uncached(src: &KernelSource, arch: &str) -> Result<String, CompileFailure> {
    if !super::probe::nvrtc_present() {
        return Err(CompileFailure::NoNvrtc);
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: options(arch),
        name: Some(format!("{}.cu", src.name)),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(program_text(src), opts).map_err(|e| {
        let log = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        };
        CompileFailure::Rejected { name: src.name.into(), arch: arch.into(), log }
    })?;
    let text = ptx.to_src();
    for k in src.kernels {
        // A PTX entry point reads `.entry name(`; `extern "C"` keeps the name unmangled.
        if !text.contains(&format!(".entry {k}(")) {
            return Err(CompileFailure::MissingKernel { name: src.name.into(), kernel: (*k).into() });
        }
    }
    Ok(text)
}

/// Compiles `src` for `arch`, reading and filling the disk cache (a cache that cannot be written is skipped).
pub fn compile(src: &KernelSource, arch: &str) -> Result<String, CompileFailure> {
    let (major, minor) = nvrtc_version().ok_or(CompileFailure::NoNvrtc)?;
    let opts = options(arch).join(" ");
    let version = format!("{major}.{minor}");
    let key = fnv1a(&[program_text(src).as_bytes(), arch.as_bytes(), opts.as_bytes(), version.as_bytes()]);
    let path = cache_dir().map(|d| d.join(format!("{}-{arch}-{key:016x}.ptx", src.name)));
    if let Some(p) = &path {
        if let Ok(text) = std::fs::read_to_string(p) {
            if src.kernels.iter().all(|k| text.contains(&format!(".entry {k}("))) {
                return Ok(text);
            }
        }
    }
    let text = compile_uncached(src, arch)?;
    if let Some(p) = &path {
        // Written to a temporary name and renamed, so a concurrent reader never sees half a file.
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let written = p.parent().map(std::fs::create_dir_all).transpose().is_ok()
            && std::fs::write(&tmp, &text).is_ok()
            && std::fs::rename(&tmp, p).is_ok();
        if !written {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_separates_parts_and_is_stable() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_ne!(fnv1a(&[b"relu"]), fnv1a(&[b"relv"]));
    }
}
