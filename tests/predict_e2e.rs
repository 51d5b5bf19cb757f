//! `engine predict`: a checkpoint's outputs on new inputs. The predictions agree with `engine eval` on the same
//! samples (accuracy recomputed from the CSV equals the evaluated accuracy; the .npy logits give the CSV's
//! classes), images are read as the training images were, `--split test` reads the test split, and bad
//! input exits 2 without writing.

mod common;

use std::path::Path;

use common::*;
use ecstrain::systems::data::npy::NpyArray;

/// `engine <args>`, asserting exit 0; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = engine(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `accuracy` of an `engine eval` output.
fn eval_accuracy(stdout: &str) -> f64 {
    stdout.lines().find_map(|l| l.strip_prefix("accuracy ")).unwrap().trim().parse().unwrap()
}

/// The rows of a CSV text (header first), split at commas (the tests' names hold none).
fn rows(csv: &str) -> Vec<Vec<String>> {
    csv.lines().map(|l| l.split(',').map(str::to_string).collect()).collect()
}

#[test]
fn predictions_agree_with_eval_on_a_split_and_an_array() {
    let dir = scratch("predict_mlp");
    // The val split doubles as a test split, so `--split test` must reproduce `--split val`.
    let yaml = digits_yaml(&dir.join("run")).replace(
        "run:\n",
        &format!(
            "    test:\n      x: {r}/data/digits/val_x.npy\n      y: {r}/data/digits/val_y.npy\nrun:\n",
            r = repo().display()
        ),
    );
    let cfg = write_config(&dir, "c.yaml", &yaml);
    let c = cfg.to_str().unwrap();
    ok(&["--config", c, "--headless"]);
    let accuracy = eval_accuracy(&ok(&["eval", "--config", c, "--checkpoint", "last"]));
    assert_eq!(accuracy, eval_accuracy(&ok(&["eval", "--config", c, "--checkpoint", "last", "--split", "test"])));

    // CSV on stdout, top 3: the accuracy recomputed from the rows is eval's.
    let csv = ok(&["predict", "--config", c, "--checkpoint", "last", "--split", "val", "--top-k", "3"]);
    let table = rows(&csv);
    assert_eq!(
        table[0].join(","),
        "sample,class,name,confidence,class_2,name_2,confidence_2,class_3,name_3,confidence_3"
    );
    let labels = NpyArray::open(&repo().join("data/digits/val_y.npy")).unwrap().to_i64_vec().unwrap();
    assert_eq!(table.len() - 1, labels.len());
    let mut right = 0;
    for (k, row) in table[1..].iter().enumerate() {
        assert_eq!(row[0], k.to_string(), "rows in sample order");
        let p: Vec<f64> = [3, 6, 9].iter().map(|&j| row[j].parse().unwrap()).collect();
        assert!(p[0] >= p[1] && p[1] >= p[2] && p.iter().sum::<f64>() <= 1.0 + 1e-12, "{row:?}");
        right += usize::from(row[1].parse::<i64>().unwrap() == labels[k]);
    }
    assert_eq!(right as f64 / labels.len() as f64, accuracy);
    assert_eq!(ok(&["predict", "--config", c, "--checkpoint", "last", "--split", "test", "--top-k", "3"]), csv);

    // The same samples from the .npy file: the raw logits' argmax is the CSV's class.
    let npy = dir.join("logits.npy");
    let x = repo().join("data/digits/val_x.npy");
    let args = ["predict", "--config", c, "--checkpoint", "last", "--source", x.to_str().unwrap()];
    ok(&[&args[..], &["--out", npy.to_str().unwrap()]].concat());
    let logits = NpyArray::open(&npy).unwrap();
    assert_eq!(logits.shape(), &[labels.len(), 10]);
    let values = logits.to_f32_vec();
    for (k, row) in values.chunks(10).enumerate() {
        let best = (0..10).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        assert_eq!(best.to_string(), table[k + 1][1], "sample {k}");
    }
}

