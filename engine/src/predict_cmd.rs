//! `engine predict`: a trained model's outputs on new inputs. The run is assembled as for `engine eval` (same
//! checks, exit 2 on bad input, `run.resume` ignored, the config's device), the checkpoint's weights are loaded,
//! and the inputs go through the dataset's eval processors and the validation schedule in `Mode::Eval`, where
//! [`collect_outputs`](ecstrain_systems::tasks::outputs::collect_outputs) keeps every output row.
//!
//! Inputs: `--source` (a `.npy` array of samples, an image file, or a folder of images searched recursively in
//! name order) or `--split` (the config's val, train or test split, in order). Output, by `--out`'s extension
//! (stdout without `--out`):
//! - `.csv`: one row per sample. A classification model gives `sample,class,name,confidence` (softmax
//!   probability; `--top-k K` adds `class_2,name_2,confidence_2` ... up to K), any other model its output
//!   values `sample,out_0,out_1,...`. `sample` is the image file where the data has one
//!   (`Dataset::sample_name`), else the sample's index.
//! - `.npy`: the raw outputs (logits for a classifier), `[samples, ...output shape]` float32.
//!
//! The file is written beside its destination and renamed into place, as `engine export` writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use ecstrain_components::{Mode, RunFailure};
use ecstrain_systems::data::image_decode::is_image_file;
use ecstrain_systems::data::image_set::ImageReadOptions;
use ecstrain_systems::data::npy::npy_bytes;
use ecstrain_systems::data::{Dataset, Loader, Pipeline, TrainLoader, Unlabeled, ValLoader};
use ecstrain_systems::sets::{ValidationStart, ValidationStep};
use ecstrain_systems::tasks::outputs::{top_classes, CollectedOutputs};

use crate::assemble::{assemble, check_embedding_ids, Assembly};
use crate::cli::{default_app, load_args, RunArgs};
use crate::error::{usage, EngineError};
use crate::eval::{batch_rows, checkpoint_path, load_checkpoint, use_split, Split};
use crate::runner::in_pool;

/// Options of `engine predict`.
#[derive(Args, Debug, Clone)]
pub struct PredictArgs {
    /// The config (and overrides) the model was trained with.
    #[command(flatten)]
    pub run: RunArgs,
    /// `best` or `last` of the latest run directory of the config's run.save_dir, or a checkpoint path.
    #[arg(long, value_name = "best|last|PATH")]
    pub checkpoint: String,
    /// The inputs: a .npy array of samples ([samples, ...] as the dataset's x), an image file, or a folder of
    /// images (searched recursively).
    #[arg(long, value_name = "PATH", conflicts_with = "split", required_unless_present = "split")]
    pub source: Option<PathBuf>,
    /// Or a split of the config's dataset, in order.
    #[arg(long, value_enum)]
    pub split: Option<Split>,
    /// Where to write: FILE.csv (one row per sample) or FILE.npy (the raw outputs); CSV on stdout without it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Classes per sample in the CSV of a classification model, most probable first.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub top_k: usize,
}

/// What `--out` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutFormat {
    Csv,
    Npy,
}

fn out_format(out: Option<&Path>) -> Result<OutFormat, EngineError> {
    let Some(out) = out else { return Ok(OutFormat::Csv) };
    match out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("csv") => Ok(OutFormat::Csv),
        Some("npy") => Ok(OutFormat::Npy),
        _ => Err(usage(format!(
            "--out {}: unknown file type; valid choices: a .csv file (one row per sample) or a .npy file (the raw outputs)",
            out.display()
        ))),
    }
}

