//! NVRTC compilation of the kernel sources, with an on-disk cache.
//!
//! Every source is compiled with [`COMMON`] in front of it (shared loads, stores and reductions). For a
//! device, [`Target::choose`] picks what NVRTC produces: machine code (a cubin) for the device's exact
//! architecture when this NVRTC knows it, which the driver loads as it is, so it runs on any driver of the
//! same CUDA major release, even one older than NVRTC (CUDA's minor-version compatibility; PTX would need the
//! driver's JIT, which refuses PTX newer than itself); else PTX for the newest architecture NVRTC knows below
//! the device's, which the driver compiles at load time (a GPU newer than this NVRTC). The half-precision
//! headers (`cuda_fp16.h`, `cuda_bf16.h`) are not built into NVRTC, so [`include_dirs`] looks for a directory
//! holding them: the toolkit's (`CUDA_HOME`, `CUDA_PATH`, `/usr/local/cuda`), `ECSTRAIN_CUDA_INCLUDE`, or the
//! pip wheels' `nvidia/cuda_runtime/include` next to a `nvidia/cuda_nvrtc/lib` on `LD_LIBRARY_PATH`.
//!
//! The cache key is a 64-bit FNV-1a hash of the full source, the target, the options and the NVRTC
//! version, so an edited kernel or another toolkit never reuses a stale image.

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
    /// This NVRTC compiles for no architecture at or below the device's.
    #[error(
        "this GPU is sm_{device}, but NVRTC {version} compiles for {supported} only: install an NVRTC that \
         supports sm_{device} (a CUDA toolkit, or the pip wheel nvidia-cuda-nvrtc-cu12 / nvidia-cuda-nvrtc of \
         the CUDA release that nvidia-smi shows)"
    )]
    UnsupportedArch {
        /// The device's architecture, e.g. 90.
        device: u32,
        /// NVRTC's version, `major.minor`.
        version: String,
        /// The architectures NVRTC lists, as `sm_75, sm_80, ...`.
        supported: String,
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

/// The architectures this NVRTC compiles for (`nvrtcGetSupportedArchs`: 75, 80, 86, 89, 90, ...), ascending.
pub fn supported_archs() -> Option<Vec<u32>> {
    use cudarc::nvrtc::sys;
    if !super::probe::nvrtc_present() {
        return None;
    }
    let mut n = 0;
    // SAFETY: the library is present (checked above); the calls write `n` integers into a buffer of `n`.
    unsafe {
        if sys::nvrtcGetNumSupportedArchs(&mut n) != sys::nvrtcResult::NVRTC_SUCCESS || n <= 0 {
            return None;
        }
        let mut archs = vec![0; n as usize];
        if sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) != sys::nvrtcResult::NVRTC_SUCCESS {
            return None;
        }
        let mut archs: Vec<u32> = archs.into_iter().filter(|&a| a > 0).map(|a| a as u32).collect();
        archs.sort_unstable();
        Some(archs)
    }
}

/// What NVRTC produces for one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Machine code for this exact architecture (`sm_90` for 90): loaded without the driver's JIT.
    Cubin(u32),
    /// PTX for this virtual architecture (`compute_90`), compiled by the driver at load time.
    Ptx(u32),
}

impl Target {
    /// A cubin for `device` (e.g. 90 for compute capability 9.0) when NVRTC lists it in `supported`; else PTX
    /// for the newest listed architecture below it (PTX runs on later GPUs); `None` when every listed
    /// architecture is newer than the device.
    pub fn choose(device: u32, supported: &[u32]) -> Option<Target> {
        if supported.contains(&device) {
            return Some(Target::Cubin(device));
        }
        supported.iter().copied().filter(|&a| a < device).max().map(Target::Ptx)
    }

    /// NVRTC's `--gpu-architecture` value: `sm_90` or `compute_90`.
    pub fn arch(self) -> String {
        match self {
            Target::Cubin(a) => format!("sm_{a}"),
            Target::Ptx(a) => format!("compute_{a}"),
        }
    }

    /// The target for a device of compute capability `(major, minor)` with the NVRTC that is loaded.
    pub fn for_device((major, minor): (i32, i32)) -> Result<Target, CompileFailure> {
        let device = (major.max(0) * 10 + minor.max(0)) as u32;
        let supported = supported_archs().ok_or(CompileFailure::NoNvrtc)?;
        Target::choose(device, &supported).ok_or_else(|| CompileFailure::UnsupportedArch {
            device,
            version: nvrtc_version().map(|(a, b)| format!("{a}.{b}")).unwrap_or_else(|| "?".into()),
            supported: supported.iter().map(|a| format!("sm_{a}")).collect::<Vec<_>>().join(", "),
        })
    }
}

/// Whether PTX `text` defines entry point `kernel` (`.entry kernel(`).
fn ptx_defines(text: &str, kernel: &str) -> bool {
    text.contains(&format!(".entry {kernel}("))
}

/// A compiled module, as the driver loads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// PTX text ([`Target::Ptx`]).
    Ptx(String),
    /// An ELF cubin ([`Target::Cubin`]).
    Cubin(Vec<u8>),
}

