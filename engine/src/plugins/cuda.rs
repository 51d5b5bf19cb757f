//! Training on a CUDA device: the device twins of forward, backward, gradient zeroing and the optimizer,
//! plus the copies between host and device arenas, all gated by `on_cuda` (assembly inserts
//! `ComputeDevice` and `GpuState` for a `run.device: cuda` run), the device-side task loss (with its
//! flushes into the training meters), and in a data-parallel run the device gradient average and buffer
//! broadcast. See `ecstrain_systems::device`.

use bevy_ecs::prelude::*;
use ecstrain_systems::device::loss::{gpu_flush_train_loss, gpu_task_loss, DeviceLoss};
use ecstrain_systems::device::on_cuda;
use ecstrain_systems::device::reduce::{gpu_all_reduce_gradients, gpu_broadcast_buffers};
use ecstrain_systems::device::systems::*;
use ecstrain_systems::logging::emit::{at_log_interval, emit_epoch_record, emit_train_record};
use ecstrain_systems::optim::at_accumulation_boundary;
use ecstrain_systems::parallel::is_data_parallel;
use ecstrain_systems::sets::*;

use crate::app::{App, Plugin};

/// The CUDA step pipeline.
pub struct CudaPlugin;

impl Plugin for CudaPlugin {
    fn build(&self, app: &mut App) {
        app.add_systems(
            TrainStep,
            (
                gpu_sync_up.in_set(StepSet::Load),
                gpu_upload_batch.in_set(StepSet::Preprocess),
                gpu_forward.in_set(StepSet::Forward),
                gpu_task_loss.run_if(resource_exists::<DeviceLoss>).in_set(StepSet::Loss),
                gpu_backward.in_set(StepSet::Backward),
                // First in Reduce, so device clipping sees the averaged gradient (as on the CPU).
                gpu_all_reduce_gradients
                    .run_if(is_data_parallel.and_then(at_accumulation_boundary))
                    .in_set(StepSet::Reduce)
                    .before(gpu_clip_gradients),
                // Every window's step is launched: under f16 loss scaling the device skips one that overflowed.
                ecstrain_systems::device::optim::gpu_optimizer_update
                    .run_if(at_accumulation_boundary)
                    .in_set(StepSet::Optimize),
                gpu_zero_grads.run_if(at_accumulation_boundary).in_set(StepSet::Schedule),
            )
                .run_if(on_cuda),
        );
        app.add_systems(
            ValidationStep,
            (
                gpu_sync_up.in_set(StepSet::Load),
                gpu_upload_batch.in_set(StepSet::Preprocess),
                gpu_forward.in_set(StepSet::Forward),
            )
                .run_if(on_cuda),
        );
        // Before the EMA swap, as on the CPU: the staging goes through host arenas the swap moves.
        app.add_systems(
            ValidationStart,
            gpu_broadcast_buffers
                .run_if(on_cuda.and_then(is_data_parallel))
                .before(ecstrain_systems::optim::ema::swap_ema)
                .before(ecstrain_systems::device::ema::gpu_swap_ema),
        );
        // The host reads the arenas in these schedules (checkpoints, the summary): copy them down first.
        app.add_systems(ValidationEnd, gpu_sync_down.run_if(on_cuda).before(ValidationEndSet::Summarize));
        app.add_systems(EpochEnd, gpu_sync_down.run_if(on_cuda).before(emit_epoch_record));
        app.add_systems(RunEnd, gpu_sync_down.run_if(on_cuda));
        // A device-side loss: its pending values reach the training meters before anything reads them (the
        // stop path flushes too, runner/stop.rs).
        let flush = || gpu_flush_train_loss.run_if(resource_exists::<DeviceLoss>);
        app.add_systems(TrainStep, flush().run_if(at_log_interval).in_set(StepSet::Log).before(emit_train_record));
        app.add_systems(EpochEnd, flush().before(emit_epoch_record));
        app.add_systems(RunEnd, flush());
    }
}