#[test]
fn images_are_predicted_as_the_training_images_were_read() {
    let dir = scratch("predict_images");
    let cfg = repo().join("configs/digits_images_cnn.yaml");
    let c = cfg.to_str().unwrap();
    let save = format!("run.save_dir={}", dir.join("run").display());
    let sets = ["--set", &save, "--set", "run.epochs=1", "--set", "run.exist_ok=true"];
    ok(&[&["--config", c, "--headless"][..], &sets].concat());
    let accuracy = eval_accuracy(&ok(&[&["eval", "--config", c, "--checkpoint", "last"][..], &sets].concat()));
    let out = dir.join("p.csv");
    let val = repo().join("data/digits_images/val");
    let base = [&["predict", "--config", c, "--checkpoint", "last"][..], &sets].concat();
    ok(&[&base[..], &["--source", val.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat());
    let table = rows(&std::fs::read_to_string(&out).unwrap());
    // The folder of each image is its class: the CSV's names score as eval scored the val split.
    let right = table[1..].iter().filter(|r| Path::new(&r[0]).parent().unwrap().ends_with(&r[2])).count();
    assert_eq!(right as f64 / (table.len() - 1) as f64, accuracy);
    // The config's val split (the same files) names its samples by their files too, and predicts the same.
    let split = rows(&ok(&[&base[..], &["--split", "val"]].concat()));
    assert_eq!(split.len(), table.len());
    for (a, b) in split[1..].iter().zip(&table[1..]) {
        let rel = Path::new(&b[0]).strip_prefix(repo().join("data/digits_images")).unwrap();
        assert!(Path::new(&a[0]).ends_with(rel), "{} vs {}", a[0], b[0]);
        assert_eq!(a[1..], b[1..]);
    }
    // One image alone gives its row of the folder's predictions (to float rounding: a batch of one takes
    // other GEMM paths than a batch of 64).
    let one = &table[5];
    let single = &rows(&ok(&[&base[..], &["--source", &one[0]]].concat()))[1];
    assert_eq!(single[..3], one[..3]);
    let (a, b): (f64, f64) = (single[3].parse().unwrap(), one[3].parse().unwrap());
    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
}

#[test]
fn bad_predict_input_exits_2_and_writes_nothing() {
    let dir = scratch("predict_bad");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&dir.join("run")));
    let c = cfg.to_str().unwrap();
    ok(&["--config", c, "--headless", "--set", "run.epochs=1"]);
    let out = dir.join("out.csv");
    let o = out.to_str().unwrap();
    let y = repo().join("data/digits/val_y.npy");
    let images = repo().join("data/digits_images/val");
    let json = dir.join("out.json");
    let empty = dir.join("empty.npy");
    ecstrain::systems::data::npy::write_npy(&empty, &[0, 64], &[] as &[f32]).unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["--source", empty.to_str().unwrap(), "--out", o], "has no samples"),
        (&["--source", "/nonexistent/x.npy", "--out", o], "no such file"),
        (&["--source", y.to_str().unwrap(), "--out", o], "shape [1], but the model takes [64]"),
        (&["--source", images.to_str().unwrap(), "--out", o], "not images"),
        (&["--split", "test", "--out", o], "no test split"),
        (&["--split", "val", "--out", json.to_str().unwrap()], "valid choices: a .csv file"),
        (&["--split", "val", "--top-k", "0", "--out", o], "--top-k"),
        (&["--split", "val", "--out", o, "--checkpoint", "/nonexistent.safetensors"], "checkpoint not found"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["predict", "--config", c];
        if !extra.contains(&"--checkpoint") {
            args.extend(["--checkpoint", "last"]);
        }
        args.extend_from_slice(extra);
        let res = engine(&args);
        let m = text(&res);
        assert_eq!(res.status.code(), Some(2), "{extra:?}: {m}");
        assert!(m.contains(needle) && !m.contains("panicked"), "{extra:?}: {m}");
        assert!(!out.exists() && !json.exists(), "{extra:?}: wrote an output");
    }
    // Neither a source nor a split: clap's usage error (exit 2).
    let res = engine(&["predict", "--config", c, "--checkpoint", "last"]);
    assert_eq!(res.status.code(), Some(2), "{}", text(&res));
}

#[test]
fn cuda_predictions_match_the_cpu() {
    if ecstrain::kernels::cuda::testing::no_gpu("cuda_predictions_match_the_cpu") {
        return;
    }
    let dir = scratch("predict_cuda");
    let cfg = write_config(&dir, "c.yaml", &digits_yaml(&dir.join("run")));
    let c = cfg.to_str().unwrap();
    ok(&["--config", c, "--headless", "--set", "run.epochs=1"]);
    let predict = |device: &str| -> Vec<f32> {
        let out = dir.join(format!("{device}.npy"));
        let set = format!("run.device={device}");
        ok(&["predict", "--config", c, "--set", &set, "--checkpoint", "last", "--split", "val", "--out"]
            .iter()
            .copied()
            .chain([out.to_str().unwrap()])
            .collect::<Vec<_>>());
        NpyArray::open(&out).unwrap().to_f32_vec()
    };
    let (cpu, gpu) = (predict("cpu"), predict("cuda"));
    assert_eq!(cpu.len(), gpu.len());
    // Every logit written, and equal to float rounding (cuBLAS against the CPU's GEMM).
    for (i, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
        assert!(b.is_finite() && (a - b).abs() <= 1e-4 + 1e-4 * a.abs(), "logit {i}: cpu {a} cuda {b}");
    }
}
