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

/// Longest row a warp-per-row kernel takes (32 elements per lane); longer rows get a block each.
pub const WARP_ROW_MAX: usize = 1024;
/// Most blocks a row kernel is launched with (its loop over rows is grid-stride).
const MAX_ROW_BLOCKS: usize = 1 << 16;

/// The launch of a row kernel (softmax, norms) over `rows` rows of `len` elements: `(warp, config)`. Rows of at
/// most [`WARP_ROW_MAX`] go a warp each (8 rows per block; `RowGroup<true>` in common.cuh), so short rows
/// (attention's 50 keys, a 128-wide layer norm) do not leave most of a 256-thread block idle; longer rows a
/// block each. The choice depends on the shape alone, so results do not depend on the device.
pub fn row_launch(rows: usize, len: usize) -> (bool, LaunchConfig) {
    let warp = len <= WARP_ROW_MAX;
    let per_block = if warp { BLOCK as usize / 32 } else { 1 };
    let blocks = rows.div_ceil(per_block).clamp(1, MAX_ROW_BLOCKS);
    (warp, LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
}

/// The launch of the one-block loss kernels (MSE, L1, cosine, softmax + CE's loss): one block of 1024 threads
/// whose fixed summation order (`ordered_block_sum_f64` in common.cuh) gives the same bits every run.
pub const ONE_BLOCK: LaunchConfig = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };

/// A null device pointer, passed for an absent optional buffer (the kernels test for null).
pub const NULL: u64 = 0;

/// `loss[0] = kernel(pred, target)` for an elementwise loss kernel `(float *loss, const T *pred, const float
/// *target, size_t n)` of `source` (MSE, L1), in one block ([`ONE_BLOCK`]); `kernels` are its entry points by
/// the prediction's storage type (`[f32, f16, bf16]`). `what` names the caller in the length checks.
pub fn elementwise_loss<T: super::Store>(
    gpu: &super::Gpu,
    source: &'static super::KernelSource,
    kernels: [&'static str; 3],
    what: &str,
    pred: &cudarc::driver::CudaView<T>,
    target: &cudarc::driver::CudaView<f32>,
    loss: &mut cudarc::driver::CudaViewMut<f32>,
) -> Result<(), super::GpuError> {
    let n = pred.len();
    assert_eq!(target.len(), n, "{what}: pred and target lengths differ");
    assert_eq!(loss.len(), 1, "{what}: loss must be one device scalar");
    let f = gpu.function(source, T::pick(kernels))?;
    let mut l = gpu.launch_builder(&f);
    l.arg(loss).arg(pred).arg(target).arg(&n);
    // SAFETY: (float*, const T*, const float*, size_t) as documented; loss holds 1, pred and target n
    // elements.
    unsafe { l.launch(ONE_BLOCK) }?;
    Ok(())
}

/// Row phases of a column-sum block (`COLUMN_PHASES` in common.cuh): BLOCK / 32.
const COLUMN_PHASES: usize = BLOCK as usize / 32;
/// Fewest rows per chunk of a column sum: below this a chunk's threads would idle.
const MIN_CHUNK_ROWS: usize = 64;
/// Most chunks of a column sum (the second pass adds this many partial sums per column).
const MAX_CHUNKS: usize = 256;

/// The fixed grid of the column sums over `[rows, cols]` (`column_phase_sum` in common.cuh): rows per chunk,
/// chunk count and the launch (one block per 32 columns and chunk). It depends on the shape alone, so the
/// summation order, and the rounded result, is the same on every GPU.
pub fn column_grid(rows: usize, cols: usize) -> (usize, usize, LaunchConfig) {
    const _: () = assert!(COLUMN_PHASES == 8, "common.cuh's COLUMN_PHASES");
    let per = rows.div_ceil(MAX_CHUNKS).max(MIN_CHUNK_ROWS);
    let chunks = rows.div_ceil(per).max(1);
    let cfg = LaunchConfig {
        grid_dim: (cols.div_ceil(32).max(1) as u32, chunks as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    (per, chunks, cfg)
}

/// Most arguments a kernel of ours takes (the optimizers' take 15).
pub const MAX_ARGS: usize = 24;

/// One kernel argument as the driver receives it: a device address (the builder owns the value the driver
/// reads) or a pointer to the caller's scalar (borrowed for the launch's lifetime).
#[doc(hidden)]
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    /// A device address.
    Device(cudarc::driver::sys::CUdeviceptr),
    /// A caller's scalar.
    Value(*const std::ffi::c_void, std::marker::PhantomData<&'a ()>),
}

/// A kernel launch on one stream, built argument by argument like cudarc's `LaunchArgs` but without its heap
/// allocations (three vectors per launch) and without its per-buffer events: the device runs with cudarc's
/// event tracking off ([`Gpu::open`](super::Gpu::open)), every kernel on the compute stream in issue order,
/// and the one cross-stream dependency (the batch upload) ordered explicitly.
pub struct Launch<'a> {
    stream: &'a cudarc::driver::CudaStream,
    func: &'a cudarc::driver::CudaFunction,
    args: [Arg<'a>; MAX_ARGS],
    len: usize,
}

/// What [`Launch::arg`] accepts: device buffers (slices and views) and scalars of the types our kernels take.
pub trait KernelArg<'a> {
    /// The argument as the driver receives it.
    #[doc(hidden)]
    fn kernel_arg(self, stream: &cudarc::driver::CudaStream) -> Arg<'a>;
}

macro_rules! device_arg {
    ($ty:ty, $method:ident) => {
        impl<'a, 'c, T> KernelArg<'a> for $ty {
            #[inline]
            fn kernel_arg(self, stream: &cudarc::driver::CudaStream) -> Arg<'a> {
                // The guard records nothing: no buffer carries cudarc events (tracking is off).
                let (ptr, _guard) = self.$method(stream);
                Arg::Device(ptr)
            }
        }
    };
}
device_arg!(&'a cudarc::driver::CudaSlice<T>, device_ptr);
device_arg!(&'a mut cudarc::driver::CudaSlice<T>, device_ptr_mut);
device_arg!(&'a cudarc::driver::CudaView<'c, T>, device_ptr);
device_arg!(&'a mut cudarc::driver::CudaViewMut<'c, T>, device_ptr_mut);
device_arg!(&'a cudarc::driver::CudaViewMut<'c, T>, device_ptr);

/// Makes `&T` a by-value kernel argument for each plain type listed (scalars, and `repr(C)` structs whose
/// layout matches the kernel's parameter).
macro_rules! value_arg {
    ($($ty:ty),*) => {$(
        impl<'a> $crate::cuda::launch::KernelArg<'a> for &'a $ty {
            #[inline]
            fn kernel_arg(self, _: &cudarc::driver::CudaStream) -> $crate::cuda::launch::Arg<'a> {
                $crate::cuda::launch::Arg::Value(self as *const $ty as *const std::ffi::c_void, std::marker::PhantomData)
            }
        }
    )*};
}
pub(crate) use value_arg;
value_arg!(usize, u64, i64, u32, i32, u8, f32, f64);

