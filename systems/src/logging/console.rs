//! The terminal: a progress bar per epoch on a terminal (indicatif); one plain line per log record when
//! headless (stdout not a terminal, or `--headless`), the form cluster logs want.

use bevy_ecs::prelude::*;
use ecstrain_components::{Clock, MetricEvent, RunSettings, RunTimer};
use indicatif::{ProgressBar, ProgressStyle};

/// Console state: the current epoch's bar when interactive.
#[derive(Resource, Default)]
pub struct Console {
    /// The epoch's progress bar (interactive mode only).
    pub bar: Option<ProgressBar>,
    /// Optimizer step at the start of the epoch: an iteration-based run's bar counts steps from it.
    pub start_step: u64,
}

/// EpochStart: a fresh bar for the epoch (interactive mode): micro-batches of the pass over the data, or the
/// optimizer steps of an inner epoch.
pub fn console_epoch_start(mut console: ResMut<Console>, clock: Res<Clock>, settings: Res<RunSettings>) {
    if settings.headless {
        return;
    }
    let len = match settings.iters {
        Some(it) => it.end_step(clock.epoch).saturating_sub(clock.step),
        None => clock.batches_per_epoch,
    };
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{}", clock.epoch + 1, settings.epochs));
    console.bar = Some(bar);
    console.start_step = clock.step;
}

/// Log (training): advances the bar by one batch (or to the steps done in an iteration-based run).
pub fn console_tick(console: Res<Console>, clock: Res<Clock>, settings: Res<RunSettings>) {
    if let Some(bar) = &console.bar {
        match settings.iters {
            Some(_) => bar.set_position(clock.step - console.start_step),
            None => bar.inc(1),
        }
    }
}

fn fmt_values(e: &MetricEvent) -> String {
    e.values
        .iter()
        .map(|(k, v)| if k == "lr" || k == "data_wait" { format!("{k} {v:.3e}") } else { format!("{k} {v:.4}") })
        .collect::<Vec<_>>()
        .join("  ")
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// The headless line of a train record, `key=value` pairs a log parser splits on spaces: step, epoch (of
/// all), loss, lr, samples/s, ETA first, then the record's other values.
/// `step=120 epoch=2/30 loss=0.4123 lr=1.000e-3 samples_per_s=48211 eta=00:01:07 data_wait=1.2e-5 ...`
pub fn structured_line(e: &MetricEvent, epochs: u64, eta_seconds: f64) -> String {
    let mut line = format!("step={} epoch={}/{}", e.step, e.epoch + 1, epochs);
    let get = |k: &str| e.values.get(k).copied();
    if let Some(v) = get("loss") {
        line += &format!(" loss={v:.4}");
    }
    if let Some(v) = get("lr") {
        line += &format!(" lr={v:.3e}");
    }
    if let Some(v) = get("samples_per_s") {
        line += &format!(" samples_per_s={v:.0}");
    }
    line += &format!(" eta={}", fmt_duration(eta_seconds));
    for (k, v) in e.values.iter().filter(|(k, _)| !matches!(k.as_str(), "loss" | "lr" | "samples_per_s")) {
        line += &if *v != 0.0 && v.abs() < 1e-2 { format!(" {k}={v:.2e}") } else { format!(" {k}={v:.4}") };
    }
    line
}

/// Flush: prints records (headless) or updates the bar message and prints epoch summaries (interactive).
pub fn console_print(
    mut events: MessageReader<MetricEvent>,
    mut console: ResMut<Console>,
    settings: Res<RunSettings>,
    clock: Res<Clock>,
    timer: Res<RunTimer>,
) {
    for e in events.read() {
        match (e.split.as_str(), settings.headless) {
            ("train", true) => {
                // Progress in micro-batches, or in optimizer steps when the run is counted in them.
                let (total, done) = match settings.iters {
                    Some(it) => (it.max_iters, clock.step.max(1)),
                    None => (settings.epochs * clock.batches_per_epoch, clock.micro_step.max(1)),
                };
                let elapsed = timer.start.elapsed().as_secs_f64();
                let eta = elapsed / done as f64 * total.saturating_sub(done) as f64;
                println!("{}", structured_line(e, settings.epochs, eta));
            }
            ("train", false) => {
                if let (Some(bar), Some(loss)) = (&console.bar, e.values.get("loss")) {
                    bar.set_message(format!("loss {loss:.4}"));
                }
            }
            ("val", _) => {
                if let Some(bar) = console.bar.take() {
                    bar.finish_and_clear();
                }
                println!("epoch {}/{}  val  {}", e.epoch + 1, settings.epochs, fmt_values(e));
            }
            ("epoch", _) => {
                if let Some(bar) = console.bar.take() {
                    bar.finish_and_clear();
                }
                if settings.headless {
                    println!("epoch {}/{}  {}", e.epoch + 1, settings.epochs, fmt_values(e));
                }
            }
            _ => {}
        }
    }
}
