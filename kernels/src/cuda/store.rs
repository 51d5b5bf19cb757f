//! Storage types of device activations: f32, or f16 / bf16 under autocast (`run.amp`), as `torch.autocast`
//! stores the outputs of its matmul-type ops in half precision. Arithmetic and accumulation stay f32 whatever
//! the storage (the kernels load and store through `common.cuh`'s `ld` / `st`); parameters, their gradients
//! and optimizer state are always f32.
//!
//! Kernels that serve several storage types are generic over [`Store`] on the host and pick their entry
//! point with [`Store::pick`]; a buffer whose type is only known at run time (an activation planned per
//! value) is an [`AnyBuf`], and the [`any_view!`](crate::any_view) family of macros expands one generic
//! call into an arm per type.

use cudarc::cublas::sys::cudaDataType_t;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};

use super::GpuError;

/// The element type a device activation is stored in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// IEEE single precision.
    #[default]
    F32 = 0,
    /// IEEE half precision.
    F16 = 1,
    /// bfloat16.
    Bf16 = 2,
}

impl StoreKind {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StoreKind::F32 => 4,
            StoreKind::F16 | StoreKind::Bf16 => 2,
        }
    }

    /// The name used in kernel entry points and messages (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        ["f32", "f16", "bf16"][self as usize]
    }
}

