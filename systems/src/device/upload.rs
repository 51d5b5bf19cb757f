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
//!
//! Both `released` events are first recorded right after the buffers are allocated: `alloc_zeros` queues
//! their zeroing on the compute stream, and a first copy not ordered after it could be zeroed over.
//!
//! With `run.device_cache` the training split's inputs stay on the device ([`InputUpload::enable_device_rows`]):
//! the copy carries the batch's row indices instead of its rows (4 KiB instead of 1.6 MiB for 512 MNIST-sized
//! samples), and after the compute stream's wait for `copied[s]` a gather kernel writes `input[s]` from the
//! table. Nothing is staged on the host but the indices, and the host never touches the rows.
//!
//! With a device-side loss ([`super::loss::DeviceLoss`]) the batch's targets (class labels, or dense float
//! targets) travel the same way, in the same slot and under the same events: one more copy, no more ordering.

use ecstrain_kernels::cuda::cudarc::driver::{CudaEvent, CudaSlice, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};
use ecstrain_kernels::cuda::{Gpu, GpuError};
use ecstrain_kernels::ops::embedding::cuda::embedding_forward;
use rayon::prelude::*;

/// Values per task of a parallel staging copy (256 KiB of f32): below two of them one thread copies.
const STAGE_CHUNK: usize = 1 << 16;

