//! Refusing, before anything is allocated, a run whose model or batch the machine cannot hold: a mistyped size
//! (`hidden_sizes: [4000000000]`, a huge `run.batch`) is a config error with the key named (exit 2), not an
//! allocation failure that aborts the process.
//!
//! The figure compared is a lower bound of what the run holds on the host: parameters, gradients and one
//! optimizer slot, and the batch's activations with their gradients (what the model summary itemises after
//! assembly, less the parts that depend on the optimizer). A run refused here could not have trained.

use ecstrain_systems::graph::Footprint;

/// Rows a run's batch buffers are planned for: `run.batch`, but never more than the largest split has samples
/// (no loader can fill more; a `run.batch` above the dataset's size would otherwise size every buffer for rows
/// that never come).
pub fn batch_capacity(batch: usize, train_len: usize, val_len: Option<usize>) -> usize {
    batch.min(train_len.max(val_len.unwrap_or(0)).max(1))
}

/// The machine's memory in bytes (`MemTotal` of /proc/meminfo); `None` where that cannot be read.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Bytes as GiB with two decimals.
fn gib(bytes: u128) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Checks that the model's parameter state and `capacity` rows of activations fit in `memory` bytes (no check
/// when `None`). The message names `model` when the parameters alone do not fit, `run.batch` otherwise.
pub fn check(footprint: &Footprint, capacity: usize, memory: Option<u64>) -> Result<(), String> {
    const F32: u128 = 4;
    // Parameters, their gradients and at least one optimizer slot; buffers once.
    let params = (3 * footprint.params as u128 + footprint.buffers as u128) * F32;
    // Values and their gradients for every row of the batch (saturating: u128 holds any two usizes' product,
    // not times 8).
    let activations = (capacity as u128 * footprint.activations_per_sample as u128).saturating_mul(2 * F32);
    let Some(memory) = memory.map(u128::from) else { return Ok(()) };
    if params > memory {
        return Err(format!(
            "model: {} parameters need at least {} (weights, gradients and optimizer state) but this machine has \
             {} of memory; check the model's sizes",
            footprint.params,
            gib(params),
            gib(memory)
        ));
    }
    if params.saturating_add(activations) > memory {
        return Err(format!(
            "run.batch: a batch of {capacity} needs at least {} of activations ({} values per sample, with their \
             gradients) beside {} for the parameters, but this machine has {} of memory; lower run.batch",
            gib(activations),
            footprint.activations_per_sample,
            gib(params),
            gib(memory)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_batch_is_planned_for_at_most_the_largest_split() {
        assert_eq!(batch_capacity(64, 1437, Some(360)), 64);
        assert_eq!(batch_capacity(usize::MAX, 1437, Some(360)), 1437);
        assert_eq!(batch_capacity(5000, 10, Some(4000)), 4000);
        assert_eq!(batch_capacity(8, 0, None), 1);
    }

    #[test]
    fn a_model_or_batch_past_the_machine_is_refused_with_its_key() {
        let fp = Footprint { params: 1 << 20, buffers: 0, activations_per_sample: 1 << 10 };
        assert_eq!(check(&fp, 64, Some(GIB)), Ok(()));
        assert_eq!(check(&fp, usize::MAX, None), Ok(()));
        // 2^20 params x 12 bytes = 12 MiB; 2^16 rows x 2^10 values x 8 bytes = 512 MiB: fits 1 GiB, not 256 MiB.
        assert_eq!(check(&fp, 1 << 16, Some(GIB)), Ok(()));
        let e = check(&fp, 1 << 16, Some(GIB / 4)).unwrap_err();
        assert!(e.starts_with("run.batch: a batch of 65536 needs at least 0.50 GiB"), "{e}");
        let huge = Footprint { params: 1 << 40, ..fp };
        let e = check(&huge, 1, Some(64 * GIB)).unwrap_err();
        assert!(e.starts_with("model: 1099511627776 parameters need at least 12288.00 GiB"), "{e}");
        // No overflow at the largest sizes the graph builder lets through.
        let max = Footprint { params: usize::MAX / 8, buffers: usize::MAX / 8, activations_per_sample: usize::MAX / 8 };
        assert!(check(&max, usize::MAX, Some(u64::MAX)).is_err());
    }

    #[test]
    fn the_host_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(host_memory().is_some_and(|m| m > 64 << 20), "{:?}", host_memory());
        }
    }
}
