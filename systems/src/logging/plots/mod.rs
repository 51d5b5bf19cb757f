//! PNG plots of a run, drawn into the run directory at the end of the run (and after every epoch's
//! checkpoint with `run.plots: true`) from its `metrics.jsonl`:
//!
//! | file | content |
//! |---|---|
//! | `loss.png` | training loss (epoch mean) and validation loss against epoch |
//! | `train_loss_steps.png` | the logged training loss (running mean of the epoch) against optimizer step |
//! | `lr.png` | the learning rate (and the bias lr where the schedule drives it) against optimizer step |
//! | `val_<metric>.png` | every other validation metric against epoch |
//! | `confusion_matrix.png` | classification: the last validation pass's confusion matrix |
//! | `val_reconstructions.png` | reconstruction of images: the last validation pass's first samples over their reconstructions |
//!
//! Drawing takes a few tens of milliseconds per image, so it only happens at those points, never per step.

pub mod chart;
pub mod confusion;
pub mod history;
pub mod samples;

use std::path::{Path, PathBuf};

use bevy_ecs::prelude::*;
use ecstrain_components::{MetricEvent, OutputSettings, PlotMode, RunFailure, RunInfo};

use crate::data::{Dataset, TrainLoader};
use crate::tasks::classification::ConfusionMatrix;
use chart::{encode_png, line_chart, Series, SIZE};
use history::{read_metrics, series, val_metrics, Record};
use samples::{reconstruction_grid, ReconstructionSamples};

/// A confusion matrix to draw: row-major counts `[true][predicted]`, the class count and names.
pub struct ConfusionInput<'a> {
    /// Counts, `classes * classes`.
    pub counts: &'a [u64],
    /// Classes.
    pub classes: usize,
    /// Class names (may be empty: indices are shown).
    pub names: &'a [String],
}

fn save(dir: &Path, name: &str, rgb: &[u8], size: (u32, u32), out: &mut Vec<PathBuf>) -> Result<(), String> {
    let path = dir.join(name);
    let png = encode_png(rgb, size)?;
    super::write_atomic(&path, &png).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    out.push(path);
    Ok(())
}

fn chart_to(
    dir: &Path,
    name: &str,
    (title, x, y): (&str, &str, &str),
    lines: Vec<Series>,
    out: &mut Vec<PathBuf>,
) -> Result<(), String> {
    match line_chart(title, x, y, &lines)? {
        Some(rgb) => save(dir, name, &rgb, SIZE, out),
        None => Ok(()),
    }
}

fn named(name: &str, points: Vec<(f64, f64)>) -> Series {
    Series { name: name.into(), points }
}

/// Draws every plot of the run directory `dir` from its `metrics.jsonl` (and `confusion` when given);
/// returns the files written. A plot with no data (no validation, say) is skipped.
pub fn draw_run_plots(dir: &Path, confusion: Option<ConfusionInput>) -> Result<Vec<PathBuf>, String> {
    let records: Vec<Record> = read_metrics(&dir.join("metrics.jsonl"))?;
    let mut out = Vec::new();
    chart_to(
        dir,
        "loss.png",
        ("Loss", "epoch", "loss"),
        vec![
            named("train (epoch mean)", series(&records, "epoch", "train_loss", false)),
            named("validation", series(&records, "val", "loss", false)),
        ],
        &mut out,
    )?;
    chart_to(
        dir,
        "train_loss_steps.png",
        ("Training loss by step (running mean of the epoch)", "optimizer step", "loss"),
        vec![named("train", series(&records, "train", "loss", true))],
        &mut out,
    )?;
    chart_to(
        dir,
        "lr.png",
        ("Learning rate", "optimizer step", "learning rate"),
        vec![
            named("lr (weights)", series(&records, "train", "lr", true)),
            named("bias lr", series(&records, "train", "bias_lr", true)),
        ],
        &mut out,
    )?;
    for metric in val_metrics(&records).iter().filter(|m| m.as_str() != "loss") {
        let file = format!("val_{}.png", metric.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_"));
        chart_to(
            dir,
            &file,
            (&format!("Validation {metric}"), "epoch", metric),
            vec![named(metric, series(&records, "val", metric, false))],
            &mut out,
        )?;
    }
    if let Some(c) = confusion.filter(|c| c.counts.iter().any(|&n| n > 0)) {
        let epoch = records.iter().rev().find(|r| r.split == "val").map_or(0, |r| r.epoch);
        let title = format!("Confusion matrix (validation, epoch {epoch})");
        let (rgb, size) = confusion::confusion_image(c.counts, c.classes, c.names, &title)?;
        save(dir, "confusion_matrix.png", &rgb, size, &mut out)?;
    }
    Ok(out)
}

/// Run condition: plots are on (`run.plots` not false) and the run has a directory.
pub fn plots_enabled(settings: Option<Res<OutputSettings>>, info: Option<Res<RunInfo>>) -> bool {
    info.is_some() && settings.is_some_and(|s| s.plots != PlotMode::Off)
}

/// What the plots read besides `metrics.jsonl`: the task's resources, when present.
#[derive(bevy_ecs::system::SystemParam)]
pub struct PlotSources<'w> {
    confusion: Option<Res<'w, ConfusionMatrix>>,
    samples: Option<Res<'w, ReconstructionSamples>>,
    loader: Option<Res<'w, TrainLoader>>,
}

fn draw_now(info: &RunInfo, sources: &PlotSources, failure: &mut RunFailure) {
    let names = sources.loader.as_ref().and_then(|l| l.0.pipeline().class_names()).unwrap_or_default();
    let input =
        sources.confusion.as_ref().map(|c| ConfusionInput { counts: &c.counts, classes: c.classes, names: &names });
    let drawn =
        draw_run_plots(&info.dir, input).and_then(|_| match sources.samples.as_deref().and_then(reconstruction_grid) {
            Some((rgb, size)) => save(&info.dir, "val_reconstructions.png", &rgb, size, &mut Vec::new()),
            None => Ok(()),
        });
    if let Err(e) = drawn {
        failure.0.get_or_insert(format!("plots: {e}"));
    }
}

/// RunEnd: draws every plot.
pub fn plot_at_run_end(info: Res<RunInfo>, sources: PlotSources, mut failure: ResMut<RunFailure>) {
    draw_now(&info, &sources, &mut failure);
}

/// Flush (after `metrics.jsonl` is written): with `run.plots: true`, redraws every plot when an epoch record
/// (the epoch's checkpoint) went by.
pub fn plot_at_checkpoint(
    mut events: MessageReader<MetricEvent>,
    settings: Res<OutputSettings>,
    info: Res<RunInfo>,
    sources: PlotSources,
    mut failure: ResMut<RunFailure>,
) {
    let epoch_ended = events.read().filter(|e| e.split == "epoch").count() > 0;
    if epoch_ended && settings.plots == PlotMode::EveryCheckpoint {
        draw_now(&info, &sources, &mut failure);
    }
}
