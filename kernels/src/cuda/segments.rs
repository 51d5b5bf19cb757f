//! Per-parameter segments of an arena for the fused optimizer kernels.
//!
//! The arenas are contiguous, so one launch updates every parameter; what differs between parameters
//! (learning-rate scale, weight decay, frozen or not) is a small table of [`Segment`]s, one per updated
//! parameter, sorted by `start`. A thread finds its element's segment by binary search; an element in no
//! segment (a frozen parameter) is left alone. The coefficients are computed on the host in f64, as the CPU
//! kernels compute them, and cast to f32 once, so the device update rounds as the CPU update does.

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};

/// One parameter's range of the arena and its step coefficients (their meaning is the optimizer's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Segment {
    /// First element (inclusive).
    pub start: u64,
    /// One past the last element.
    pub end: u64,
    /// Optimizer-specific coefficients, documented by each optimizer's kernel.
    pub coeffs: [f32; 12],
    /// Optimizer-specific switches (bit flags).
    pub flags: u32,
    /// Keeps the struct a multiple of 8 bytes on both sides.
    pub pad: u32,
}

// SAFETY: `Segment` is `repr(C)` plain old data with the layout the kernels declare (`struct Segment` in
// cuda/common.cuh): two u64, twelve f32, two u32; all-zero bits are a valid value.
unsafe impl DeviceRepr for Segment {}
// SAFETY: as above.
unsafe impl ValidAsZeroBits for Segment {}

/// A device table of segments, reused every step (its contents are rewritten, never reallocated, while the
/// number of segments stays the same).
pub struct SegmentTable {
    /// The host copy, refilled by the optimizer each step.
    pub host: Vec<Segment>,
    /// The device copy.
    pub device: CudaSlice<Segment>,
}

impl SegmentTable {
    /// A table of `n` zeroed segments on `gpu`.
    pub fn new(gpu: &super::Gpu, n: usize) -> Result<SegmentTable, super::GpuError> {
        Ok(SegmentTable { host: vec![Segment::default(); n], device: gpu.stream().alloc_zeros(n.max(1))? })
    }

    /// Copies the host table to the device (asynchronously, on the compute stream).
    pub fn upload(&mut self, gpu: &super::Gpu) -> Result<(), super::GpuError> {
        debug_assert!(self.host.windows(2).all(|w| w[0].end <= w[1].start), "segments must be sorted and disjoint");
        let n = self.host.len();
        if n > 0 {
            gpu.stream().memcpy_htod(&self.host[..], &mut self.device.slice_mut(..n))?;
        }
        Ok(())
    }
}
