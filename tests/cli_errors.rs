//! Bad input: every case exits 2 with a message naming the problem, and writes nothing.

mod common;

use common::*;

/// Runs a config that must be rejected; returns the message. Checks exit code 2 and no run directory.
fn rejected(name: &str, yaml_edit: impl Fn(String) -> String, extra: &[&str]) -> String {
    let dir = scratch(name);
    let save = dir.join("run");
    let cfg = write_config(&dir, "bad.yaml", &yaml_edit(digits_yaml(&save)));
    let mut args = vec!["--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = engine(&args);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{name}: expected exit 2, got {:?}\n{msg}", out.status.code());
    assert!(!save.exists(), "{name}: the run directory was created for a rejected config");
    assert!(msg.contains("bad.yaml") || name == "missing_config", "{name}: message does not name the file:\n{msg}");
    assert!(!msg.contains("panicked"), "{name}: panic instead of an error:\n{msg}");
    msg
}

#[test]
fn missing_config_file() {
    let out = engine(&["--config", "/nonexistent/dir/x.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let m = text(&out);
    assert!(m.contains("config file not found") && m.contains("/nonexistent/dir/x.yaml"), "{m}");
}

#[test]
fn yaml_syntax_error_names_the_line() {
    let m = rejected("syntax", |y| y.replace("epochs: 2", "epochs: [2"), &[]);
    assert!(m.contains("line 16"), "{m}");
}

#[test]
fn unknown_key_lists_valid_keys() {
    let m = rejected("unknown_key", |y| y.replace("epochs: 2", "epoch: 2"), &[]);
    assert!(m.contains("unknown field `epoch`") && m.contains("did you mean `epochs`") && m.contains("lr0"), "{m}");
    let m = rejected("unknown_model_key", |y| y.replace("hidden_sizes", "hiden_sizes"), &[]);
    assert!(m.contains("hiden_sizes") && m.contains("did you mean `hidden_sizes`"), "{m}");
}

#[test]
fn wrong_type_names_the_line() {
    let m = rejected("wrong_type", |y| y.replace("batch: 64", "batch: sixty-four"), &[]);
    assert!(m.contains("line 17") && m.contains("invalid u64") && m.contains("batch: sixty-four"), "{m}");
    // serde-saphyr's user wording, not its advice to developers about parser options.
    let m = rejected("duplicate_key", |y| y.replace("epochs: 2", "epochs: 2\n  epochs: 3"), &[]);
    assert!(m.contains("duplicate mapping key `epochs`") && !m.contains("Policy"), "{m}");
    let m = rejected("null_value", |y| y.replace("arch: mlp", "arch:"), &[]);
    assert!(m.contains("null is not allowed here") && !m.contains("Option<"), "{m}");
    let m = rejected("wrong_type_set", |y| y, &["--set", "run.lr0=fast"]);
    assert!(m.contains("run.lr0") && m.contains("invalid type"), "{m}");
    // Model and dataset options are the registered builders': the key is named there too.
    let m = rejected("wrong_type_model_key", |y| y, &["--set", "model.hidden_sizes=big"]);
    assert!(m.contains("model.hidden_sizes: invalid type"), "{m}");
    let m = rejected("wrong_type_dataset_key", |y| y, &["--set", "datasets.digits.dtype=3"]);
    assert!(m.contains("datasets.digits: dtype: invalid type"), "{m}");
}

#[test]
fn unknown_registry_names_list_registered_names() {
    let m = rejected("unknown_model", |y| y.replace("arch: mlp", "arch: mlpp"), &[]);
    assert!(
        m.contains("unknown model `mlpp`")
            && m.contains("did you mean `mlp`")
            && m.contains("registered: autoencoder, cnn, mlp, resnet, sequential, vit"),
        "{m}"
    );
    let m = rejected("unknown_dataset", |y| y.replace("builder: npy", "builder: numpy"), &[]);
    assert!(m.contains("unknown dataset builder `numpy`") && m.contains("npy"), "{m}");
    let m = rejected("unknown_optimizer", |y| y.replace("optimizer: AdamW", "optimizer: AdamX"), &[]);
    assert!(m.contains("unknown optimizer `AdamX`") && m.contains("adamw") && m.contains("sgd"), "{m}");
    let m = rejected("unknown_task", |y| y, &["--set", "run.task=clasification"]);
    assert!(m.contains("unknown task `clasification`") && m.contains("did you mean `classification`"), "{m}");
    let m = rejected("unknown_scheduler", |y| y, &["--set", "run.scheduler=cosin"]);
    assert!(m.contains("unknown scheduler `cosin`") && m.contains("cosine"), "{m}");
}

#[test]
fn missing_npy_file_names_the_file() {
    let m = rejected("missing_npy", |y| y.replace("train_x.npy", "nope_x.npy"), &[]);
    assert!(m.contains("nope_x.npy"), "{m}");
}

#[test]
fn unsupported_npy_dtype_names_dtype_and_choices() {
    let dir = scratch("bad_dtype_data");
    // A valid .npy v1.0 file of int32 ('<i4'), a dtype the reader does not take.
    let header = "{'descr': '<i4', 'fortran_order': False, 'shape': (1437, 64), }";
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 1437 * 64 * 4));
    let bad = dir.join("x_i4.npy");
    std::fs::write(&bad, bytes).unwrap();
    let badp = bad.display().to_string();
    let m = rejected(
        "bad_dtype",
        |y| {
            let r = repo().display().to_string();
            y.replace(&format!("{r}/data/digits/train_x.npy"), &badp)
        },
        &[],
    );
    assert!(m.contains("x_i4.npy") && m.contains("<i4") && m.contains("float32"), "{m}");
}

