//! SIGTERM, SIGINT and SIGUSR1 (what SLURM sends before preempting or at the end of a job's time, and
//! Ctrl-C) ask the run to stop: the handler only records the signal; the runner finishes the current
//! optimizer step, writes `checkpoints/last.safetensors` atomically and the process exits with code 130, so
//! `run.resume: auto` continues the run exactly when the job is requeued.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::signal::{SIGINT, SIGTERM, SIGUSR1};

/// The exit code of a run stopped by a signal.
pub const INTERRUPTED_EXIT_CODE: i32 = 130;

/// The signals that stop a run, with their names.
const STOP_SIGNALS: [(i32, &str); 3] = [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT"), (SIGUSR1, "SIGUSR1")];

/// The last stop signal received (0: none), shared with the handlers.
fn received() -> &'static Arc<AtomicUsize> {
    static FLAG: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicUsize::new(0)))
}

/// Installs the handlers. A second stop signal, while the first is still being honoured, ends the process
/// at once with code 130 (a stuck run can still be interrupted).
pub fn install() -> Result<(), String> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        let armed = Arc::new(AtomicBool::new(false));
        for (sig, name) in STOP_SIGNALS {
            let err = |e: std::io::Error| format!("cannot install the {name} handler: {e}");
            // Handlers run in registration order: the shutdown check sees the flag of the previous signal.
            let r = signal_hook::flag::register_conditional_shutdown(sig, INTERRUPTED_EXIT_CODE, Arc::clone(&armed))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&armed)))
                .and_then(|_| signal_hook::flag::register_usize(sig, Arc::clone(received()), sig as usize));
            if let Err(e) = r {
                result = Err(err(e));
                return;
            }
        }
    });
    result
}

/// The name of the stop signal received so far, if any.
pub fn pending() -> Option<&'static str> {
    let sig = received().load(Ordering::SeqCst) as i32;
    STOP_SIGNALS.iter().find(|(s, _)| *s == sig).map(|(_, n)| *n)
}

/// Records a stop as if `signal` had arrived (for tests and embedders that stop a run from code).
pub fn request_stop(signal: &str) {
    if let Some((s, _)) = STOP_SIGNALS.iter().find(|(_, n)| *n == signal) {
        received().store(*s as usize, Ordering::SeqCst);
    }
}