/// Runs `engine predict`.
pub fn run(args: &PredictArgs) -> Result<(), EngineError> {
    let format = out_format(args.out.as_deref())?;
    if args.top_k == 0 {
        return Err(usage("--top-k: must be at least 1"));
    }
    if let Some(out) = &args.out {
        // Refused before any work: a FIFO or directory there, or no way to write beside it.
        crate::out_path::out_file("--out", out)?;
    }
    let (mut loaded, _) = load_args(&args.run)?;
    loaded.config.run.resume = serde_json::Value::Bool(false);
    let r = &loaded.config.run;
    let ckpt = checkpoint_path(&args.checkpoint, &r.save_dir, r.exist_ok).map_err(usage)?;
    // Headless: stdout may carry the predictions.
    let mut asm = assemble(default_app(), loaded, true)?;
    for n in &asm.notices {
        eprintln!("note: {n}");
    }
    load_checkpoint(&mut asm, &ckpt)?;
    match (&args.source, args.split) {
        (Some(source), _) => {
            let data = Arc::new(open_source(&asm, source)?);
            let loader = source_loader(&asm, source, data)?;
            asm.app.world.insert_resource(ValLoader { loader, cursor: 0 });
        }
        (None, Some(split)) => use_split(&mut asm, split)?,
        (None, None) => return Err(usage("give --source PATH or --split val|train|test")),
    }
    // Samples are named by their image file where the data has one, else by their index.
    let pipeline = asm.app.world.resource::<ValLoader>().loader.pipeline().clone();
    let names = move |i: usize| pipeline.sample_name(i).unwrap_or_else(|| i.to_string());
    let outputs = predict(&mut asm)?;
    let samples = outputs.indices.len();
    let bytes = match format {
        OutFormat::Npy => {
            let mut shape = vec![samples];
            shape.extend_from_slice(asm.app.world.resource::<ecstrain_components::Graph>().output_shape());
            npy_bytes(&shape, &outputs.values)
        }
        OutFormat::Csv => {
            let classes = classification_names(&asm);
            csv(&outputs, &names, classes.as_deref(), args.top_k).into_bytes()
        }
    };
    let source = args
        .source
        .as_ref()
        .map_or_else(|| format!("the {} split", args.split.map_or("?", Split::name)), |s| s.display().to_string());
    match &args.out {
        Some(out) => {
            crate::export_cmd::write_atomically(out, &bytes)?;
            eprintln!("predicted {samples} samples of {source} with {}: {}", ckpt.display(), out.display());
        }
        None => {
            use std::io::Write;
            match std::io::stdout().write_all(&bytes).and_then(|()| std::io::stdout().flush()) {
                // A reader that stopped early (`| head`) is not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                r => r.map_err(|e| EngineError::Run(format!("cannot write to stdout: {e}")))?,
            }
            eprintln!("predicted {samples} samples of {source} with {}", ckpt.display());
        }
    }
    Ok(())
}

/// The class names of a classification model (indices as text where the dataset names none); `None` for any
/// other task.
fn classification_names(asm: &Assembly) -> Option<Vec<String>> {
    let task = asm.app.world.get_resource::<ecstrain_systems::tasks::classification::ClassificationTask>()?;
    let train = &asm.app.world.resource::<TrainLoader>().0;
    Some(
        train
            .pipeline()
            .class_names()
            .filter(|n| n.len() == task.num_classes)
            .unwrap_or_else(|| (0..task.num_classes).map(|c| c.to_string()).collect()),
    )
}