#[test]
fn data_shape_mismatch_names_both_sides() {
    let m = rejected("shape", |y| y.replace("input_size: 64", "input_size: 784"), &[]);
    assert!(m.contains("input_size is 784") && m.contains("64 features"), "{m}");
    let m = rejected("classes", |y| y.replace("output_size: 10", "output_size: 5"), &[]);
    assert!(m.contains("labels") && m.contains("go up to 9") && m.contains("5 outputs"), "{m}");
}

#[test]
fn bad_values_and_devices_are_rejected() {
    let m = rejected("lr", |y| y, &["--set", "run.lr0=-1"]);
    assert!(m.contains("run.lr0"), "{m}");
    let m = rejected("device", |y| y, &["--set", "run.device=tpu"]);
    assert!(m.contains("run.device") && m.contains("cuda"), "{m}");
    // A machine without a GPU: `run.device=cuda` says no CUDA driver / device was found. With a GPU, a bad
    // ordinal is rejected instead.
    match ecstrain::kernels::cuda::probe(0) {
        Err(_) => {
            let m = rejected("cuda", |y| y, &["--set", "run.device=cuda"]);
            assert!(m.contains("run.device") && m.contains("not available") && m.contains("no CUDA"), "{m}");
        }
        Ok(info) => {
            let bad = format!("run.device=cuda:{}", info.device_count);
            let m = rejected("cuda", |y| y, &["--set", &bad]);
            assert!(m.contains("does not exist"), "{m}");
        }
    }
    let m = rejected("preset", |y| y.replace("arch: mlp", "arch: mlp\n  type: digitz"), &[]);
    assert!(m.contains("model.type") && m.contains("did you mean `digits`"), "{m}");
    let m = rejected("warmup", |y| y, &["--set", "run.warmup_epochs=5", "--set", "run.scheduler=cosine"]);
    assert!(m.contains("run.warmup_epochs") && m.contains("longer than the run"), "{m}");
    let m = rejected("patience", |y| y, &["--set", "run.patience=-1"]);
    assert!(m.contains("patience"), "{m}");
    let m = rejected("amp", |y| y, &["--set", "run.amp=fp8"]);
    assert!(m.contains("run.amp") && m.contains("bf16"), "{m}");
    let m = rejected("tf32", |y| y, &["--set", "run.tf32=maybe"]);
    assert!(m.contains("run.tf32") && m.contains("boolean"), "{m}");
    let m = rejected("tf32_yaml", |y| y.replace("epochs: 2", "epochs: 2\n  tf32: maybe"), &[]);
    assert!(m.contains("tf32: maybe") && m.contains("true or false"), "{m}");
    let m = rejected("device_cache", |y| y, &["--set", "run.device_cache=maybe"]);
    assert!(m.contains("run.device_cache") && m.contains("boolean"), "{m}");
    let m = rejected("device_cache_yaml", |y| y.replace("epochs: 2", "epochs: 2\n  device_cache: maybe"), &[]);
    assert!(m.contains("device_cache: maybe") && m.contains("true or false"), "{m}");
    let m = rejected("amp_backoff", |y| y, &["--set", "run.amp_backoff=1.5"]);
    assert!(m.contains("run.amp_backoff"), "{m}");
    let m = rejected("clip", |y| y, &["--set", "run.clip_grad_norm=-1"]);
    assert!(m.contains("run.clip_grad_norm") && m.contains(">= 0"), "{m}");
    let m = rejected("fuse", |y| y, &["--set", "model.fuse=maybe"]);
    assert!(m.contains("fuse"), "{m}");
    for bad in ["-1", "-0.5"] {
        let m = rejected("bucket", |y| y, &["--set", &format!("run.bucket_mb={bad}")]);
        assert!(m.contains("run.bucket_mb") && m.contains(">= 0"), "{bad}: {m}");
    }
}

