//! One opened GPU: context, streams, cuBLAS handle and the loaded kernel modules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaViewMut, DeviceRepr, DriverError, LaunchConfig,
};

use super::compile::{compile, CompileFailure};
use super::launch::Launch;
use super::probe::{nvrtc_present, probe, GpuInfo};
use super::source::KernelSource;

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable device (no driver, no GPU, bad ordinal): a user-facing message.
    #[error("{0}")]
    Unavailable(String),
    /// A kernel source did not compile.
    #[error(transparent)]
    Compile(#[from] CompileFailure),
    /// A driver call failed.
    #[error("CUDA driver error: {0:?}")]
    Driver(DriverError),
    /// A cuBLAS call failed.
    #[error("cuBLAS error: {0:?}")]
    Blas(cudarc::cublas::result::CublasError),
}

impl From<DriverError> for GpuError {
    fn from(e: DriverError) -> Self {
        GpuError::Driver(e)
    }
}

impl From<cudarc::cublas::result::CublasError> for GpuError {
    fn from(e: cudarc::cublas::result::CublasError) -> Self {
        GpuError::Blas(e)
    }
}

/// The precision of every matrix product on a device (`run.amp`'s autocast): f32 throughout, or inputs
/// rounded to f16 / bf16 (tensor cores) with f32 accumulation and an f32 result, as `torch.autocast` runs
/// its matmul-type ops (linear, convolution, bmm and attention products) from f32 master weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// f32 inputs, f32 products (SGEMM).
    #[default]
    F32,
    /// Inputs rounded to IEEE half precision.
    F16,
    /// Inputs rounded to bfloat16.
    Bf16,
    /// f32 inputs and output on TF32 tensor cores (`run.tf32`: PyTorch's `allow_tf32` flags; the inputs keep
    /// 10 mantissa bits inside the product, accumulation is f32).
    Tf32,
}

/// The products' precision and the half-precision copies of their two inputs (grown on first use to the
/// largest operand, then reused: no allocation in a steady-state step).
#[derive(Default)]
pub(crate) struct MatmulState {
    pub(crate) precision: MatmulPrecision,
    pub(crate) f16: [Option<CudaSlice<half::f16>>; 2],
    pub(crate) bf16: [Option<CudaSlice<half::bf16>>; 2],
}

/// An opened device. Kernels run on [`Gpu::stream`] in issue order; input copies run on
/// [`Gpu::copy_stream`] so they overlap compute.
pub struct Gpu {
    /// What the driver reported when the device was probed.
    pub info: GpuInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    copy_stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// Loaded entry points by (source name, kernel name); a source is compiled and loaded whole on first use.
    functions: Mutex<HashMap<(&'static str, &'static str), CudaFunction>>,
    matmul: Mutex<MatmulState>,
    scratch: Mutex<Option<CudaSlice<f32>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("info", &self.info).finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens `cuda:ordinal`, after checking (without panicking) that the driver, the device and NVRTC exist.
    pub fn open(ordinal: usize) -> Result<Gpu, GpuError> {
        let info = probe(ordinal).map_err(GpuError::Unavailable)?;
        if !nvrtc_present() {
            return Err(CompileFailure::NoNvrtc.into());
        }
        let ctx = CudaContext::new(ordinal)?;
        // No per-buffer events: cudarc's tracking would add an event record and stream waits to every launch
        // (about 6 driver calls per kernel, measured on cuda-emu), and allocate. Kernels and products all run on
        // the compute stream in issue order; the batch upload, the one copy on another stream, is ordered with
        // explicit events (`systems::device::systems::gpu_upload_batch`). It must be off before any buffer
        // exists: a buffer created while it is on keeps its events.
        // SAFETY: every use of a second stream orders itself against the compute stream (see above).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let copy_stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        Ok(Gpu {
            info,
            ctx,
            stream,
            copy_stream,
            blas,
            functions: Mutex::new(HashMap::new()),
            matmul: Mutex::new(MatmulState::default()),
            scratch: Mutex::new(None),
        })
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The compute stream every kernel and cuBLAS call is issued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The stream host-to-device input copies run on.
    pub fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.copy_stream
    }

    /// The cuBLAS handle (bound to the compute stream).
    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// Entry point `kernel` of `src`, compiling (or reading from the cache) and loading the source first.
    pub fn function(&self, src: &'static KernelSource, kernel: &'static str) -> Result<CudaFunction, GpuError> {
        let mut map = self.functions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(&(src.name, kernel)) {
            return Ok(f.clone());
        }
        let ptx = compile(src, &self.info.arch())?;
        let module = self.ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
        for k in src.kernels {
            map.insert((src.name, *k), module.load_function(k)?);
        }
        map.get(&(src.name, kernel))
            .cloned()
            .ok_or_else(|| CompileFailure::MissingKernel { name: src.name.into(), kernel: kernel.into() }.into())
    }

    /// Sets the precision of every later matrix product on this device (see [`MatmulPrecision`]).
    pub fn set_matmul_precision(&self, precision: MatmulPrecision) {
        self.matmul_state().precision = precision;
    }

    /// The precision of this device's matrix products.
    pub fn matmul_precision(&self) -> MatmulPrecision {
        self.matmul_state().precision
    }

    pub(crate) fn matmul_state(&self) -> std::sync::MutexGuard<'_, MatmulState> {
        self.matmul.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with a device scratch buffer of at least `len` elements, for an op's intermediate results
    /// within one call (the convolution's per-sample weight-gradient products). The buffer grows on first
    /// need and is then reused, so a steady-state step allocates nothing; reuse is safe because every op
    /// runs on the compute stream in issue order, so one op's last use precedes the next op's first write on
    /// the device. Not re-entrant: `f` must not ask for the scratch again.
    pub fn with_scratch<R>(
        &self,
        len: usize,
        f: impl FnOnce(&mut CudaViewMut<'_, f32>) -> Result<R, GpuError>,
    ) -> Result<R, GpuError> {
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|b| b.len() < len) {
            // The old buffer is freed in stream order, after the work already queued that reads it.
            *guard = Some(self.stream.alloc_zeros(len.max(1))?);
        }
        let buf = guard.as_mut().expect("allocated above");
        f(&mut buf.slice_mut(..len))
    }

    /// A grid-stride launch over `n` elements sized to this device.
    pub fn elementwise(&self, n: usize) -> LaunchConfig {
        super::launch::elementwise(n, self.info.multiprocessors)
    }

    /// A launch of `f` on the compute stream (arguments added with [`Launch::arg`]).
    pub fn launch_builder<'a>(&'a self, f: &'a CudaFunction) -> Launch<'a> {
        Launch::new(&self.stream, f)
    }

    /// Copies `host` into a new device buffer (compute stream).
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, GpuError> {
        Ok(self.stream.clone_htod(host)?)
    }

    /// Copies `dev` back into a new host vector (waits for the compute stream).
    pub fn download<T: DeviceRepr>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>, GpuError> {
        Ok(self.stream.clone_dtoh(dev)?)
    }

    /// Waits for every kernel issued so far.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        Ok(self.stream.synchronize()?)
    }
}