/// Copies `src` into page-locked `dst`, over the current rayon pool for a large batch: one core does not
/// saturate the host's memory bandwidth, and the pool has nothing else to do while the host stages a batch
/// for the device. Allocates nothing (rayon's fork-join runs on the stack).
fn stage_copy<T: Copy + Send + Sync>(dst: &mut [T], src: &[T]) {
    if src.len() < 2 * STAGE_CHUNK || rayon::current_num_threads() < 2 {
        dst.copy_from_slice(src);
        return;
    }
    dst.par_chunks_mut(STAGE_CHUNK).zip(src.par_chunks(STAGE_CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
}

/// Staging and device buffers of one kind of target, one per slot.
struct Slots<T> {
    staging: [PinnedHostSlice<T>; 2],
    device: [CudaSlice<T>; 2],
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy + Send + Sync> Slots<T> {
    /// Buffers of `len` values each (at least one).
    fn new(gpu: &Gpu, len: usize) -> Result<Slots<T>, GpuError> {
        let (ctx, len) = (gpu.context(), len.max(1));
        // SAFETY: a staging buffer is written (the targets copied in) before every copy that reads it.
        let staging = unsafe { [ctx.alloc_pinned::<T>(len)?, ctx.alloc_pinned::<T>(len)?] };
        Ok(Slots { staging, device: [gpu.stream().alloc_zeros(len)?, gpu.stream().alloc_zeros(len)?] })
    }

    /// Stages `values` in slot `s` and queues their copy up on `copy` (the caller orders it).
    fn stage(
        &mut self,
        s: usize,
        copy: &std::sync::Arc<ecstrain_kernels::cuda::cudarc::driver::CudaStream>,
        values: &[T],
    ) -> Result<(), GpuError> {
        stage_copy(&mut self.staging[s].as_mut_slice()?[..values.len()], values);
        copy.memcpy_htod(&self.staging[s], &mut self.device[s])?;
        Ok(())
    }
}

/// The training split's processed inputs kept on the device (`run.device_cache`): a step uploads only its
/// rows' dataset indices, and a gather kernel (the embedding lookup) writes the input buffer from the table.
struct DeviceRows {
    /// `[samples, len]`: every sample of the split, as the pipeline produces it.
    table: CudaSlice<f32>,
    samples: usize,
    len: usize,
    /// The batch's row indices, staged and uploaded per slot like labels.
    ids: Slots<i64>,
    /// The indices as i64 on the host (sized once: the steady state allocates nothing).
    host_ids: Vec<i64>,
}

/// Where a batch's inputs come from.
#[derive(Clone, Copy, Debug)]
pub enum BatchInputs<'a> {
    /// The rows' values, `[n, len]`, copied up through page-locked staging.
    Values(&'a [f32]),
    /// The rows' dataset indices, gathered on the device from the table of
    /// [`enable_device_rows`](InputUpload::enable_device_rows).
    Rows(&'a [usize]),
}

/// A training step's targets for a device-side loss.
#[derive(Clone, Copy, Debug)]
pub enum BatchTargets<'a> {
    /// Class labels `[n]`.
    Labels(&'a [i64]),
    /// Dense float targets `[n, len]`.
    Dense(&'a [f32]),
}

/// Staging, the spare device input buffer and the events ordering them (see the module doc).
pub struct InputUpload {
    staging: [PinnedHostSlice<f32>; 2],
    /// The device input buffer not in use by the current step (the other is `GpuActivations::input`).
    spare: CudaSlice<f32>,
    /// Class labels' buffers, when a classification loss runs on the device.
    labels: Option<Slots<i64>>,
    /// Dense targets' buffers, when a regression or reconstruction loss runs on the device.
    dense: Option<Slots<f32>>,
    /// The training split's inputs, with `run.device_cache`.
    rows: Option<DeviceRows>,
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
        let mut upload = InputUpload {
            staging,
            spare: gpu.stream().alloc_zeros(len)?,
            labels: None,
            dense: None,
            rows: None,
            copied: [ctx.new_event(None)?, ctx.new_event(None)?],
            released: [ctx.new_event(None)?, ctx.new_event(None)?],
            slot: 0,
        };
        upload.released_after_allocation(gpu)?;
        Ok(upload)
    }

    /// Orders the first copy into each slot after the zeroing of the buffers allocated so far (queued on the
    /// compute stream by `alloc_zeros`): without it a copy could land first and be zeroed after it.
    fn released_after_allocation(&mut self, gpu: &Gpu) -> Result<(), GpuError> {
        for e in &self.released {
            e.record(gpu.stream())?;
        }
        Ok(())
    }

    /// Plans label uploads of up to `len` labels per batch (a device-side classification loss).
    pub fn enable_labels(&mut self, gpu: &Gpu, len: usize) -> Result<(), GpuError> {
        self.labels = Some(Slots::new(gpu, len)?);
        self.released_after_allocation(gpu)
    }

    /// Plans dense-target uploads of up to `len` values per batch (a device-side MSE loss).
    pub fn enable_dense(&mut self, gpu: &Gpu, len: usize) -> Result<(), GpuError> {
        self.dense = Some(Slots::new(gpu, len)?);
        self.released_after_allocation(gpu)
    }

    /// Keeps `samples` rows of `len` inputs on the device, filled by `fill(first, rows)` in chunks of rows
    /// (`rows` is `[k, len]` for samples `first..first + k`), for batches of up to `capacity` rows uploaded as
    /// [`BatchInputs::Rows`]. Returns the table's bytes.
    pub fn enable_device_rows(
        &mut self,
        gpu: &Gpu,
        samples: usize,
        len: usize,
        capacity: usize,
        mut fill: impl FnMut(usize, &mut [f32]) -> Result<(), String>,
    ) -> Result<usize, String> {
        let stream = gpu.stream();
        let bytes = samples * len * std::mem::size_of::<f32>();
        let mut table = stream.alloc_zeros::<f32>((samples * len).max(1)).map_err(|e| {
            let why = if GpuError::from(e).is_out_of_memory() { "out of memory".to_string() } else { e.to_string() };
            format!(
                "the training split's inputs ({:.1} MiB) do not fit on the device ({why}; {}); turn it off to upload \
                 each batch instead",
                bytes as f64 / 1048576.0,
                gpu.memory_report()
            )
        })?;
        // About 16 MiB of host rows at a time: a large split never needs a second copy of itself on the host.
        let chunk = ((1 << 22) / len.max(1)).clamp(1, samples.max(1));
        let mut host = vec![0.0f32; chunk * len];
        for first in (0..samples).step_by(chunk) {
            let k = chunk.min(samples - first);
            fill(first, &mut host[..k * len])?;
            // From pageable memory the copy returns once the rows are staged: `host` can be refilled.
            stream
                .memcpy_htod(&host[..k * len], &mut table.slice_mut(first * len..(first + k) * len))
                .map_err(|e| format!("upload of the training split's inputs: {e}"))?;
        }
        let ids = Slots::new(gpu, capacity).map_err(|e| e.to_string())?;
        self.rows = Some(DeviceRows { table, samples, len, ids, host_ids: vec![0; capacity] });
        self.released_after_allocation(gpu).map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    /// Whether the training split's inputs are on the device ([`enable_device_rows`](Self::enable_device_rows)).
    pub fn has_device_rows(&self) -> bool {
        self.rows.is_some()
    }

    /// The class labels of the last upload that carried them: valid for the step that uploaded them, in
    /// stream order. `None` unless [`enable_labels`](Self::enable_labels) ran.
    pub fn labels(&self) -> Option<&CudaSlice<i64>> {
        self.labels.as_ref().map(|t| &t.device[1 - self.slot])
    }

    /// The dense targets of the last upload that carried them, as [`labels`](Self::labels).
    pub fn dense(&self) -> Option<&CudaSlice<f32>> {
        self.dense.as_ref().map(|t| &t.device[1 - self.slot])
    }

    /// Puts the batch into the other input buffer and makes it `input` (the planned input the executor
    /// reads): its values copied up on the copy stream, or its rows gathered on the compute stream from the
    /// device's table (after their indices are copied up). `targets` (a training step's, with a device-side
    /// loss) go into the same slot's target buffer; the compute stream's later work waits for the copies.
    pub fn upload(
        &mut self,
        gpu: &Gpu,
        input: &mut CudaSlice<f32>,
        batch: BatchInputs<'_>,
        targets: Option<BatchTargets<'_>>,
    ) -> Result<(), GpuError> {
        let s = self.slot;
        std::mem::swap(input, &mut self.spare);
        self.copied[s].synchronize()?;
        let copy = gpu.copy_stream();
        let gather = match batch {
            BatchInputs::Values(values) => {
                // `as_mut_slice` waits on the buffer's own cudarc event, never recorded with tracking off: the
                // wait that matters is `copied[s]` above.
                stage_copy(&mut self.staging[s].as_mut_slice()?[..values.len()], values);
                copy.wait(&self.released[s])?;
                // The whole buffer: rows past the batch are stale and never read.
                copy.memcpy_htod(&self.staging[s], input)?;
                None
            }
            BatchInputs::Rows(indices) => {
                let rows = self.rows.as_mut().expect("rows are uploaded only after enable_device_rows");
                let n = indices.len();
                for (id, &i) in rows.host_ids.iter_mut().zip(indices) {
                    *id = i as i64;
                }
                copy.wait(&self.released[s])?;
                rows.ids.stage(s, copy, &rows.host_ids[..n])?;
                Some(n)
            }
        };
        match targets {
            Some(BatchTargets::Labels(v)) => {
                self.labels.as_mut().expect("labels are uploaded only after enable_labels").stage(s, copy, v)?
            }
            Some(BatchTargets::Dense(v)) => {
                self.dense.as_mut().expect("dense targets are uploaded only after enable_dense").stage(s, copy, v)?
            }
            None => {}
        }
        self.copied[s].record(copy)?;
        let compute = gpu.stream();
        compute.wait(&self.copied[s])?;
        if let (Some(n), Some(rows)) = (gather, &self.rows) {
            let (ids, len) = (rows.ids.device[s].slice(..n), rows.len);
            embedding_forward(gpu, &mut input.slice_mut(..n * len), &ids, &rows.table.slice(..), rows.samples, len)?;
        }
        self.released[1 - s].record(compute)?;
        self.slot = 1 - s;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The staging copy is exact on either side of its parallel threshold and with a ragged last chunk.
    #[test]
    fn stage_copy_copies_every_value_on_any_pool() {
        for len in [0, 1, STAGE_CHUNK, 2 * STAGE_CHUNK - 1, 2 * STAGE_CHUNK, 5 * STAGE_CHUNK + 3] {
            let src: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut dst = vec![f32::NAN; len + 2];
                pool.install(|| stage_copy(&mut dst[..len], &src));
                assert_eq!(&dst[..len], &src[..], "len {len}, {threads} threads");
                assert!(dst[len..].iter().all(|v| v.is_nan()), "wrote past the end");
            }
        }
    }
}
