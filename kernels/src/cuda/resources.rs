//! What a kernel needs to launch: the block size it declares and the registers and memory ptxas gives it.
//!
//! A GPU refuses a launch whose block would need more registers than a multiprocessor holds
//! (`CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`), and nothing short of a GPU shows it at run time. So every kernel
//! declares the most threads its blocks have with `__launch_bounds__` (common.cuh's `BLOCK_THREADS` or
//! `ONE_BLOCK_THREADS`, the host's [`BLOCK`](super::launch::BLOCK) and [`ONE_BLOCK`](super::launch::ONE_BLOCK)):
//! ptxas then allots registers for that many threads, cuda-emu refuses any launch with a bigger block, and
//! the compile test reads ptxas' own account (`ptxas -v`) to check that each kernel fits its bound without
//! spilling to local memory.

use super::KernelSource;

/// Registers of one multiprocessor (and the most one block may use) on sm_80 and sm_90.
pub const REGISTERS_PER_BLOCK: u32 = 65_536;
/// Static shared memory a block may declare without opting in to more (48 KiB on every architecture).
pub const STATIC_SHARED_MAX: u32 = 48 * 1024;

/// The names a `__launch_bounds__` may use and their values, as common.cuh defines them.
pub fn bound_names() -> [(&'static str, u32); 2] {
    [("BLOCK_THREADS", super::launch::BLOCK), ("ONE_BLOCK_THREADS", super::launch::ONE_BLOCK.block_dim.0)]
}

/// Every `__global__` function of `src` with the block size it declares: `(name, threads)`. A name built by a
/// macro keeps its `##` (`activation_forward_##S`). An error names the kernel that declares no bound or one
/// this crate does not know.
pub fn declared_bounds(src: &KernelSource) -> Result<Vec<(String, u32)>, String> {
    let file = src.name;
    let mut out = Vec::new();
    let mut rest = src.code;
    while let Some(at) = rest.find("__global__") {
        rest = rest[at + "__global__".len()..].trim_start();
        let signature = &rest[..rest.find('{').unwrap_or(rest.len())];
        let Some(after_void) = rest.strip_prefix("void") else {
            return Err(format!("{file}.cu: a __global__ function that does not return void: {}", signature.trim()));
        };
        let Some(bounds) = after_void.trim_start().strip_prefix("__launch_bounds__") else {
            return Err(format!(
                "{file}.cu: kernel `{}` declares no __launch_bounds__ (every kernel must: BLOCK_THREADS or \
                 ONE_BLOCK_THREADS)",
                signature.trim()
            ));
        };
        let bounds = bounds.trim_start();
        let close = bounds.find(')').filter(|_| bounds.starts_with('('));
        let close =
            close.ok_or_else(|| format!("{file}.cu: a malformed __launch_bounds__ in `{}`", signature.trim()))?;
        let expr = bounds[1..close].trim();
        let tail = &bounds[close + 1..];
        let name_end = tail.find('(').unwrap_or(tail.len());
        let name = tail[..name_end].trim().to_string();
        let known = bound_names().iter().find(|(n, _)| *n == expr).map(|&(_, v)| v);
        let threads = known.or_else(|| expr.parse().ok()).ok_or_else(|| {
            format!("{file}.cu: kernel {name}: __launch_bounds__({expr}) is neither a number nor BLOCK_THREADS / ONE_BLOCK_THREADS")
        })?;
        out.push((name, threads));
        rest = &tail[name_end..];
    }
    Ok(out)
}

/// The declared block size of entry point `kernel`: an exact name first, then a macro's
/// (`activation_forward_##S` stands for `activation_forward_<anything>`).
pub fn bound_of(declared: &[(String, u32)], kernel: &str) -> Option<u32> {
    let exact = declared.iter().find(|(n, _)| n == kernel);
    let by_macro = || {
        declared.iter().find(|(n, _)| {
            n.split_once("##").is_some_and(|(prefix, _)| kernel.starts_with(prefix) && kernel.len() > prefix.len())
        })
    };
    exact.or_else(by_macro).map(|&(_, t)| t)
}

/// What ptxas reports for one compiled entry point (`ptxas -v`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelUsage {
    /// The entry point.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block, bytes.
    pub shared_bytes: u32,
    /// Per-thread stack frame (local memory), bytes.
    pub stack_bytes: u32,
    /// Bytes stored to and loaded from local memory because the registers ran out.
    pub spill_bytes: u32,
}

