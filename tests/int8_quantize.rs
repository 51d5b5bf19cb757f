//! `engine quantize` on trained digits models: the int8 model's validation accuracy, in the engine (int8
//! kernels) and in onnxruntime (the exported QDQ model), is within 1 point of the float model's for every
//! calibration method, and onnxruntime's int8 outputs agree with the engine's int8 forward. Bad input exits 2.
//!
//! Needs python3 with `onnx` and `onnxruntime` for the onnxruntime half (see tests/onnx_export.rs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{engine, onnxruntime_available, python, repo, scratch, text, write_npy};
use ecstrain::components::{Buffers, Graph, Mode, Params};
use ecstrain::deploy::quant::Int8Model;
use ecstrain::engine::cli::RunArgs;
use ecstrain::engine::export_cmd::assemble_trained;
use ecstrain::engine::quantize_cmd::calibrate;
use ecstrain::kernels::quant::calibrate::CalibMethod;
use ecstrain::systems::data::npy::NpyArray;
use ecstrain::systems::graph::{forward_with, Activations, NodeOverride};

/// `name value` from the `metric float int8 int8-float` table `engine quantize` prints.
fn table_row(out: &str, metric: &str) -> (f64, f64) {
    let line = out.lines().find(|l| l.split_whitespace().next() == Some(metric)).unwrap_or_else(|| panic!("{out}"));
    let v: Vec<f64> = line.split_whitespace().skip(1).map(|t| t.parse().unwrap()).collect();
    (v[0], v[1])
}

/// The engine's int8 logits on all val rows, calibrated exactly as the CLI does.
fn engine_int8_logits(
    config: &Path,
    sets: &[String],
    method: CalibMethod,
    x: &[f32],
    n: usize,
) -> (Vec<usize>, Vec<f32>) {
    let run = RunArgs { config: Some(config.to_path_buf()), set: sets.to_vec(), headless: true };
    let (mut asm, _) = assemble_trained(&run, "last").unwrap();
    let cal = calibrate(&mut asm, 8).unwrap();
    let world = &asm.app.world;
    let graph = world.resource::<Graph>().clone();
    let params = world.resource::<Params>().0.data.clone();
    let mut buffers = world.resource::<Buffers>().arena.data.clone();
    let mut model = Int8Model::new(&graph, &params, &cal.amaxes(method), n);
    let mut acts = Activations::plan(&graph, n);
    let hook: &mut dyn NodeOverride = &mut model;
    forward_with(&graph, &params, &mut buffers, &mut acts, x, n, Mode::Eval, 0, Some(hook));
    let mut shape = vec![n];
    shape.extend(graph.output_shape());
    (shape, acts.output(&graph, n).to_vec())
}