impl Image {
    /// Whether the image defines entry point `kernel`: `.entry kernel(` in PTX, a `.text.kernel` section in a
    /// cubin (`extern "C"` keeps the names unmangled).
    pub fn defines(&self, kernel: &str) -> bool {
        match self {
            Image::Ptx(text) => ptx_defines(text, kernel),
            Image::Cubin(bytes) => {
                let name = format!(".text.{kernel}\0");
                bytes.starts_with(b"\x7fELF") && bytes.windows(name.len()).any(|w| w == name.as_bytes())
            }
        }
    }

    /// The module for [`cudarc::driver::CudaContext::load_module`].
    pub fn into_module(self) -> cudarc::nvrtc::Ptx {
        match self {
            Image::Ptx(text) => cudarc::nvrtc::Ptx::from_src(text),
            Image::Cubin(bytes) => cudarc::nvrtc::Ptx::from_binary(bytes),
        }
    }
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

/// Runs NVRTC on `src` for `arch` (`compute_90` or `sm_90`): the PTX, and the cubin too for an `sm_` arch.
fn run_nvrtc(src: &KernelSource, arch: &str) -> Result<(String, Option<Vec<u8>>), CompileFailure> {
    use cudarc::nvrtc::{result, sys};
    if !super::probe::nvrtc_present() {
        return Err(CompileFailure::NoNvrtc);
    }
    let text = std::ffi::CString::new(program_text(src)).expect("kernel sources hold no NUL");
    let name = std::ffi::CString::new(format!("{}.cu", src.name)).expect("source names hold no NUL");
    let failed = |log: String| CompileFailure::Rejected { name: src.name.into(), arch: arch.into(), log };
    let prog = result::create_program(&text, Some(&name)).map_err(|e| failed(format!("{e:?}")))?;
    // SAFETY: `prog` was created above from `text` and `name`, which outlive it; it is destroyed once, below,
    // whatever the outcome, and the buffers passed to NVRTC are sized by its own size queries.
    let out = unsafe {
        let run = || -> Result<(String, Option<Vec<u8>>), CompileFailure> {
            if let Err(e) = result::compile_program(prog, &options(arch)) {
                let log = result::get_program_log(prog).map(|l| c_text(&l)).unwrap_or_else(|_| format!("{e:?}"));
                return Err(failed(log));
            }
            let ptx = result::get_ptx(prog).map_err(|e| failed(format!("{e:?}")))?;
            let cubin = if arch.starts_with("sm_") {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(|e| failed(format!("{e:?}")))?;
                let mut bytes = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast()).result().map_err(|e| failed(format!("{e:?}")))?;
                Some(bytes)
            } else {
                None
            };
            Ok((c_text(&ptx), cubin))
        };
        let out = run();
        let _ = result::destroy_program(prog);
        out
    }?;
    // The PTX names every entry point, whatever the target.
    for k in src.kernels {
        if !ptx_defines(&out.0, k) {
            return Err(CompileFailure::MissingKernel { name: src.name.into(), kernel: (*k).into() });
        }
    }
    Ok(out)
}