/// Parses the `ptxas -v` account of one module: one [`KernelUsage`] per "Compiling entry function" block.
pub fn parse_ptxas_verbose(text: &str) -> Vec<KernelUsage> {
    fn number_before(line: &str, unit: &str) -> Option<u32> {
        let end = line.find(unit)?;
        line[..end].split_whitespace().last()?.parse().ok()
    }
    let mut out: Vec<KernelUsage> = Vec::new();
    for line in text.lines() {
        if let Some(at) = line.find("Compiling entry function '") {
            let rest = &line[at + "Compiling entry function '".len()..];
            let name = rest[..rest.find('\'').unwrap_or(rest.len())].to_string();
            out.push(KernelUsage { kernel: name, ..Default::default() });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
            k.spill_bytes = number_before(line, "bytes spill stores").unwrap_or(0)
                + number_before(line, "bytes spill loads").unwrap_or(0);
        } else if line.contains("Used ") && line.contains("registers") {
            k.registers = number_before(line, "registers").unwrap_or(0);
            k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// Whether a kernel with this usage launches in blocks of `threads` on sm_80 / sm_90, and runs without
/// local-memory traffic: the block's registers (allotted per warp in units of 256) within
/// [`REGISTERS_PER_BLOCK`], its static shared memory within [`STATIC_SHARED_MAX`], no stack frame and no spills.
pub fn check_fits(usage: &KernelUsage, threads: u32) -> Result<(), String> {
    let per_warp = (usage.registers * 32).div_ceil(256) * 256;
    let block_registers = per_warp * threads.div_ceil(32);
    let k = &usage.kernel;
    if block_registers > REGISTERS_PER_BLOCK {
        return Err(format!(
            "{k}: {} registers per thread x {threads} threads = {block_registers} > {REGISTERS_PER_BLOCK}: a GPU \
             refuses the launch",
            usage.registers
        ));
    }
    if usage.shared_bytes > STATIC_SHARED_MAX {
        return Err(format!("{k}: {} bytes of static shared memory > {STATIC_SHARED_MAX}", usage.shared_bytes));
    }
    if usage.stack_bytes > 0 || usage.spill_bytes > 0 {
        return Err(format!(
            "{k}: uses local memory ({} bytes stack frame, {} bytes spilled): slow on every GPU",
            usage.stack_bytes, usage.spill_bytes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel of every source declares a bound this crate knows, every entry point a source lists has
    /// one, and common.cuh defines the bounds' names as the host's launch constants.
    #[test]
    fn every_kernel_declares_its_launch_bound() {
        for src in super::super::source::ALL {
            let declared = declared_bounds(src).unwrap_or_else(|e| panic!("{e}"));
            assert!(!declared.is_empty(), "{}.cu declares no kernel", src.name);
            for kernel in src.kernels {
                let bound =
                    bound_of(&declared, kernel).unwrap_or_else(|| panic!("{}: no bound for {kernel}", src.name));
                assert!(
                    bound_names().iter().any(|&(_, v)| v == bound),
                    "{kernel}: bound {bound} is not one the host launches with"
                );
            }
        }
        for (name, value) in bound_names() {
            let line = format!("#define {name} {value}\n");
            assert!(super::super::compile::COMMON.contains(&line), "common.cuh must say `{}`", line.trim());
        }
    }

    #[test]
    fn a_kernel_without_a_bound_is_named() {
        static NONE: KernelSource = KernelSource {
            name: "unbounded",
            code: "extern \"C\" __global__ void __launch_bounds__(BLOCK_THREADS) a(float *y) {}\n\
                   extern \"C\" __global__ void b(float *y) {}",
            kernels: &["a", "b"],
        };
        let e = declared_bounds(&NONE).unwrap_err();
        assert!(e.contains("unbounded.cu") && e.contains("`void b(float *y)`"), "{e}");
        static ODD: KernelSource = KernelSource {
            name: "odd",
            code: "extern \"C\" __global__ void __launch_bounds__(SOME_MACRO) a(float *y) {}",
            kernels: &["a"],
        };
        assert!(declared_bounds(&ODD).unwrap_err().contains("SOME_MACRO"));
    }

    #[test]
    fn bounds_of_plain_and_macro_names() {
        static SRC: KernelSource = KernelSource {
            name: "m",
            code: "#define K(S) extern \"C\" __global__ void __launch_bounds__(ONE_BLOCK_THREADS) \
                   act_forward_##S(float *y) {}\n\
                   extern \"C\" __global__ void __launch_bounds__(64) act_forward_warp(float *y) {}",
            kernels: &[],
        };
        let d = declared_bounds(&SRC).unwrap();
        assert_eq!(d, vec![("act_forward_##S".to_string(), 1024), ("act_forward_warp".to_string(), 64)]);
        assert_eq!(bound_of(&d, "act_forward_warp"), Some(64));
        assert_eq!(bound_of(&d, "act_forward_f16"), Some(1024));
        assert_eq!(bound_of(&d, "other"), None);
    }

    /// The parser on ptxas 12.9's own words, and the fit rule on both sides of each limit.
    #[test]
    fn ptxas_accounts_are_read_and_checked() {
        let text = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'attn_small_backward_f32' for 'sm_80'\n\
            ptxas info    : Function properties for attn_small_backward_f32\n\
            \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 72 registers, used 1 barriers, 36864 bytes smem, 420 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'k2' for 'sm_80'\n\
            ptxas info    : Function properties for k2\n\
            \x20   256 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 18 registers, used 0 barriers, 388 bytes cmem[0]\n";
        let u = parse_ptxas_verbose(text);
        assert_eq!(
            u,
            vec![
                KernelUsage {
                    kernel: "attn_small_backward_f32".into(),
                    registers: 72,
                    shared_bytes: 36864,
                    stack_bytes: 0,
                    spill_bytes: 0
                },
                KernelUsage { kernel: "k2".into(), registers: 18, shared_bytes: 0, stack_bytes: 256, spill_bytes: 20 },
            ]
        );
        assert!(check_fits(&u[0], 256).is_ok());
        // 72 registers x 1024 threads needs 73728 registers.
        assert!(check_fits(&u[0], 1024).unwrap_err().contains("refuses the launch"));
        assert!(check_fits(&u[1], 32).unwrap_err().contains("local memory"));
        let full = KernelUsage { kernel: "f".into(), registers: 64, ..Default::default() };
        assert!(check_fits(&full, 1024).is_ok());
        let over = KernelUsage { registers: 65, ..full.clone() };
        assert!(check_fits(&over, 1024).is_err());
        let smem = KernelUsage { shared_bytes: STATIC_SHARED_MAX + 4, ..full };
        assert!(check_fits(&smem, 32).unwrap_err().contains("shared memory"));
    }
}
