//! Logging: systems that turn meters into [`MetricEvent`]s ([`emit`]), and loggers that consume them in the
//! [`Flush`](crate::sets::Flush) schedule: `metrics.jsonl` ([`jsonl`]), the terminal ([`console`]),
//! `results.csv` ([`results_csv`]), TensorBoard event files ([`tensorboard`]); the end-of-run `summary.json`
//! and final terminal summary ([`summary`]), PNG plots ([`plots`]) and the op profile ([`profile_report`]).
//!
//! [`MetricEvent`]: ecstrain_components::MetricEvent

pub mod console;
pub mod emit;
pub mod jsonl;
pub mod plots;
pub mod profile_report;
pub mod results_csv;
pub mod summary;
pub mod tensorboard;

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename. An existing
/// `path` that is not a regular file is left alone (an error): the run directory may be one the user named
/// (`exist_ok`), and the rename would replace a device or FIFO there.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::replace::check_replaceable(path)?;
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        // No temporary file left behind; the original error is the one to report.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