use cudarc::driver::{DevicePtr, DevicePtrMut};

impl<'a> Launch<'a> {
    /// A launch of `func` on `stream` with no arguments yet.
    pub fn new(stream: &'a cudarc::driver::CudaStream, func: &'a cudarc::driver::CudaFunction) -> Launch<'a> {
        Launch { stream, func, args: [Arg::Device(0); MAX_ARGS], len: 0 }
    }

    /// Appends the next kernel argument (in the kernel's parameter order).
    #[inline]
    pub fn arg(&mut self, a: impl KernelArg<'a>) -> &mut Self {
        assert!(self.len < MAX_ARGS, "a kernel launch takes at most {MAX_ARGS} arguments");
        self.args[self.len] = a.kernel_arg(self.stream);
        self.len += 1;
        self
    }

    /// Queues the kernel on the stream.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in number, order and type, and the kernel must stay
    /// inside the buffers it is given (the driver checks neither).
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), cudarc::driver::DriverError> {
        // Our systems may run on any thread of the scheduler's pool; the context must be current on it.
        self.stream.context().bind_to_thread()?;
        let mut params = [std::ptr::null_mut::<std::ffi::c_void>(); MAX_ARGS];
        for (p, a) in params.iter_mut().zip(&self.args[..self.len]) {
            *p = match a {
                // The driver reads the address out of `self.args`, which outlives this call.
                Arg::Device(ptr) => ptr as *const u64 as *mut std::ffi::c_void,
                Arg::Value(v, _) => *v as *mut std::ffi::c_void,
            };
        }
        // SAFETY: the caller vouches for the arguments; `params` holds one pointer per argument, each valid
        // until the driver has copied the values (before cuLaunchKernel returns).
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.func.cu_function(),
                cfg.grid_dim,
                cfg.block_dim,
                cfg.shared_mem_bytes,
                self.stream.cu_stream(),
                &mut params[..self.len],
            )
        }
    }
}