/// Trains `config` for `epochs`, quantizes its last checkpoint with every method and checks the accuracies.
fn quantize_and_check(name: &str, config: &str, epochs: usize, extra: &[&str]) {
    let dir = scratch(&format!("int8_{name}"));
    let config = repo().join("configs").join(config);
    let c = config.display().to_string();
    let mut sets: Vec<String> =
        vec![format!("run.epochs={epochs}"), format!("run.save_dir={}", dir.join("run").display())];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let set_args: Vec<String> = sets.iter().flat_map(|s| ["--set".to_string(), s.clone()]).collect();
    let mut train: Vec<&str> = vec!["--config", &c, "--headless"];
    train.extend(set_args.iter().map(String::as_str));
    let out = engine(&train);
    assert!(out.status.success(), "{name}: training failed:\n{}", text(&out));

    let ort = onnxruntime_available(name);
    let xs = NpyArray::open(&repo().join("data/digits/val_x.npy")).unwrap();
    let n = xs.rows();
    let x = xs.to_f32_vec();
    write_npy(&dir.join("input.npy"), xs.shape(), &x);
    let labels: Vec<f32> = NpyArray::open(&repo().join("data/digits/val_y.npy"))
        .unwrap()
        .to_i64_vec()
        .unwrap()
        .iter()
        .map(|&v| v as f32)
        .collect();
    write_npy(&dir.join("labels.npy"), &[n], &labels);

    for (method, calib) in [
        ("max", CalibMethod::Max),
        ("percentile", CalibMethod::Percentile(99.99)),
        ("entropy", CalibMethod::Entropy),
        ("mse", CalibMethod::Mse),
    ] {
        let onnx = dir.join(format!("{name}_{method}.onnx"));
        let o = onnx.display().to_string();
        let mut q: Vec<&str> =
            vec!["quantize", "--config", &c, "--checkpoint", "last", "--method", method, "--out", &o];
        q.extend(set_args.iter().map(String::as_str));
        let out = engine(&q);
        let report = text(&out);
        assert!(out.status.success(), "{name} {method}: quantize failed:\n{report}");
        let (float_acc, int8_acc) = table_row(&report, "accuracy");
        println!("{name} {method}: engine float accuracy {float_acc:.4}, int8 {int8_acc:.4}");
        assert!(float_acc >= 0.9, "{name}: the float model did not train ({float_acc})\n{report}");
        assert!((int8_acc - float_acc).abs() <= 0.01, "{name} {method}: int8 accuracy {int8_acc} vs float {float_acc}");
        if !ort {
            continue;
        }
        let (shape, logits) = engine_int8_logits(&config, &sets, calib, &x, n);
        write_npy(&dir.join("engine_int8.npy"), &shape, &logits);
        let check = Command::new(python())
            .arg(repo().join("tests/scripts/check_onnx_int8.py"))
            .args([&onnx, &dir.join("input.npy"), &dir.join("labels.npy"), &dir.join("engine_int8.npy")])
            .output()
            .unwrap();
        let line = text(&check);
        assert!(check.status.success(), "{name} {method}: {line}");
        println!("{name} {method}: onnxruntime {}", line.trim());
        let field = |k: &str| -> f64 {
            line.split_whitespace().find_map(|t| t.strip_prefix(&format!("{k}="))).unwrap().parse().unwrap()
        };
        assert!((field("accuracy") - float_acc).abs() <= 0.01, "{name} {method}: onnxruntime int8 accuracy: {line}");
        // The same int8 arithmetic as the QDQ graph's definition: outputs agree up to the few activations
        // that round to the other side of a quantization step. How many do depends on float rounding
        // upstream (an erf's last bit moves a GELU output across a step), so the bound is 1% or, when
        // onnxruntime's own optimized and spec evaluations are farther apart than that, their distance.
        let bound = 0.01f64.max(field("ort_spread"));
        assert!(field("max_rel_err") <= bound, "{name} {method}: {line}");
        assert!(field("max_rel_err").min(field("optimized_rel_err")) <= 0.01, "{name} {method}: {line}");
        assert!(field("argmax_agree") >= 0.99, "{name} {method}: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cnn_int8_matches_float_accuracy() {
    quantize_and_check("cnn", "digits_cnn.yaml", 15, &[]);
}

#[test]
fn vit_int8_matches_float_accuracy() {
    quantize_and_check("vit", "digits_vit.yaml", 15, &[]);
}

/// Zero calibration batches, an unknown method, a bad percentile and a checkpoint of another model exit 2
/// and write nothing.
#[test]
fn bad_quantize_input_exits_2() {
    let dir = scratch("int8_bad");
    let run = format!("run.save_dir={}", dir.join("run").display());
    let mlp = repo().join("configs/digits_mlp.yaml").display().to_string();
    let out = engine(&["--config", &mlp, "--set", "run.epochs=1", "--set", &run, "--headless"]);
    assert!(out.status.success(), "{}", text(&out));
    let target: PathBuf = dir.join("q.onnx");
    let t = target.display().to_string();
    let base = ["quantize", "--config", &mlp, "--set", &run, "--checkpoint", "last", "--out", &t];
    let cases: [(&[&str], &str); 5] = [
        (&["--calib-batches", "0"], "--calib-batches: must be at least 1"),
        (&["--bench", "inf"], "--bench: seconds per model must be in (0, 3600], got inf"),
        (&["--bench", "NaN"], "--bench: seconds per model must be in (0, 3600], got NaN"),
        (&["--method", "minmaxx"], "valid choices: max, percentile, entropy, mse"),
        (&["--method", "percentile", "--percentile", "120"], "--percentile: percentile must be in (0, 100]"),
    ];
    for (extra, want) in &cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra.iter());
        let out = engine(&args);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{extra:?}: {}", text(&out));
    }
    // Calibration data with a NaN: the ranges would be meaningless, so the data is named instead.
    let nan_x = dir.join("nan_x.npy");
    let mut x = vec![0.5f32; 1437 * 64];
    x[64 * 3 + 5] = f32::NAN;
    write_npy(&nan_x, &[1437, 64], &x);
    let set_x = format!("datasets.digits.train.x={}", nan_x.display());
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--set", &set_x]);
    let out = engine(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("has a non-finite input value"), "{}", text(&out));
    let cnn = repo().join("configs/digits_cnn.yaml").display().to_string();
    let out = engine(&["quantize", "--config", &cnn, "--set", &run, "--checkpoint", "last", "--out", &t]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("does not match the model"), "{}", text(&out));
    assert!(!target.exists(), "a failed quantize wrote {t}");
}