/// The inputs `--source` names, read as the training data is read: the model's kind of target as
/// placeholders, images with the channels of the training images (a corrupt image is an error naming it).
fn open_source(asm: &Assembly, source: &Path) -> Result<Unlabeled, EngineError> {
    let train = asm.app.world.resource::<TrainLoader>().0.pipeline().clone();
    let raw = train.dataset();
    let targets = raw.target_spec();
    if !raw.extra_specs().is_empty() {
        let extras: Vec<String> = raw.extra_specs().into_iter().map(|(n, _)| n).collect();
        return Err(usage(format!(
            "--source: the model trained on data with extra arrays ({}) that a source of inputs alone cannot give; use --split",
            extras.join(", ")
        )));
    }
    let s = source.display();
    let is_npy = source.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if source.is_file() && is_npy {
        return Unlabeled::npy(source, targets).map_err(|m| usage(format!("--source: {m}")));
    }
    let paths = if source.is_dir() {
        let mut found = Vec::new();
        collect_images(source, &mut found).map_err(|e| usage(format!("--source {s}: cannot read the folder: {e}")))?;
        found.sort();
        if found.is_empty() {
            return Err(usage(format!(
                "--source {s}: no image files (.jpg, .jpeg, .png, .bmp) in the folder or below it"
            )));
        }
        found
    } else if source.is_file() && is_image_file(source) {
        vec![source.to_path_buf()]
    } else if !source.exists() {
        return Err(usage(format!("--source {s}: no such file or folder")));
    } else {
        return Err(usage(format!(
            "--source {s}: not a .npy file, an image (.jpg, .jpeg, .png, .bmp) or a folder of images"
        )));
    };
    // Images as the training images were read: their channels (1 or 3) from the raw training samples.
    let channels = match raw.sample_shape() {
        [c @ (1 | 3), _, _] => *c,
        other => {
            return Err(usage(format!(
                "--source {s}: the model trained on samples of shape {other:?} ({}), not images [channels, height, width]; give a .npy array of such samples",
                raw.describe()
            )))
        }
    };
    let options = ImageReadOptions { channels, ..ImageReadOptions::default() };
    let (data, _) = Unlabeled::images(paths, &options, targets, source).map_err(|m| usage(format!("--source: {m}")))?;
    Ok(data)
}

/// Image files under `dir`, recursively (hidden entries skipped).
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_images(&path, out)?;
        } else if is_image_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The source's samples through the dataset's eval processors, in order, in batches the run's buffers hold;
/// they must come out shaped as the model's training samples.
fn source_loader(asm: &Assembly, source: &Path, data: Arc<Unlabeled>) -> Result<Loader, EngineError> {
    if data.is_empty() {
        return Err(usage(format!("--source {}: has no samples", source.display())));
    }
    let (name, ds) = asm.loaded.config.datasets.iter().next().expect("assembly checked one dataset");
    let key = format!("datasets.{name}.processors.eval");
    let procs = crate::pipelines::build_processors(&asm.app.registry, &key, &ds.processors.eval).map_err(usage)?;
    let seed = asm.loaded.config.run.seed;
    let pipe = Pipeline::new(data.clone() as Arc<dyn Dataset>, procs, seed, 1)
        .map_err(|m| usage(format!("--source {}: {key}: {m}", source.display())))?;
    let train = asm.app.world.resource::<TrainLoader>().0.pipeline().clone();
    if pipe.sample_shape() != train.sample_shape() {
        return Err(usage(format!(
            "--source {}: its samples come out of {key} with shape {:?}, but the model takes {:?} (the train split's \
             processed samples); give inputs of that shape, or processors that bring them there (e.g. a resize)",
            source.display(),
            pipe.sample_shape(),
            train.sample_shape()
        )));
    }
    let graph = asm.app.world.resource::<ecstrain_components::Graph>();
    check_embedding_ids(graph, "--source", pipe.dataset().as_ref()).map_err(usage)?;
    Ok(Loader::new(Arc::new(pipe), batch_rows(asm), false, false, 0))
}

/// Runs every batch of the val loader through the validation schedule in `Mode::Eval` and returns the outputs
/// the collector kept. No ValidationEnd: there are no metrics to summarise (the placeholder targets' are
/// meaningless) and no checkpoint to write.
fn predict(asm: &mut Assembly) -> Result<CollectedOutputs, EngineError> {
    let app = &mut asm.app;
    app.world.insert_resource(CollectedOutputs::default());
    let batches = app.world.resource::<ValLoader>().loader.batches_per_epoch();
    app.world.resource_mut::<ValLoader>().cursor = 0;
    in_pool(|| {
        app.run(ValidationStart);
        *app.world.resource_mut::<Mode>() = Mode::Eval;
        for _ in 0..batches {
            app.run(ValidationStep);
            if app.world.resource::<RunFailure>().0.is_some() {
                break;
            }
        }
        *app.world.resource_mut::<Mode>() = Mode::Train;
    });
    if let Some(f) = &app.world.resource::<RunFailure>().0 {
        return Err(EngineError::Run(f.clone()));
    }
    let out = app.world.remove_resource::<CollectedOutputs>().expect("inserted above");
    debug_assert!(out.indices.iter().enumerate().all(|(k, &i)| k == i), "an ordered loader delivers rows in order");
    Ok(out)
}