/// NVRTC's NUL-terminated text as a String.
fn c_text(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles `src` to PTX for the virtual architecture `arch` (`compute_90`) with NVRTC, no cache, and checks
/// that every promised kernel is in it (the compile test's entry; `ptxas` assembles the result).
pub fn compile_uncached(src: &KernelSource, arch: &str) -> Result<String, CompileFailure> {
    Ok(run_nvrtc(src, arch)?.0)
}

/// Compiles `src` for `target` with NVRTC, no cache: PTX, or a cubin that defines every promised kernel.
pub fn compile_image_uncached(src: &KernelSource, target: Target) -> Result<Image, CompileFailure> {
    let (ptx, cubin) = run_nvrtc(src, &target.arch())?;
    let image = match cubin {
        Some(bytes) => Image::Cubin(bytes),
        None => Image::Ptx(ptx),
    };
    match src.kernels.iter().find(|k| !image.defines(k)) {
        Some(k) => Err(CompileFailure::MissingKernel { name: src.name.into(), kernel: (*k).into() }),
        None => Ok(image),
    }
}

/// Compiles `src` for `target`, reading and filling the disk cache (a cache that cannot be written is
/// skipped; a cached file that is not a whole image of the source is compiled again).
pub fn compile(src: &KernelSource, target: Target) -> Result<Image, CompileFailure> {
    compile_cached_in(src, target, cache_dir().as_deref())
}

/// [`compile`] with the cache in `cache` (none: always compile).
fn compile_cached_in(src: &KernelSource, target: Target, cache: Option<&Path>) -> Result<Image, CompileFailure> {
    let (major, minor) = nvrtc_version().ok_or(CompileFailure::NoNvrtc)?;
    let arch = target.arch();
    let opts = options(&arch).join(" ");
    let version = format!("{major}.{minor}");
    let key = fnv1a(&[program_text(src).as_bytes(), arch.as_bytes(), opts.as_bytes(), version.as_bytes()]);
    let ext = match target {
        Target::Cubin(_) => "cubin",
        Target::Ptx(_) => "ptx",
    };
    let path = cache.map(|d| d.join(format!("{}-{arch}-{key:016x}.{ext}", src.name)));
    if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        let cached = match target {
            Target::Cubin(_) => Some(Image::Cubin(bytes)),
            Target::Ptx(_) => String::from_utf8(bytes).ok().map(Image::Ptx),
        };
        if let Some(image) = cached.filter(|i| src.kernels.iter().all(|k| i.defines(k))) {
            return Ok(image);
        }
    }
    let image = compile_image_uncached(src, target)?;
    if let Some(p) = &path {
        let bytes: &[u8] = match &image {
            Image::Ptx(text) => text.as_bytes(),
            Image::Cubin(bytes) => bytes,
        };
        // Written to a temporary name and renamed, so a concurrent reader never sees half a file.
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let written = p.parent().map(std::fs::create_dir_all).transpose().is_ok()
            && std::fs::write(&tmp, bytes).is_ok()
            && std::fs::rename(&tmp, p).is_ok();
        if !written {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_prefer_machine_code_and_fall_back_to_older_ptx() {
        let nvrtc_12_9 = [75, 80, 86, 87, 89, 90, 100, 101, 103, 120, 121];
        assert_eq!(Target::choose(90, &nvrtc_12_9), Some(Target::Cubin(90)));
        assert_eq!(Target::choose(80, &nvrtc_12_9), Some(Target::Cubin(80)));
        // A GPU newer than this NVRTC: PTX for the newest architecture it knows, JIT-compiled by the driver.
        assert_eq!(Target::choose(130, &nvrtc_12_9), Some(Target::Ptx(121)));
        assert_eq!(Target::choose(88, &nvrtc_12_9), Some(Target::Ptx(87)));
        // Older than everything it knows: nothing to run.
        assert_eq!(Target::choose(70, &nvrtc_12_9), None);
        assert_eq!(Target::Cubin(90).arch(), "sm_90");
        assert_eq!(Target::Ptx(121).arch(), "compute_121");
    }

    #[test]
    fn images_name_their_entry_points() {
        let ptx = Image::Ptx(".visible .entry relu_f32(\n".into());
        assert!(ptx.defines("relu_f32") && !ptx.defines("relu"));
        let mut elf = b"\x7fELF....".to_vec();
        elf.extend_from_slice(b"\0.nv.info.relu_f32\0.text.relu_f32\0");
        let cubin = Image::Cubin(elf.clone());
        assert!(cubin.defines("relu_f32") && !cubin.defines("relu") && !cubin.defines("u_f32"));
        elf[0] = 0;
        assert!(!Image::Cubin(elf).defines("relu_f32"), "not an ELF file");
    }

    /// Without a GPU: NVRTC's cubin for sm_80 and sm_90 of a real source is an ELF image that names every
    /// entry point and comes back from the cache as it went in.
    #[test]
    fn cubins_compile_and_round_trip_through_the_cache() {
        if !super::super::probe::nvrtc_present() || include_dirs().is_empty() {
            eprintln!("SKIPPED cubins_compile_and_round_trip_through_the_cache: NVRTC or cuda_fp16.h not found");
            return;
        }
        let dir = std::env::temp_dir().join(format!("ecstrain-cubin-cache-{}", std::process::id()));
        let src = &crate::ops::activation::CUDA;
        for arch in [80, 90] {
            let fresh = compile_cached_in(src, Target::Cubin(arch), Some(&dir)).unwrap_or_else(|e| panic!("{e}"));
            let Image::Cubin(bytes) = &fresh else { panic!("sm_{arch} gave PTX") };
            assert!(bytes.starts_with(b"\x7fELF"));
            assert!(src.kernels.iter().all(|k| fresh.defines(k)));
            // The ELF header's flags name the architecture (their low byte, in the cubin ABI NVRTC 12 writes).
            assert_eq!(u32::from_le_bytes(bytes[48..52].try_into().unwrap()) & 0xff, arch);
            let files = std::fs::read_dir(&dir).unwrap().filter_map(Result::ok);
            let cached: Vec<_> =
                files.filter(|f| f.file_name().to_string_lossy().contains(&format!("-sm_{arch}-"))).collect();
            assert_eq!(cached.len(), 1, "one sm_{arch} cubin in the cache");
            assert_eq!(std::fs::read(cached[0].path()).unwrap(), *bytes);
            assert_eq!(compile_cached_in(src, Target::Cubin(arch), Some(&dir)).unwrap(), fresh, "read back");
        }
        // PTX for a virtual architecture, through the same path.
        let ptx = compile_cached_in(src, Target::Ptx(80), Some(&dir)).unwrap();
        assert!(matches!(&ptx, Image::Ptx(t) if t.contains(".target sm_80")), "{ptx:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hash_separates_parts_and_is_stable() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_ne!(fnv1a(&[b"relu"]), fnv1a(&[b"relv"]));
    }
}