/// An element type device activations can be stored in.
pub trait Store: DeviceRepr + ValidAsZeroBits + Copy + Unpin + Send + Sync + 'static {
    /// The matching [`StoreKind`].
    const KIND: StoreKind;
    /// Its cuBLAS data type.
    const CUDA_TYPE: cudaDataType_t;

    /// The entry point of this type among a kernel's `[f32, f16, bf16]` instantiations.
    fn pick(names: [&'static str; 3]) -> &'static str {
        names[Self::KIND as usize]
    }

    /// `v`'s typed view when it holds this type.
    fn of<'b, 'a>(v: &'b AnyView<'a>) -> Option<&'b CudaView<'a, Self>>;

    /// `v`'s typed view when it holds this type, mutably.
    fn of_mut<'b, 'a>(v: &'b mut AnyViewMut<'a>) -> Option<&'b mut CudaViewMut<'a, Self>>;
}

impl Store for f32 {
    const KIND: StoreKind = StoreKind::F32;
    const CUDA_TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_32F;

    fn of<'b, 'a>(v: &'b AnyView<'a>) -> Option<&'b CudaView<'a, Self>> {
        match v {
            AnyView::F32(v) => Some(v),
            _ => None,
        }
    }

    fn of_mut<'b, 'a>(v: &'b mut AnyViewMut<'a>) -> Option<&'b mut CudaViewMut<'a, Self>> {
        match v {
            AnyViewMut::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl Store for f16 {
    const KIND: StoreKind = StoreKind::F16;
    const CUDA_TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_16F;

    fn of<'b, 'a>(v: &'b AnyView<'a>) -> Option<&'b CudaView<'a, Self>> {
        match v {
            AnyView::F16(v) => Some(v),
            _ => None,
        }
    }

    fn of_mut<'b, 'a>(v: &'b mut AnyViewMut<'a>) -> Option<&'b mut CudaViewMut<'a, Self>> {
        match v {
            AnyViewMut::F16(v) => Some(v),
            _ => None,
        }
    }
}

impl Store for bf16 {
    const KIND: StoreKind = StoreKind::Bf16;
    const CUDA_TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_16BF;

    fn of<'b, 'a>(v: &'b AnyView<'a>) -> Option<&'b CudaView<'a, Self>> {
        match v {
            AnyView::Bf16(v) => Some(v),
            _ => None,
        }
    }

    fn of_mut<'b, 'a>(v: &'b mut AnyViewMut<'a>) -> Option<&'b mut CudaViewMut<'a, Self>> {
        match v {
            AnyViewMut::Bf16(v) => Some(v),
            _ => None,
        }
    }
}

/// The names of a converting kernel's `FOR_STORE_PAIRS` instantiations, in [`pick_pair`]'s order:
/// `store_pairs!("ln_forward")` is `["ln_forward_f32_f32", "ln_forward_f32_f16", ...]`.
#[macro_export]
macro_rules! store_pairs {
    ($base:literal) => {
        [
            concat!($base, "_f32_f32"),
            concat!($base, "_f32_f16"),
            concat!($base, "_f16_f32"),
            concat!($base, "_f16_f16"),
            concat!($base, "_f32_bf16"),
            concat!($base, "_bf16_f32"),
            concat!($base, "_bf16_bf16"),
        ]
    };
}

/// The entry point of a kernel converting between storage types, for input type `X` and output type `Y`,
/// among its instantiations in common.cuh's `FOR_STORE_PAIRS` order: `[f32→f32, f32→f16, f16→f32,
/// f16→f16, f32→bf16, bf16→f32, bf16→bf16]`.
///
/// # Panics
/// On an f16 beside a bf16: one autocast type is in force at a time, so the storage plan never pairs them.
pub fn pick_pair<X: Store, Y: Store>(names: [&'static str; 7]) -> &'static str {
    use StoreKind::{Bf16, F16, F32};
    let i = match (X::KIND, Y::KIND) {
        (F32, F32) => 0,
        (F32, F16) => 1,
        (F16, F32) => 2,
        (F16, F16) => 3,
        (F32, Bf16) => 4,
        (Bf16, F32) => 5,
        (Bf16, Bf16) => 6,
        (x, y) => panic!("no kernel converts {} storage to {}: one autocast type at a time", x.name(), y.name()),
    };
    names[i]
}

/// `v` as the f32 view it is when `T` is f32 (`None` otherwise): lets generic code hand an f32-typed
/// operand to an f32-only routine.
pub fn as_f32<'a, T: Store>(v: &'a CudaView<'_, T>) -> Option<CudaView<'a, f32>> {
    // SAFETY: T is f32 (same size, same bits), so the view is reinterpreted as itself.
    (T::KIND == StoreKind::F32).then(|| unsafe { v.transmute::<f32>(v.len()) }.expect("same element size"))
}

/// `v` as the f32 view it is when `T` is f32 (`None` otherwise), mutable.
pub fn as_f32_mut<'a, T: Store>(v: &'a mut CudaViewMut<'_, T>) -> Option<CudaViewMut<'a, f32>> {
    let len = v.len();
    // SAFETY: as in `as_f32`.
    (T::KIND == StoreKind::F32).then(|| unsafe { v.transmute_mut::<f32>(len) }.expect("same element size"))
}

/// A device buffer whose element type is chosen at run time (an activation or its gradient).
#[derive(Debug)]
pub enum AnyBuf {
    /// f32 storage.
    F32(CudaSlice<f32>),
    /// f16 storage.
    F16(CudaSlice<f16>),
    /// bf16 storage.
    Bf16(CudaSlice<bf16>),
}

/// A borrowed range of an [`AnyBuf`].
pub enum AnyView<'a> {
    /// f32 storage.
    F32(CudaView<'a, f32>),
    /// f16 storage.
    F16(CudaView<'a, f16>),
    /// bf16 storage.
    Bf16(CudaView<'a, bf16>),
}

/// A mutably borrowed range of an [`AnyBuf`].
pub enum AnyViewMut<'a> {
    /// f32 storage.
    F32(CudaViewMut<'a, f32>),
    /// f16 storage.
    F16(CudaViewMut<'a, f16>),
    /// bf16 storage.
    Bf16(CudaViewMut<'a, bf16>),
}

/// Expands `$body` once per storage type with `$v` bound to the inner typed view of the [`AnyView`] (or
/// [`AnyViewMut`], [`AnyBuf`]) `$e`: `any_view!(x, |x| kernel(gpu, &x))`.
#[macro_export]
macro_rules! any_view {
    ($e:expr, |$v:ident| $body:expr) => {
        match $e {
            $crate::cuda::store::AnyView::F32($v) => $body,
            $crate::cuda::store::AnyView::F16($v) => $body,
            $crate::cuda::store::AnyView::Bf16($v) => $body,
        }
    };
}

/// [`any_view!`] for an [`AnyViewMut`].
#[macro_export]
macro_rules! any_view_mut {
    ($e:expr, |$v:ident| $body:expr) => {
        match $e {
            $crate::cuda::store::AnyViewMut::F32($v) => $body,
            $crate::cuda::store::AnyViewMut::F16($v) => $body,
            $crate::cuda::store::AnyViewMut::Bf16($v) => $body,
        }
    };
}

impl AnyBuf {
    /// `n` zeroed elements of type `kind` on `stream`.
    pub fn zeros(stream: &std::sync::Arc<CudaStream>, kind: StoreKind, n: usize) -> Result<AnyBuf, GpuError> {
        Ok(match kind {
            StoreKind::F32 => AnyBuf::F32(stream.alloc_zeros(n)?),
            StoreKind::F16 => AnyBuf::F16(stream.alloc_zeros(n)?),
            StoreKind::Bf16 => AnyBuf::Bf16(stream.alloc_zeros(n)?),
        })
    }

    /// The element type.
    pub fn kind(&self) -> StoreKind {
        match self {
            AnyBuf::F32(_) => StoreKind::F32,
            AnyBuf::F16(_) => StoreKind::F16,
            AnyBuf::Bf16(_) => StoreKind::Bf16,
        }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            AnyBuf::F32(s) => s.len(),
            AnyBuf::F16(s) => s.len(),
            AnyBuf::Bf16(s) => s.len(),
        }
    }

    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.len() * self.kind().size()
    }

    /// The first `len` elements.
    pub fn view(&self, len: usize) -> AnyView<'_> {
        match self {
            AnyBuf::F32(s) => AnyView::F32(s.slice(..len)),
            AnyBuf::F16(s) => AnyView::F16(s.slice(..len)),
            AnyBuf::Bf16(s) => AnyView::Bf16(s.slice(..len)),
        }
    }

    /// The elements in `range`.
    pub fn view_range(&self, range: std::ops::Range<usize>) -> AnyView<'_> {
        match self {
            AnyBuf::F32(s) => AnyView::F32(s.slice(range)),
            AnyBuf::F16(s) => AnyView::F16(s.slice(range)),
            AnyBuf::Bf16(s) => AnyView::Bf16(s.slice(range)),
        }
    }

    /// The first `len` elements, mutably.
    pub fn view_mut(&mut self, len: usize) -> AnyViewMut<'_> {
        match self {
            AnyBuf::F32(s) => AnyViewMut::F32(s.slice_mut(..len)),
            AnyBuf::F16(s) => AnyViewMut::F16(s.slice_mut(..len)),
            AnyBuf::Bf16(s) => AnyViewMut::Bf16(s.slice_mut(..len)),
        }
    }

    /// The buffer as f32 storage; panics otherwise (callers hold values the storage plan keeps in f32).
    pub fn f32(&self) -> &CudaSlice<f32> {
        match self {
            AnyBuf::F32(s) => s,
            other => panic!("an f32 buffer was expected, the plan stores this one as {}", other.kind().name()),
        }
    }

    /// [`Self::f32`], mutably.
    pub fn f32_mut(&mut self) -> &mut CudaSlice<f32> {
        match self {
            AnyBuf::F32(s) => s,
            other => panic!("an f32 buffer was expected, the plan stores this one as {}", other.kind().name()),
        }
    }
}

impl<'a> AnyView<'a> {
    /// The element type.
    pub fn kind(&self) -> StoreKind {
        match self {
            AnyView::F32(_) => StoreKind::F32,
            AnyView::F16(_) => StoreKind::F16,
            AnyView::Bf16(_) => StoreKind::Bf16,
        }
    }

    /// Elements viewed.
    pub fn len(&self) -> usize {
        any_view!(self, |v| v.len())
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The view as f32 storage; panics otherwise (as [`AnyBuf::f32`]).
    pub fn f32(&self) -> &CudaView<'a, f32> {
        match self {
            AnyView::F32(s) => s,
            other => panic!("an f32 view was expected, the plan stores this one as {}", other.kind().name()),
        }
    }
}

impl<'a> AnyViewMut<'a> {
    /// The element type.
    pub fn kind(&self) -> StoreKind {
        match self {
            AnyViewMut::F32(_) => StoreKind::F32,
            AnyViewMut::F16(_) => StoreKind::F16,
            AnyViewMut::Bf16(_) => StoreKind::Bf16,
        }
    }

    /// Elements viewed.
    pub fn len(&self) -> usize {
        any_view_mut!(self, |v| v.len())
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The view as f32 storage; panics otherwise (as [`AnyBuf::f32`]).
    pub fn f32(&mut self) -> &mut CudaViewMut<'a, f32> {
        match self {
            AnyViewMut::F32(s) => s,
            other => panic!("an f32 view was expected, the plan stores this one as {}", other.kind().name()),
        }
    }
}