/// A CSV field, quoted when it holds a separator, a quote or a line break (RFC 4180).
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The predictions as CSV: classes with their probabilities for a classifier (`classes` its names), output
/// values otherwise.
fn csv(out: &CollectedOutputs, sample: &dyn Fn(usize) -> String, classes: Option<&[String]>, top_k: usize) -> String {
    let n = out.indices.len();
    let row_len = out.values.len().checked_div(n).unwrap_or(0);
    let mut text = String::new();
    match classes {
        Some(names) => {
            let k = top_k.min(names.len()).max(1);
            let mut header = vec!["sample".to_string(), "class".into(), "name".into(), "confidence".into()];
            for j in 2..=k {
                header.extend([format!("class_{j}"), format!("name_{j}"), format!("confidence_{j}")]);
            }
            text.push_str(&header.join(","));
            text.push('\n');
            for (row, &i) in out.values.chunks_exact(row_len.max(1)).zip(&out.indices) {
                let mut cells = vec![field(&sample(i))];
                for (c, p) in top_classes(row, k) {
                    cells.extend([c.to_string(), field(&names[c]), format!("{p}")]);
                }
                text.push_str(&cells.join(","));
                text.push('\n');
            }
        }
        None => {
            let header: Vec<String> =
                std::iter::once("sample".to_string()).chain((0..row_len).map(|j| format!("out_{j}"))).collect();
            text.push_str(&header.join(","));
            text.push('\n');
            for (row, &i) in out.values.chunks_exact(row_len.max(1)).zip(&out.indices) {
                let cells: Vec<String> =
                    std::iter::once(field(&sample(i))).chain(row.iter().map(|v| v.to_string())).collect();
                text.push_str(&cells.join(","));
                text.push('\n');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_rank_classes_and_quote_names() {
        let out = CollectedOutputs { values: vec![0.0, 2.0, 1.0, 5.0, 0.0, 0.0], indices: vec![0, 1] };
        let names = ["cat".to_string(), "dog, big".to_string(), "cow".to_string()];
        let sample = |i: usize| format!("img{i}.png");
        let text = csv(&out, &sample, Some(&names), 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "sample,class,name,confidence,class_2,name_2,confidence_2");
        let z = 1.0 + 2f64.exp() + 1f64.exp();
        assert!(lines[1].starts_with("img0.png,1,\"dog, big\","), "{}", lines[1]);
        let cells: Vec<&str> = lines[1].rsplitn(4, ',').collect();
        assert_eq!((cells[2], cells[1]), ("2", "cow"));
        let p1: f64 = lines[1]["img0.png,1,\"dog, big\",".len()..].split(',').next().unwrap().parse().unwrap();
        let p2: f64 = cells[0].parse().unwrap();
        assert!((p1 - 2f64.exp() / z).abs() < 1e-15 && (p2 - 1f64.exp() / z).abs() < 1e-15, "{p1} {p2}");
        assert!(lines[2].starts_with("img1.png,0,cat,"), "{}", lines[2]);
        // Other tasks: the output values.
        let text = csv(&out, &|i: usize| i.to_string(), None, 1);
        assert_eq!(text, "sample,out_0,out_1,out_2\n0,0,2,1\n1,5,0,0\n");
    }

    #[test]
    fn out_types_are_named() {
        assert_eq!(out_format(None).unwrap(), OutFormat::Csv);
        assert_eq!(out_format(Some(Path::new("p.NPY"))).unwrap(), OutFormat::Npy);
        let e = out_format(Some(Path::new("p.json"))).unwrap_err().to_string();
        assert!(e.contains("--out p.json") && e.contains(".csv") && e.contains(".npy"), "{e}");
    }
}
