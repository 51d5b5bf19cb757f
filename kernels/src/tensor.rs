//! A tensor: a shape, an element type and contiguous (row-major) storage on a device.
//!
//! The training step itself works on flat buffers (arenas and planned activation buffers); `Tensor` is the
//! typed, shaped container used at the edges: datasets, checkpoints, the graph's buffer plan and tests.

use crate::{DType, Device};

/// Contiguous host storage, one variant per element type.
#[derive(Clone, Debug, PartialEq)]
pub enum CpuStorage {
    /// f32 elements.
    F32(Vec<f32>),
    /// f64 elements.
    F64(Vec<f64>),
    /// f16 elements.
    F16(Vec<half::f16>),
    /// bf16 elements.
    BF16(Vec<half::bf16>),
    /// u8 elements.
    U8(Vec<u8>),
    /// i64 elements.
    I64(Vec<i64>),
}

/// Storage on some device. CUDA storage (a cudarc device slice) becomes a second variant.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
}

/// Errors from building or reading tensors.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    /// Element count does not match the shape.
    #[error("shape {shape:?} needs {expected} elements, got {got}")]
    ShapeMismatch {
        /// Requested shape.
        shape: Vec<usize>,
        /// Its element count.
        expected: usize,
        /// Elements supplied.
        got: usize,
    },
    /// The tensor holds another element type.
    #[error("expected a {expected} tensor, found {found}")]
    DTypeMismatch {
        /// Wanted type.
        expected: DType,
        /// Actual type.
        found: DType,
    },
}

/// Element types that can live in a [`Tensor`].
pub trait Element: Copy + Default + Send + Sync + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Wraps a vector in storage.
    fn into_storage(v: Vec<Self>) -> CpuStorage;
    /// Borrows storage as this type, if it is.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// Mutably borrows storage as this type, if it is.
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
}

macro_rules! element {
    ($t:ty, $v:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$v;
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$v(v)
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);
element!(half::f16, F16);
element!(half::bf16, BF16);
element!(u8, U8);
element!(i64, I64);

impl CpuStorage {
    /// The element type held.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::I64(_) => DType::I64,
        }
    }
}

/// A shaped, typed, contiguous tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// A tensor from a vector and a shape (row-major).
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Tensor, TensorError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(TensorError::ShapeMismatch { shape: shape.to_vec(), expected, got: data.len() });
        }
        Ok(Tensor { shape: shape.to_vec(), storage: Storage::Cpu(T::into_storage(data)) })
    }

    /// A zero-filled tensor of the given type on a device (the CPU for now).
    pub fn zeros<T: Element>(shape: &[usize], device: Device) -> Tensor {
        debug_assert_eq!(device, Device::Cpu, "only CPU storage exists so far");
        let n = shape.iter().product();
        Tensor { shape: shape.to_vec(), storage: Storage::Cpu(T::into_storage(vec![T::default(); n])) }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::Cpu(s) => s.dtype(),
        }
    }

    /// Device the storage is on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    /// The raw storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Borrows the elements as `T`.
    pub fn as_slice<T: Element>(&self) -> Result<&[T], TensorError> {
        let Storage::Cpu(s) = &self.storage;
        T::slice(s).ok_or(TensorError::DTypeMismatch { expected: T::DTYPE, found: s.dtype() })
    }

    /// Mutably borrows the elements as `T`.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T], TensorError> {
        let Storage::Cpu(s) = &mut self.storage;
        let found = s.dtype();
        T::slice_mut(s).ok_or(TensorError::DTypeMismatch { expected: T::DTYPE, found })
    }

    /// Same data, new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor, TensorError> {
        let expected: usize = shape.iter().product();
        if expected != self.len() {
            return Err(TensorError::ShapeMismatch { shape: shape.to_vec(), expected, got: self.len() });
        }
        self.shape = shape.to_vec();
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_checks_shape_and_dtype() {
        let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.as_slice::<f32>().unwrap()[4], 5.0);
        assert!(t.as_slice::<i64>().is_err());
        assert!(Tensor::from_vec(vec![1u8; 5], &[2, 3]).is_err());
        let r = t.reshape(&[3, 2]).unwrap();
        assert_eq!(r.shape(), &[3, 2]);
        let z = Tensor::zeros::<i64>(&[4], Device::Cpu);
        assert_eq!(z.as_slice::<i64>().unwrap(), &[0, 0, 0, 0]);
    }
}