#[test]
fn bad_schedule_values_name_the_key_and_the_range() {
    let m = rejected("pct_start", |y| y, &["--set", "run.scheduler=one_cycle", "--set", "run.pct_start=1.5"]);
    assert!(m.contains("run.pct_start must be in (0, 1), got 1.5"), "{m}");
    let m = rejected("milestones", |y| y, &["--set", "run.scheduler=multistep", "--set", "run.milestones=[5,3]"]);
    assert!(m.contains("run.milestones must be strictly increasing"), "{m}");
    let m = rejected("gamma", |y| y, &["--set", "run.scheduler=step", "--set", "run.gamma=-0.1"]);
    assert!(m.contains("run.gamma must be a positive number"), "{m}");
    let m = rejected("yolo_variant", |y| y, &["--set", "run.scheduler=yolo_cos", "--set", "run.yolo_variant=v5"]);
    assert!(m.contains("run.yolo_variant") && m.contains("current, legacy"), "{m}");
    let m = rejected("cos_lr", |y| y, &["--set", "run.scheduler=step", "--set", "run.cos_lr=true"]);
    assert!(m.contains("run.cos_lr") && m.contains("yolo_linear"), "{m}");
    let m = rejected(
        "lavis_warmup",
        |y| y,
        &["--set", "run.scheduler=linear_warmup_cosine", "--set", "run.warmup_epochs=1"],
    );
    assert!(m.contains("run.warmup_epochs") && m.contains("run.warmup_steps"), "{m}");
}

#[test]
fn iteration_settings_are_checked() {
    let m = rejected("max_iters_zero", |y| y, &["--set", "run.max_iters=0", "--set", "run.iters_per_inner_epoch=1"]);
    assert!(m.contains("run.max_iters") && m.contains("at least 1"), "{m}");
    let m = rejected("ipie_zero", |y| y, &["--set", "run.max_iters=10", "--set", "run.iters_per_inner_epoch=0"]);
    assert!(m.contains("run.iters_per_inner_epoch") && m.contains("1..=10"), "{m}");
    let m = rejected("ipie_big", |y| y, &["--set", "run.max_iters=10", "--set", "run.iters_per_inner_epoch=11"]);
    assert!(m.contains("run.iters_per_inner_epoch must be in 1..=10") && m.contains("got 11"), "{m}");
    let m = rejected("ipie_alone", |y| y, &["--set", "run.iters_per_inner_epoch=5"]);
    assert!(m.contains("run.iters_per_inner_epoch needs run.max_iters"), "{m}");
    let m = rejected("max_iters_alone", |y| y, &["--set", "run.max_iters=10"]);
    assert!(m.contains("run.max_iters needs run.iters_per_inner_epoch") && m.contains("1..=10"), "{m}");
    let m = rejected("max_iters_type", |y| y, &["--set", "run.max_iters=-3"]);
    assert!(m.contains("run.max_iters"), "{m}");
}

