//! `engine quantize`: int8 post-training quantization of a trained checkpoint.
//!
//! 1. The config's model is assembled on the CPU with the checkpoint's weights (as `engine export`).
//! 2. Calibration: `--calib-batches` batches of the train split, in order and through the eval processors,
//!    run through the float model in eval mode; the input of every linear and conv2d node feeds a streaming
//!    histogram, and `--method` (max, percentile, entropy, mse) turns it into the input's scale.
//! 3. The weights of those nodes are quantized per output channel; the val split is evaluated with the float
//!    model and with the int8 model (the quantized nodes run on the int8 kernels, i32 accumulation), and both
//!    sets of metrics are printed side by side with each pass's throughput.
//! 4. The int8 model is written as a QDQ ONNX file (`--out`): QuantizeLinear / DequantizeLinear pairs on the
//!    inputs, int8 weights with per-channel DequantizeLinear, as onnxruntime and TensorRT read them.
//!
//! Nothing is written until every step before the export has succeeded.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ecstrain_components::{Batch, Buffers, Graph, Metrics, Mode, Params, RunFailure};
use ecstrain_deploy::quant::systems::ForwardReplaced;
use ecstrain_deploy::quant::{qat_ranges, Calibration, Int8Model};
use ecstrain_kernels::quant::calibrate::CalibMethod;
use ecstrain_systems::data::{Dataset, ValLoader};
use ecstrain_systems::graph::{forward, forward_with, Activations};

use crate::assemble::Assembly;
use crate::cli::RunArgs;
use crate::error::{usage, EngineError};
use crate::eval::ordered_train_loader;
use crate::export_cmd::{assemble_trained, write_onnx};
use crate::runner::{in_pool, validation_pass};

/// Options of `engine quantize`.
#[derive(Args, Debug, Clone)]
pub struct QuantizeArgs {
    /// The config (and overrides) the model was trained with.
    #[command(flatten)]
    pub run: RunArgs,
    /// `best` or `last` of the latest run directory of the config's run.save_dir, or a checkpoint path.
    #[arg(long, value_name = "best|last|PATH")]
    pub checkpoint: String,
    /// Calibration method for the activation ranges: max, percentile, entropy or mse.
    #[arg(long, default_value = "max")]
    pub method: String,
    /// Percentile of |x| kept by `--method percentile`, in (0, 100].
    #[arg(long, default_value_t = ecstrain_kernels::quant::calibrate::DEFAULT_PERCENTILE)]
    pub percentile: f64,
    /// Training batches (of run.batch samples) to calibrate on; at least 1.
    #[arg(long, default_value_t = 8)]
    pub calib_batches: usize,
    /// Where to write the int8 QDQ ONNX model.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Also time pure inference (model forward only, one run.batch of val inputs, repeated for about this
    /// many seconds per model) in float and in int8.
    #[arg(long, value_name = "SECONDS")]
    pub bench: Option<f64>,
}

/// Forward passes per second over one batch of `n` rows, for about `secs` seconds: float, or with `int8`.
fn inference_rate(asm: &Assembly, x: &[f32], n: usize, int8: Option<&mut Int8Model>, secs: f64) -> f64 {
    let world = &asm.app.world;
    let graph = world.resource::<Graph>();
    let params = &world.resource::<Params>().0.data;
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    let mut acts = Activations::plan(graph, n);
    let mut int8 = int8;
    in_pool(|| {
        let mut pass = || match int8.as_deref_mut() {
            Some(m) => forward_with(graph, params, &mut buffers, &mut acts, x, n, Mode::Eval, 0, Some(m)),
            None => forward(graph, params, &mut buffers, &mut acts, x, n, Mode::Eval, 0),
        };
        pass(); // warm-up
        let (t, mut iters) = (Instant::now(), 0u64);
        while t.elapsed().as_secs_f64() < secs || iters < 3 {
            pass();
            iters += 1;
        }
        (iters * n as u64) as f64 / t.elapsed().as_secs_f64()
    })
}

/// The calibration method the arguments name, or an exit-2 message listing the choices.
fn method(args: &QuantizeArgs) -> Result<CalibMethod, EngineError> {
    match CalibMethod::parse(&args.method) {
        Some(CalibMethod::Percentile(_)) => CalibMethod::percentile(args.percentile, "--percentile").map_err(usage),
        Some(m) => Ok(m),
        None => Err(usage(format!(
            "--method: unknown calibration method `{}`; valid choices: {}",
            args.method,
            CalibMethod::NAMES.join(", ")
        ))),
    }
}

/// Runs the float model over the first `batches` ordered training batches and observes the inputs of the
/// quantizable nodes. Returns the calibration and the number of batches used.
pub fn calibrate(asm: &mut Assembly, batches: usize) -> Result<Calibration, EngineError> {
    let mut loader = ordered_train_loader(asm)?;
    let world = &mut asm.app.world;
    let graph = world.resource::<Graph>().clone();
    let params = world.resource::<Params>().0.data.clone();
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    let mut batch = world.resource::<Batch>().clone();
    // Rows a batch can have: run.batch, at most the split (as assembly plans the training buffers).
    let mut acts = Activations::plan(&graph, loader.batch_size().min(loader.pipeline().len().max(1)));
    let mut cal = Calibration::new(&graph);
    for b in 0..batches.min(loader.batches_per_epoch()) {
        loader.fetch(0, b, &mut batch).map_err(|e| EngineError::Run(format!("calibration batch {b}: {e}")))?;
        // Ranges observed on NaN or infinite inputs are meaningless (they came out as 0, a model that
        // quantizes everything to zero): the data is at fault, and says so.
        if let Some(i) = batch.inputs[..batch.size * batch.input_len].iter().position(|v| !v.is_finite()) {
            let sample = batch.indices[i / batch.input_len.max(1)];
            return Err(usage(format!(
                "calibration: train sample {sample} ({}) has a non-finite input value; int8 ranges cannot be \
                 calibrated on NaN or infinity",
                loader.pipeline().describe()
            )));
        }
        in_pool(|| forward(&graph, &params, &mut buffers, &mut acts, &batch.inputs, batch.size, Mode::Eval, 0));
        cal.observe(&graph, &acts, &batch.inputs, batch.size);
    }
    Ok(cal)
}

