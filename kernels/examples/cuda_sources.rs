//! Writes every kernel source of `cuda::source::ALL` as NVRTC sees it (common.cuh prepended) into a folder,
//! one `<name>.cu` per source with its entry points in `<name>.kernels` (one per line): the input of the CPU
//! emulator's build (tools/cuda-emu/build.sh).
//!
//! usage: cargo run -p ecstrain-kernels --example cuda_sources -- DIR

use ecstrain_kernels::cuda::compile::program_text;
use ecstrain_kernels::cuda::source::ALL;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: cuda_sources DIR");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cuda_sources: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    for src in ALL {
        let path = dir.join(format!("{}.cu", src.name));
        let list = dir.join(format!("{}.kernels", src.name));
        let written =
            std::fs::write(&path, program_text(src)).and_then(|_| std::fs::write(&list, src.kernels.join("\n")));
        if let Err(e) = written {
            eprintln!("cuda_sources: cannot write into {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
    println!("{} kernel sources written to {}", ALL.len(), dir.display());
}