#[test]
fn list_and_check_work() {
    let out = engine(&["list"]);
    assert_eq!(out.status.code(), Some(0));
    let m = text(&out);
    for name in [
        "mlp",
        "npy",
        "classification",
        "sgd",
        "adamw",
        "cosine",
        "linear",
        "one_cycle",
        "multistep",
        "cosine_restarts",
        "linear_warmup_cosine",
        "linear_warmup_step",
        "yolo_linear",
        "yolo_cos",
    ] {
        assert!(m.contains(name), "engine list misses {name}:\n{m}");
    }
    let out = engine(&["check", "--config", "configs/digits_mlp.yaml"]);
    let m = text(&out);
    assert_eq!(out.status.code(), Some(0), "{m}");
    assert!(m.contains("85,002 total, 85,002 trainable") && m.contains("layers.4") && m.contains("config OK"), "{m}");
    let out = engine(&["--bogus-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn model_options_and_batch_norm_batches_are_checked_before_training() {
    // A ResNet on 4x4x4 views ends on 1x1 maps; batch 2 over 1437 samples leaves a last batch of one.
    let resnet = |y: String| {
        y.replace(
            "  arch: mlp\n  input_size: 64\n  hidden_sizes: [32]\n",
            "  arch: resnet\n  depth: 8\n  width: 4\n  input_shape: [4, 4, 4]\n",
        )
    };
    let m = rejected("bn_last_batch", resnet, &["--set", "run.batch=2"]);
    assert!(m.contains("layer3.0.bn1") && m.contains("drop_last") && m.contains("1437"), "{m}");
    let m = rejected("resnet_depth", resnet, &["--set", "model.depth=9"]);
    assert!(m.contains("6n + 2"), "{m}");
    let vit = |y: String| {
        y.replace(
            "  arch: mlp\n  input_size: 64\n  hidden_sizes: [32]\n",
            "  arch: vit\n  input_shape: [1, 8, 8]\n  patch: 3\n",
        )
    };
    let m = rejected("vit_patch", vit, &[]);
    assert!(m.contains("model.patch (3) must divide the image size 8x8"), "{m}");
    let seq = |y: String| {
        y.replace(
            "  arch: mlp\n  input_size: 64\n  hidden_sizes: [32]\n  output_size: 10\n",
            "  arch: sequential\n  layers:\n    - {type: reshape, shape: [1, 8, 8]}\n    - {type: batchnorm}\n",
        )
    };
    let m = rejected("sequential_layer", seq, &[]);
    assert!(m.contains("unknown variant `batchnorm`") && m.contains("batch_norm2d"), "{m}");
}

#[test]
fn optimizer_hyper_parameters_out_of_range_name_the_key_and_range() {
    for (set, key, range) in [
        ("run.alpha=1.5", "run.alpha", "[0, 1)"),
        ("run.rho=-0.1", "run.rho", "[0, 1]"),
        ("run.momentum_decay=-1", "run.momentum_decay", ">= 0"),
        ("run.lr_decay=-0.5", "run.lr_decay", ">= 0"),
        ("run.initial_accumulator_value=-1", "run.initial_accumulator_value", ">= 0"),
        ("run.eps=0", "run.eps", "positive"),
    ] {
        let m = rejected(&format!("range_{key}"), |y| y, &["--set", set]);
        assert!(m.contains(key) && m.contains(range), "{set}: {m}");
    }
    let m = rejected("bool_key", |y| y, &["--set", "run.amsgrad=maybe"]);
    assert!(m.contains("run.amsgrad"), "{m}");
}

#[test]
fn bench_rejects_bad_flags_with_exit_2() {
    for (args, want) in [
        (vec!["bench", "--device", "tpu"], "--device"),
        (vec!["bench", "--elements", "0"], "--elements"),
        (vec!["bench", "--elements", "18446744073709551615"], "--elements must be at most"),
    ] {
        let out = engine(&args);
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {msg}");
        assert!(msg.contains(want) && !msg.contains("panicked"), "{args:?}: {msg}");
    }
    // Without a GPU, asking to benchmark one is a usage error that says why.
    if ecstrain::kernels::cuda::probe(0).is_err() {
        let out = engine(&["bench", "--device", "cuda"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("no CUDA"), "{}", text(&out));
    }
}

#[test]
fn sizes_the_machine_cannot_hold_are_config_errors_not_aborts() {
    // Overflowing shapes name the parameter; holdable-but-huge ones the memory they need.
    let m = rejected("overflowing_layer", |y| y, &["--set", "model.hidden_sizes=[18446744073709551615]"]);
    assert!(m.contains("model: layers.0.weight") && m.contains("too large to hold"), "{m}");
    let m = rejected("huge_model", |y| y, &["--set", "model.hidden_sizes=[1000000, 1000000]"]);
    assert!(m.contains("model: 1000076000010 parameters need at least") && m.contains("of memory"), "{m}");
    let m = rejected("threads", |y| y, &["--set", "run.threads=10000"]);
    assert!(m.contains("run.threads must be at most 1024"), "{m}");
    let m = rejected("workers", |y| y, &["--set", "run.workers=18446744073709551615"]);
    assert!(m.contains("run.workers must be at most 1024"), "{m}");
    let m = rejected("prefetch", |y| y, &["--set", "run.workers=1", "--set", "run.prefetch=100000"]);
    assert!(m.contains("run.prefetch must be in 1..=1024"), "{m}");
    let m = rejected("layer_decay", |y| y, &["--set", "run.layer_decay=0"]);
    assert!(m.contains("run.layer_decay must be in (0, 1], got 0") && !m.contains("Some("), "{m}");
}

#[test]
fn a_batch_larger_than_the_dataset_is_planned_for_the_dataset() {
    // No loader fills more rows than the largest split has, so the buffers are sized for that many: a run.batch
    // of 2^64 - 1 trains (it once overflowed allocating for every row it named).
    let dir = scratch("batch_past_dataset");
    let save = dir.join("run");
    let cfg = write_config(&dir, "big.yaml", &digits_yaml(&save));
    let out = engine(&[
        "--config",
        cfg.to_str().unwrap(),
        "--set",
        "run.batch=18446744073709551615",
        "--set",
        "run.epochs=1",
    ]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(0), "{msg}");
    assert!(msg.contains("memory (f32, batch 1437)"), "{msg}");
}

#[test]
fn target_errors_name_the_targets_file() {
    // The labels live in y: a message about them names y, not the inputs' x.
    let m = rejected("labels_past_outputs", |y| y.replace("output_size: 10", "output_size: 5"), &[]);
    assert!(m.contains("train labels (") && m.contains("train_y.npy) go up to 9"), "{m}");
    let m = rejected("labels_for_regression", |y| y, &["--set", "run.task=regression"]);
    assert!(m.contains("targets of") && m.contains("train_y.npy are integer class labels"), "{m}");
    assert!(!m.contains("train_x.npy"), "{m}");
}

/// A `.npy` of int64 labels (the digits' y format), for splits built in a test.
fn write_labels(path: &std::path::Path, labels: &[i64]) {
    let mut header = format!("{{'descr': '<i8', 'fortran_order': False, 'shape': ({},), }}", labels.len());
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    labels.iter().for_each(|l| bytes.extend_from_slice(&l.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_empty_val_split_is_refused() {
    // Validating on nothing gives NaN metrics and no best checkpoint; leaving `val` out is how to skip it.
    let data = scratch("empty_val_data");
    let (x, y) = (data.join("x.npy"), data.join("y.npy"));
    write_npy(&x, &[0, 64], &[]);
    write_labels(&y, &[]);
    let m = rejected(
        "empty_val",
        |yaml| {
            let r = repo().display().to_string();
            yaml.replace(&format!("{r}/data/digits/val_x.npy"), &x.display().to_string())
                .replace(&format!("{r}/data/digits/val_y.npy"), &y.display().to_string())
        },
        &[],
    );
    assert!(m.contains("the val split") && m.contains("has no samples") && m.contains("leave `val` out"), "{m}");
}
