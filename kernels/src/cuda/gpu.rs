//! One opened GPU: context, streams, cuBLAS handle and the loaded kernel modules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaViewMut, DeviceRepr, DriverError, LaunchConfig,
};

use super::compile::{compile, CompileFailure, Target};
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

/// A module that the driver would not load, with the way out when the cause is a driver older than NVRTC
/// (only PTX goes through the driver's JIT: a GPU newer than NVRTC knows).
fn load_failure(e: DriverError, target: Target) -> GpuError {
    use cudarc::driver::sys::CUresult;
    match e.0 {
        CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION | CUresult::CUDA_ERROR_INVALID_PTX => {
            let nvrtc = super::compile::nvrtc_version().map(|(a, b)| format!("{a}.{b}")).unwrap_or_else(|| "?".into());
            GpuError::Unavailable(format!(
                "the CUDA driver cannot load the kernels' PTX ({}, from NVRTC {nvrtc}): the driver is older than \
                 NVRTC. Update the driver, or use an NVRTC no newer than the CUDA version nvidia-smi shows",
                target.arch()
            ))
        }
        _ => GpuError::Driver(e),
    }
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
    /// Free device memory right after the context and streams were made: what the run takes is measured
    /// from here ([`Gpu::memory`](super::memory)).
    pub(super) free_at_open: usize,
    /// The most memory the run was seen holding.
    pub(super) peak_held: std::sync::atomic::AtomicUsize,
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
        // Before cuBLAS's handle, so its workspace counts as the run's.
        let (free_at_open, _) = ctx.mem_get_info()?;
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
            free_at_open,
            peak_held: Default::default(),
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
        let target = Target::for_device(self.info.compute_capability)?;
        let module = self.ctx.load_module(compile(src, target)?.into_module()).map_err(|e| load_failure(e, target))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::compile::{compile_image_uncached, supported_archs, Image};
    use crate::cuda::testing::gpu_or_skip;
    use crate::ops::activation::{Activation, CUDA as ACTIVATION};

    /// relu over a few values through a module loaded from `image`.
    fn relu_through(gpu: &Gpu, image: Image) -> Result<Vec<f32>, GpuError> {
        let module = gpu.ctx.load_module(image.into_module())?;
        let f = module.load_function("activation_forward_f32")?;
        let x = gpu.upload(&[-2.0f32, -0.5, 0.0, 0.25, 3.0])?;
        let mut y = crate::cuda::testing::poisoned(gpu, 5)?;
        let (n, code) = (5usize, Activation::Relu.code() as i32);
        let (mut yv, xv) = (y.as_view_mut(), x.as_view());
        let mut b = gpu.launch_builder(&f);
        b.arg(&mut yv).arg(&xv).arg(&n).arg(&code);
        // SAFETY: (float*, const float*, size_t, int) as activation.cu declares; both buffers hold 5 elements.
        unsafe { b.launch(gpu.elementwise(n)) }?;
        gpu.download(&y)
    }

    /// The images a device can get both load and run: machine code for its own architecture (what
    /// `Target::for_device` picks when NVRTC knows the GPU) and PTX for an older virtual architecture (the
    /// fallback for a GPU newer than NVRTC, compiled by the driver). A cubin for a later architecture is
    /// refused, as the driver refuses it.
    #[test]
    fn cuda_modules_load_as_machine_code_and_as_older_ptx() {
        let Some(gpu) = gpu_or_skip("cuda_modules_load_as_machine_code_and_as_older_ptx") else { return };
        let (major, minor) = gpu.info.compute_capability;
        let device = (major * 10 + minor) as u32;
        let supported = supported_archs().expect("NVRTC loads where a GPU test runs");
        let want = vec![0.0f32, 0.0, 0.0, 0.25, 3.0];
        if supported.contains(&device) {
            assert_eq!(Target::for_device((major, minor)).unwrap(), Target::Cubin(device));
            let cubin = compile_image_uncached(&ACTIVATION, Target::Cubin(device)).unwrap();
            assert!(matches!(cubin, Image::Cubin(_)));
            assert_eq!(relu_through(gpu, cubin).unwrap(), want, "sm_{device} cubin");
        }
        let older = supported.iter().copied().filter(|&a| a < device).max().expect("an older architecture");
        let ptx = compile_image_uncached(&ACTIVATION, Target::Ptx(older)).unwrap();
        assert_eq!(relu_through(gpu, ptx).unwrap(), want, "compute_{older} PTX");
        if let Some(later) = supported.iter().copied().find(|&a| a / 10 > device / 10) {
            let cubin = compile_image_uncached(&ACTIVATION, Target::Cubin(later)).unwrap();
            let refused = relu_through(gpu, cubin);
            assert!(refused.is_err(), "an sm_{later} cubin ran on sm_{device}");
        }
    }
}