/// One validation pass; its metrics and samples per second.
fn validate(asm: &mut Assembly) -> Result<(Vec<(String, f64)>, f64), EngineError> {
    let samples = asm.app.world.resource::<ValLoader>().loader.pipeline().len();
    let t = Instant::now();
    in_pool(|| validation_pass(&mut asm.app));
    let secs = t.elapsed().as_secs_f64();
    if let Some(f) = &asm.app.world.resource::<RunFailure>().0 {
        return Err(EngineError::Run(f.clone()));
    }
    let metrics = asm.app.world.resource::<Metrics>().last_val.iter().map(|(k, v)| (k.clone(), *v)).collect();
    Ok((metrics, samples as f64 / secs.max(1e-9)))
}

/// The longest `--bench` timing per model: an hour, past any use (infinity or 1e300 ran forever).
pub const MAX_BENCH_SECONDS: f64 = 3600.0;

/// Runs `engine quantize`.
pub fn run(args: &QuantizeArgs) -> Result<(), EngineError> {
    let method = method(args)?;
    if args.calib_batches == 0 {
        return Err(usage("--calib-batches: must be at least 1 (calibration needs data to set the activation ranges)"));
    }
    if let Some(s) = args.bench.filter(|s| !(s.is_finite() && *s > 0.0 && *s <= MAX_BENCH_SECONDS)) {
        return Err(usage(format!("--bench: seconds per model must be in (0, {MAX_BENCH_SECONDS}], got {s}")));
    }
    // A --out that can never be written fails now, not after calibration and validation.
    crate::out_path::out_file("--out", &args.out)?;
    let (mut asm, ckpt) = assemble_trained(&args.run, &args.checkpoint)?;
    asm.app.world.remove_resource::<ecstrain_components::EmaWeights>();
    if !asm.app.world.contains_resource::<ValLoader>() {
        let name = asm.loaded.config.datasets.keys().next().cloned().unwrap_or_default();
        return Err(usage(format!("datasets.{name}: quantization evaluates on the val split, and there is none")));
    }
    let cal = calibrate(&mut asm, args.calib_batches)?;
    let (float_metrics, float_rate) = validate(&mut asm)?;

    let mut amaxes = cal.amaxes(method);
    // A QAT-trained model brings its own ranges: the ones its fake quantization was trained with.
    let learned = {
        let world = &asm.app.world;
        qat_ranges(world.resource::<Graph>(), &world.resource::<Buffers>().arena.data)
    };
    for (i, a) in &learned {
        if let Some(slot) = amaxes.iter_mut().find(|(j, _)| j == i) {
            slot.1 = *a;
        }
    }
    let capacity = asm.app.world.resource::<Activations>().capacity;
    let model = {
        let world = &asm.app.world;
        Int8Model::new(world.resource::<Graph>(), &world.resource::<Params>().0.data, &amaxes, capacity)
    };
    let plan = model.qdq_plan();
    let quantized = model.len();
    let mut model = model;
    let bench = match args.bench {
        Some(secs) => {
            let mut batch = asm.app.world.resource::<Batch>().clone();
            asm.app
                .world
                .resource_mut::<ValLoader>()
                .loader
                .fetch(0, 0, &mut batch)
                .map_err(|e| EngineError::Run(e.to_string()))?;
            let (x, n) = (&batch.inputs[..batch.size * batch.input_len], batch.size);
            Some((n, inference_rate(&asm, x, n, None, secs), inference_rate(&asm, x, n, Some(&mut model), secs)))
        }
        None => None,
    };
    asm.app.world.insert_resource(model);
    asm.app.world.insert_resource(ForwardReplaced);
    let (int8_metrics, int8_rate) = validate(&mut asm)?;

    let bytes = write_onnx(&mut asm, Some(&plan), &args.out)?;
    println!(
        "quantized {quantized} linear / conv2d nodes of {} from {} to int8 ({} calibration, {} batches)",
        asm.app.world.resource::<Graph>().arch,
        ckpt.display(),
        args.method,
        cal.batches()
    );
    {
        let graph = asm.app.world.resource::<Graph>();
        let ranges: Vec<String> = amaxes.iter().map(|(i, a)| format!("{} {a:.4}", graph.nodes[*i].name)).collect();
        let source = if learned.is_empty() { "calibrated" } else { "learned by QAT (run.qat)" };
        println!("input ranges (amax, {source}): {}", ranges.join(", "));
    }
    println!("{:<16} {:>12} {:>12} {:>12}", "metric", "float", "int8", "int8-float");
    for ((name, f), (_, q)) in float_metrics.iter().zip(&int8_metrics) {
        println!("{name:<16} {f:>12.6} {q:>12.6} {:>12.6}", q - f);
    }
    println!("{:<16} {float_rate:>12.1} {int8_rate:>12.1}", "val samples/s");
    if let Some((n, f, q)) = bench {
        println!("{:<16} {f:>12.1} {q:>12.1} {:>11.2}x", format!("infer/s (b{n})"), q / f);
    }
    println!("wrote {} (int8 QDQ ONNX, opset {}, {bytes} bytes)", args.out.display(), ecstrain_deploy::onnx::OPSET);
    Ok(())
}
