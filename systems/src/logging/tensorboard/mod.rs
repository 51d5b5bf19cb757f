//! TensorBoard event files written by the engine itself: `events.out.tfevents.<secs>.<host>` in the run
//! directory, so `tensorboard --logdir runs/` shows every run. Each file starts with a `brain.Event:2`
//! version record; every metric record becomes one summary event of scalars at its optimizer step, tagged
//! `<split>/<metric>` (`train/loss`, `train/lr`, `train/samples_per_s`, `val/accuracy`, `epoch/epoch_time_s`).
//!
//! No maintained crate fits: `tensorboard-rs` 0.5 drags in the unmaintained `protobuf` 2 and an image stack;
//! the format is small (TFRecord frames of `Event` protobufs, [`record`], [`proto`]), so it is written here
//! on `prost` and `crc32c`, and read back by [`read_events`], which checks every frame.

pub mod proto;
pub mod record;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bevy_ecs::prelude::*;
use ecstrain_components::{Clock, MetricEvent, OutputSettings, RunFailure, RunInfo};
use prost::Message as _;

use proto::{Event, SessionLog, Summary, SummaryValue, Value, What, SESSION_START};

/// The version string of the first record; TensorBoard requires the `brain.Event:` prefix.
pub const FILE_VERSION: &str = "brain.Event:2";

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's name for the file name (as TensorFlow's writers use it), reduced to safe characters.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String =
        raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// An open event file.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (`events.out.tfevents.<secs>.<host>`, with a `.N` suffix if a file
    /// of that name exists: two runs started in the same second into one directory) and writes its version
    /// record.
    pub fn create(dir: &Path) -> std::io::Result<EventWriter> {
        let base = format!("events.out.tfevents.{}.{}", now() as u64, hostname());
        let path = std::iter::once(dir.join(&base))
            .chain((1..).map(|i| dir.join(format!("{base}.{i}"))))
            .find(|p| !p.exists())
            .expect("an unused file name exists");
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        let mut w = EventWriter { out: BufWriter::new(file), path };
        w.write(&Event { wall_time: now(), step: 0, what: Some(What::FileVersion(FILE_VERSION.into())) })?;
        w.flush()?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event.
    pub fn write(&mut self, event: &Event) -> std::io::Result<()> {
        record::write_record(&mut self.out, &event.encode_to_vec())
    }

    /// Appends one summary event holding `scalars` at `step`.
    pub fn add_scalars(&mut self, step: u64, scalars: impl IntoIterator<Item = (String, f64)>) -> std::io::Result<()> {
        let value = scalars
            .into_iter()
            .map(|(tag, v)| SummaryValue { tag, value: Some(Value::SimpleValue(v as f32)) })
            .collect();
        self.write(&Event { wall_time: now(), step: step as i64, what: Some(What::Summary(Summary { value })) })
    }

    /// A `SessionLog START` at `step`: TensorBoard then discards the events of steps >= `step` that earlier
    /// files of the directory hold (what a killed run logged after the checkpoint a resumed run continues
    /// from, or an older run's events in a reused directory).
    pub fn session_start(&mut self, step: u64, checkpoint: &str) -> std::io::Result<()> {
        let log = SessionLog { status: SESSION_START, checkpoint_path: checkpoint.into(), msg: "resumed".into() };
        self.write(&Event { wall_time: now(), step: step as i64, what: Some(What::SessionLog(log)) })
    }

    /// Pushes what is buffered to the file, so TensorBoard sees it while the run goes on.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads an event file back, checking each record's framing and checksums and decoding its `Event`.
pub fn read_events(path: &Path) -> Result<Vec<Event>, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let records = record::read_records(file).map_err(|e| format!("{}: {e}", path.display()))?;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| Event::decode(&r[..]).map_err(|e| format!("{}: record {i} is not an Event: {e}", path.display())))
        .collect()
}

/// The event files in `dir`, sorted by name (so by creation time).
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents.")))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Run condition: `run.tensorboard` is on and the run has a directory.
pub fn tensorboard_enabled(settings: Option<Res<OutputSettings>>, info: Option<Res<RunInfo>>) -> bool {
    info.is_some() && settings.is_some_and(|s| s.tensorboard)
}

/// The writer of this run, opened at the first Flush (after RunStart).
#[derive(Resource, Default)]
pub struct TensorBoardLog(pub Option<EventWriter>);

/// Flush: opens the event file on the first call (version record, session start), then writes every new
/// record's values as scalars at its step and flushes.
pub fn write_tensorboard(
    mut events: MessageReader<MetricEvent>,
    mut log: ResMut<TensorBoardLog>,
    info: Res<RunInfo>,
    clock: Res<Clock>,
    mut failure: ResMut<RunFailure>,
) {
    let report = |failure: &mut RunFailure, e: std::io::Error| {
        failure.0.get_or_insert(format!("cannot write the TensorBoard event file in {}: {e}", info.dir.display()));
    };
    if log.0.is_none() {
        // A session start makes TensorBoard forget older events of this directory from that step on: all of
        // them for a fresh run reusing a directory (`exist_ok`), those after the checkpoint for a resumed run
        // (its clock is past step 0; the checkpoint's own step was logged before the checkpoint was saved).
        let from = if clock.step > 0 { clock.step + 1 } else { 0 };
        let opened = EventWriter::create(&info.dir).and_then(|mut w| {
            w.session_start(from, "checkpoints/last.safetensors")?;
            Ok(w)
        });
        match opened {
            Ok(w) => log.0 = Some(w),
            Err(e) => {
                // Reported once: the writer stays closed and the run fails with the message.
                events.clear();
                return report(&mut failure, e);
            }
        }
    }
    let writer = log.0.as_mut().expect("opened above");
    let mut wrote = false;
    for e in events.read() {
        let scalars = e.values.iter().map(|(k, v)| (format!("{}/{k}", e.split), *v));
        if let Err(err) = writer.add_scalars(e.step, scalars) {
            return report(&mut failure, err);
        }
        wrote = true;
    }
    if wrote {
        if let Err(err) = writer.flush() {
            report(&mut failure, err);
        }
    }
}
