//! The batch input's way to the device: page-locked staging, an asynchronous copy on the copy stream, and two
//! device input buffers used in turn, so the copy of step j+1's batch runs while step j still computes.
//!
//! The device runs without cudarc's per-buffer events (see `Gpu::open`), so this is the one place two
//! streams meet, and its order is explicit. For the upload of step j into slot `s = j % 2`:
//!
//! ```text
//! host:    wait copied[s]            (step j-2's copy out of staging[s] is done; long since)
//!          staging[s] <- batch
//! copy:    wait released[s]          (compute has finished every step up to j-2: none reads input[s] now)
//!          input[s] <- staging[s];  record copied[s]
//! compute: wait copied[s]            (the forward of step j, issued next, reads the new batch)
//!          record released[1 - s]    (everything issued so far, i.e. up to step j-1, the last user of
//!                                     input[1 - s], which step j+1 overwrites)
//! ```

use ecstrain_kernels::cuda::cudarc::driver::{CudaEvent, CudaSlice, PinnedHostSlice};
use ecstrain_kernels::cuda::{Gpu, GpuError};

/// Staging, the spare device input buffer and the events ordering them (see the module doc).
pub struct InputUpload {
    staging: [PinnedHostSlice<f32>; 2],
    /// The device input buffer not in use by the current step (the other is `GpuActivations::input`).
    spare: CudaSlice<f32>,
    copied: [CudaEvent; 2],
    released: [CudaEvent; 2],
    /// The slot the next upload fills.
    slot: usize,
}

impl std::fmt::Debug for InputUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputUpload").field("len", &self.spare.len()).field("slot", &self.slot).finish()
    }
}

impl InputUpload {
    /// Staging and a spare input buffer of `len` elements each (the planned input's size).
    pub fn new(gpu: &Gpu, len: usize) -> Result<InputUpload, GpuError> {
        let ctx = gpu.context();
        // SAFETY: a staging buffer is written (the batch copied in) before every copy that reads it.
        let staging = unsafe { [ctx.alloc_pinned::<f32>(len)?, ctx.alloc_pinned::<f32>(len)?] };
        Ok(InputUpload {
            staging,
            spare: gpu.stream().alloc_zeros(len)?,
            copied: [ctx.new_event(None)?, ctx.new_event(None)?],
            released: [ctx.new_event(None)?, ctx.new_event(None)?],
            slot: 0,
        })
    }

    /// Copies `batch` into the other input buffer on the copy stream and makes it `input` (the planned
    /// input the executor reads); the compute stream's later work waits for the copy.
    pub fn upload(&mut self, gpu: &Gpu, input: &mut CudaSlice<f32>, batch: &[f32]) -> Result<(), GpuError> {
        let s = self.slot;
        std::mem::swap(input, &mut self.spare);
        self.copied[s].synchronize()?;
        // `as_mut_slice` waits on the buffer's own cudarc event, never recorded with tracking off: the wait that
        // matters is `copied[s]` above.
        self.staging[s].as_mut_slice()?[..batch.len()].copy_from_slice(batch);
        let copy = gpu.copy_stream();
        copy.wait(&self.released[s])?;
        // The whole buffer: rows past the batch are stale and never read.
        copy.memcpy_htod(&self.staging[s], input)?;
        self.copied[s].record(copy)?;
        let compute = gpu.stream();
        compute.wait(&self.copied[s])?;
        self.released[1 - s].record(compute)?;
        self.slot = 1 - s;
        Ok(())
    }
}
