//! Launch geometry shared by the kernels' host wrappers.

use cudarc::driver::LaunchConfig;

/// Threads per block of the element-wise and row kernels (a multiple of 32, as `block_sum` needs).
pub const BLOCK: u32 = 256;

/// A grid-stride launch over `n` elements: enough blocks to fill the device (`sms` multiprocessors, 8
/// resident blocks each), never more than the work needs.
pub fn elementwise(n: usize, sms: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, sms * 8);
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One block per row for `rows` rows (row reductions: softmax, norms, losses).
pub fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}