/// Quantization-aware training: a float CNN fine-tuned with `run.qat: true` (fake-quantized inputs and
/// weights, straight-through gradients) keeps its accuracy, `engine quantize` takes the ranges QAT learned
/// (no calibration), and the int8 model (engine and onnxruntime) is within 1 point of the float model. The
/// QAT checkpoint holds the learned ranges, so it resumes and evaluates as it was trained.
#[test]
fn qat_fine_tune_quantizes_with_its_learned_ranges() {
    let dir = scratch("int8_qat");
    let c = repo().join("configs/digits_cnn.yaml").display().to_string();
    let float_run = format!("run.save_dir={}", dir.join("float").display());
    let out = engine(&["--config", &c, "--set", "run.epochs=12", "--set", &float_run, "--headless"]);
    assert!(out.status.success(), "{}", text(&out));
    let float_best = dir.join("float/checkpoints/best.safetensors").display().to_string();
    let qat_run = format!("run.save_dir={}", dir.join("qat").display());
    let pre = format!("model.pretrained={float_best}");
    let qat_sets = ["--set", "run.qat=true", "--set", &qat_run];
    let mut args = vec!["--config", &c, "--headless", "--set", "run.epochs=3", "--set", "run.warmup_epochs=0"];
    args.extend(["--set", "run.lr0=0.0005", "--set", &pre]);
    args.extend(qat_sets);
    let out = engine(&args);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("run.qat: fake quantization (int8) on the inputs and weights of 4"), "{log}");

    // The float model's own accuracy, for the comparison.
    let out = engine(&["eval", "--config", &c, "--set", &float_run, "--checkpoint", "best"]);
    let float_acc: f64 = text(&out)
        .lines()
        .find_map(|l| l.strip_prefix("accuracy").map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("{}", text(&out)));

    let onnx = dir.join("qat_int8.onnx");
    let o = onnx.display().to_string();
    let mut q = vec!["quantize", "--config", &c, "--checkpoint", "best", "--out", &o];
    q.extend(qat_sets);
    let out = engine(&q);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("learned by QAT"), "{report}");
    let (qat_acc, int8_acc) = table_row(&report, "accuracy");
    println!("qat: float {float_acc:.4}, fake-quantized {qat_acc:.4}, int8 {int8_acc:.4}");
    assert!(float_acc >= 0.9, "{float_acc}");
    assert!((int8_acc - float_acc).abs() <= 0.01, "int8 {int8_acc} vs float {float_acc}\n{report}");
    assert!((int8_acc - qat_acc).abs() <= 0.01, "int8 {int8_acc} vs fake-quantized {qat_acc}\n{report}");

    // The learned ranges are checkpointed: the QAT checkpoint loads exactly (it resumes and evaluates).
    let ck =
        ecstrain::systems::checkpoint::safetensors_io::load_safetensors(&dir.join("qat/checkpoints/best.safetensors"))
            .unwrap();
    let amax = ck.tensors["features.3.input_quant.amax"].data.as_f32().unwrap()[0];
    assert!(amax > 0.0, "{amax}");
    let mut ev = vec!["eval", "--config", &c, "--checkpoint", "best"];
    ev.extend(qat_sets);
    let out = engine(&ev);
    assert!(out.status.success(), "{}", text(&out));

    if onnxruntime_available("qat_fine_tune") {
        let xs = NpyArray::open(&repo().join("data/digits/val_x.npy")).unwrap();
        write_npy(&dir.join("input.npy"), xs.shape(), &xs.to_f32_vec());
        let labels: Vec<f32> = NpyArray::open(&repo().join("data/digits/val_y.npy"))
            .unwrap()
            .to_i64_vec()
            .unwrap()
            .iter()
            .map(|&v| v as f32)
            .collect();
        write_npy(&dir.join("labels.npy"), &[labels.len()], &labels);
        // Accuracy only (`-`): the engine-vs-onnxruntime agreement is checked on the calibrated models above.
        let check = Command::new(python())
            .arg(repo().join("tests/scripts/check_onnx_int8.py"))
            .args([
                onnx.as_os_str(),
                dir.join("input.npy").as_os_str(),
                dir.join("labels.npy").as_os_str(),
                "-".as_ref(),
            ])
            .output()
            .unwrap();
        let line = text(&check);
        assert!(line.contains("accuracy="), "{line}");
        let acc: f64 = line.split_whitespace().find_map(|t| t.strip_prefix("accuracy=")).unwrap().parse().unwrap();
        println!("qat: onnxruntime int8 accuracy {acc:.4}");
        assert!((acc - float_acc).abs() <= 0.01, "onnxruntime int8 {acc} vs float {float_acc}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
