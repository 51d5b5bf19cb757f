//! End to end on a GPU: the digits MLP, CNN and ViT trained with `run.device=cuda` reach the CPU's accuracy
//! and the VQ-VAE the CPU's PSNR, and their per-epoch validation losses follow the CPU's run of the same
//! config and seed. Without a CUDA device each of those tests prints a SKIPPED line and passes (CI has no
//! GPU; the sessions lent one run these); the driver-message test runs only there.

mod common;

use std::path::Path;

use common::*;
use ecstrain::kernels::cuda::testing::no_gpu;

/// Per-epoch validation (loss, `metric`) of a run directory.
fn val_records(dir: &Path, metric: &str) -> Vec<(f64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "val")
        .map(|v| {
            (v["loss"].as_f64().unwrap(), v[metric].as_f64().unwrap_or_else(|| panic!("val records carry {metric}")))
        })
        .collect()
}

/// Trains `config` for `epochs` on `device` into a scratch run directory; returns its val (loss, metric).
fn train(name: &str, config: &str, device: &str, epochs: u32, metric: &str) -> Vec<(f64, f64)> {
    train_with(name, config, device, epochs, metric, &[])
}

/// [`train`] with more `--set` overrides.
fn train_with(name: &str, config: &str, device: &str, epochs: u32, metric: &str, sets: &[&str]) -> Vec<(f64, f64)> {
    let dir = scratch(&format!("{name}-{}", device.replace(':', "")));
    let save = dir.join("run");
    run_into(&save, config, device, epochs, sets);
    val_records(&save, metric)
}

/// Trains `config` for `epochs` on `device` with `sets` into run directory `save`; returns its output.
fn run_into(save: &Path, config: &str, device: &str, epochs: u32, sets: &[&str]) -> String {
    let mut args = vec![
        "--config".to_string(),
        config.to_string(),
        "--set".into(),
        format!("run.save_dir={}", save.display()),
        "--set".into(),
        format!("run.device={device}"),
        "--set".into(),
        format!("run.epochs={epochs}"),
    ];
    for s in sets {
        args.push("--set".into());
        args.push(s.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = engine(&args);
    assert_eq!(out.status.code(), Some(0), "{config} on {device} {sets:?}:\n{}", text(&out));
    text(&out)
}

/// The CPU and CUDA runs of `config` for `epochs`, after checking they have the same epochs and that every
/// epoch's val loss is within `abs + rel * cpu` of the CPU's; `None` (with a SKIPPED line) without a
/// device. The two runs differ only by float rounding (cuBLAS and reduction order), which a long run
/// amplifies a little.
#[allow(clippy::type_complexity)]
fn both_devices(
    name: &str,
    config: &str,
    epochs: u32,
    metric: &str,
    (abs, rel): (f64, f64),
) -> Option<(Vec<(f64, f64)>, Vec<(f64, f64)>)> {
    if no_gpu(name) {
        return None;
    }
    let cpu = train(name, config, "cpu", epochs, metric);
    let gpu = train(name, config, "cuda", epochs, metric);
    assert_eq!(cpu.len(), gpu.len(), "{name}: epochs differ");
    for (e, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        eprintln!(
            "{name} epoch {}: val loss cpu {:.5} cuda {:.5}, {metric} cpu {:.4} cuda {:.4}",
            e + 1,
            c.0,
            g.0,
            c.1,
            g.1
        );
        assert!((c.0 - g.0).abs() <= abs + rel * c.0, "{name} epoch {}: val loss cpu {} vs cuda {}", e + 1, c.0, g.0);
    }
    Some((cpu, gpu))
}

/// Whether cuda:0 is tools/cuda-emu (the kernels on the CPU), where the heaviest runs are shortened.
fn emulated() -> bool {
    ecstrain::kernels::cuda::probe(0).is_ok_and(|info| info.is_emulated())
}

/// Best of a run's metric (higher is better).
fn best(r: &[(f64, f64)]) -> f64 {
    r.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max)
}

/// A classifier on CUDA against the CPU: val losses within 0.05 + 10% every epoch, best accuracy within a
/// point of the CPU's and at least `floor`.
fn matches_cpu(name: &str, config: &str, epochs: u32, floor: f64) {
    let Some((cpu, gpu)) = both_devices(name, config, epochs, "accuracy", (0.05, 0.1)) else { return };
    let (bc, bg) = (best(&cpu), best(&gpu));
    assert!(bg >= floor && bg >= bc - 0.01, "{name}: best val accuracy cuda {bg}, cpu {bc}");
}

/// Epochs of a run that only a GPU finishes quickly, and the bar the test holds it to (an accuracy floor or a
/// PSNR gain): `full` and `bar` on a GPU; `short` and `short_bar` on tools/cuda-emu (where a transformer epoch
/// takes half a minute), a bar that `short` epochs reach on the CPU.
fn epochs_for(full: u32, short: u32, bar: f64, short_bar: f64) -> (u32, f64) {
    if emulated() {
        eprintln!("cuda-emu: {short} epochs instead of {full}");
        (short, short_bar)
    } else {
        (full, bar)
    }
}

/// Every record of `split` in a run directory's metrics.jsonl.
fn records(dir: &Path, split: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == split)
        .collect()
}

/// The training losses run on the device and their values reach the host only when a record reads them. For
/// each built-in task with a device loss, the train records (every 5 steps, so flushes fall mid-epoch and at
/// epoch ends) and the epoch records must carry the same running means as the CPU's host task, over the same
/// steps: a lost, doubled or reordered flush would move a mean by percents. Classification with gradient
/// accumulation (the loss gradient halved) and label smoothing; regression and embedding (the cosine loss) on
/// dense targets; the VQ-VAE's reconstruction (the input as target, MSE and L1) with its VQ terms, which the
/// ring keeps beside the reconstruction loss.
#[test]
fn device_losses_on_cuda_fill_the_training_records_as_the_host_tasks_do() {
    let name = "device_losses_fill_the_training_records";
    if no_gpu(name) {
        return;
    }
    let dir = scratch(name);
    write_projection_dataset(&dir, 8);
    let regression = dir.join("regression.yaml");
    std::fs::write(&regression, projection_yaml(&dir, &dir.join("unused"), "regression", 8)).unwrap();
    let embedding = dir.join("embedding.yaml");
    std::fs::write(&embedding, projection_yaml(&dir, &dir.join("unused"), "embedding", 8)).unwrap();
    let vq_keys: &[&str] = &["loss", "recon_loss", "vq_loss", "perplexity"];
    // (task, config, epochs, extra --set overrides, the training meters it keeps)
    type Case<'a> = (&'a str, &'a str, u32, &'a [&'a str], &'a [&'a str]);
    let cases: [Case; 5] = [
        ("classification", "configs/digits_mlp.yaml", 2, &["run.nbs=128", "run.label_smoothing=0.1"], &["loss"]),
        ("regression", regression.to_str().unwrap(), 2, &[], &["loss"]),
        ("embedding", embedding.to_str().unwrap(), 2, &[], &["loss"]),
        ("reconstruction", "configs/digits_autoencoder.yaml", 1, &["run.batch=32", "run.nbs=32"], vq_keys),
        (
            "reconstruction-l1",
            "configs/digits_autoencoder.yaml",
            1,
            &["run.batch=32", "run.nbs=32", "run.recon_loss=l1"],
            vq_keys,
        ),
    ];
    for (task, config, epochs, extra, keys) in cases {
        let mut sets = vec!["run.log_interval=5"];
        sets.extend_from_slice(extra);
        let runs = [dir.join(format!("{task}-cpu")), dir.join(format!("{task}-cuda"))];
        run_into(&runs[0], config, "cpu", epochs, &sets);
        run_into(&runs[1], config, "cuda", epochs, &sets);
        for split in ["train", "epoch"] {
            let (cpu, gpu) = (records(&runs[0], split), records(&runs[1], split));
            assert!(!cpu.is_empty(), "{task}: no {split} records");
            assert_eq!(cpu.len(), gpu.len(), "{task}: {split} records");
            for (c, g) in cpu.iter().zip(&gpu) {
                assert_eq!(
                    (&c["step"], &c["epoch"]),
                    (&g["step"], &g["epoch"]),
                    "{task}: {split} records at other steps"
                );
                // A train record logs the running loss; the epoch record every training meter.
                let keys: Vec<String> = match split {
                    "train" => vec!["loss".to_string()],
                    _ => keys.iter().map(|k| format!("train_{k}")).collect(),
                };
                for key in &keys {
                    let (lc, lg) = (c[key].as_f64(), g[key].as_f64());
                    let (Some(lc), Some(lg)) = (lc, lg) else {
                        panic!("{task}: {split} record without {key}: {c} / {g}")
                    };
                    eprintln!("{task} {split} step {}: {key} cpu {lc:.7} cuda {lg:.7}", c["step"]);
                    assert!(
                        (lc - lg).abs() <= 1e-3 * lc.abs(),
                        "{task} {split} step {}: {key} cpu {lc} cuda {lg}",
                        c["step"]
                    );
                }
            }
        }
    }
}

#[test]
fn digits_mlp_on_cuda_matches_cpu() {
    matches_cpu("digits_mlp", "configs/digits_mlp.yaml", 20, 0.97);
}

#[test]
fn digits_cnn_on_cuda_matches_cpu() {
    matches_cpu("digits_cnn", "configs/digits_cnn.yaml", 20, 0.97);
}

/// The ViT (patch convolution, class token, position embedding, fused-projection attention, GELU MLPs,
/// layer norms, class-token head) over the config's full 30 epochs, where the CPU reaches 97%.
#[test]
fn digits_vit_on_cuda_matches_cpu() {
    let (epochs, floor) = epochs_for(30, 3, 0.97, 0.8);
    matches_cpu("digits_vit", "configs/digits_vit.yaml", epochs, floor);
}

/// The VQ-VAE (convolutions, vector quantization with its loss and perplexity reported from the device,
/// nearest upsampling): every epoch's val loss (reconstruction + VQ terms, ~0.01-0.1) within 0.01 + 15% of
/// the CPU's, since a code assignment flipped by rounding moves the loss more than a dense layer's rounding
/// does; best PSNR within 1 dB of the CPU's and at least 6 dB above the first epoch (the CPU test's bar).
#[test]
fn digits_vqvae_on_cuda_matches_cpu() {
    let name = "digits_vqvae";
    let (epochs, gain) = epochs_for(30, 4, 6.0, 1.0);
    let Some((cpu, gpu)) = both_devices(name, "configs/digits_autoencoder.yaml", epochs, "psnr", (0.01, 0.15)) else {
        return;
    };
    let (bc, bg) = (best(&cpu), best(&gpu));
    assert!((bg - bc).abs() <= 1.0, "{name}: best val PSNR cuda {bg} dB, cpu {bc} dB");
    assert!(bg >= gpu[0].1 + gain, "{name}: best val PSNR cuda {bg} dB vs {} dB after epoch 1", gpu[0].1);
}

/// The VQ-VAE under bf16 and f16 autocast, where its convolutions, vector quantizer, upsampling and output
/// are stored in half precision and its MSE reads the half output (`device/storage.rs`), against the f32 CPU
/// run: every epoch's val loss within 0.02 + 25% of the CPU's (a code assignment flipped by the half
/// rounding moves it more than f32's reduction order does), best PSNR within 1.5 dB of the CPU's, over the
/// config's 30 epochs on a GPU (2 on tools/cuda-emu, where the storage types, not convergence, are what this
/// checks beyond `digits_vqvae_on_cuda_matches_cpu`).
#[test]
fn digits_vqvae_trains_under_autocast_on_cuda() {
    let name = "digits_vqvae_trains_under_autocast";
    if no_gpu(name) {
        return;
    }
    let (epochs, _) = epochs_for(30, 2, 0.0, 0.0);
    let runs = [("bf16", "run.amp=bf16"), ("f16", "run.amp=f16")];
    let (cpu, gpus) = runs_beside_cpu(name, "configs/digits_autoencoder.yaml", epochs, "psnr", &runs, (0.02, 0.25));
    for (tag, gpu) in gpus {
        let (bc, bg) = (best(&cpu), best(&gpu));
        assert!((bg - bc).abs() <= 1.5, "{tag}: best val PSNR cuda {bg} dB, cpu {bc} dB");
    }
}

/// Without a driver, the ViT and VQ-VAE configs on `run.device=cuda` exit 2 with the driver message: the
/// driver probe comes before the graph's op check, and the op check accepts these models anyway.
#[test]
fn vit_and_vqvae_on_cuda_without_a_driver_name_the_driver() {
    if ecstrain::kernels::cuda::probe(0).is_ok() {
        eprintln!("SKIPPED vit_and_vqvae_on_cuda_without_a_driver_name_the_driver: a CUDA device is present");
        return;
    }
    let dir = scratch("cuda-no-driver");
    for config in ["configs/digits_vit.yaml", "configs/digits_autoencoder.yaml"] {
        let save = format!("run.save_dir={}", dir.join("run").display());
        let out = engine(&["--config", config, "--set", "run.device=cuda", "--set", &save]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{config}:\n{t}");
        assert!(t.contains("run.device") && t.contains("not available") && t.contains("no CUDA"), "{config}:\n{t}");
        assert!(!t.contains("CUDA executor cannot run"), "{config}: the op check ran first:\n{t}");
        assert!(!dir.join("run").exists(), "{config}: a run directory was written before the error");
    }
}

/// The parameters of a checkpoint under `prefix` (`""`: the model's names, which hold the EMA averages in an
/// EMA run; `"train."`: the training weights beside them), flattened in the checkpoint's parameter order.
fn checkpoint_params(path: &Path, prefix: &str) -> Vec<f32> {
    let ck = ecstrain::systems::checkpoint::safetensors_io::load_safetensors(path).unwrap();
    let names: Vec<String> = serde_json::from_str(&ck.metadata["param_order"]).unwrap();
    names.iter().flat_map(|n| ck.tensors[&format!("{prefix}{n}")].data.as_f32().unwrap().to_vec()).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `run.ema` on CUDA: the device keeps the averages (one update launch per arena after every optimizer
/// step), validation and the best checkpoint see them, and the checkpoints hold both copies. Against the
/// CPU run of the same config: the same number of EMA updates, averages and training weights within float
/// rounding (cuBLAS sums in another order), the averages lagging the weights, val losses within 0.02 + 5%.
#[test]
fn ema_on_cuda_matches_cpu() {
    let name = "ema_on_cuda_matches_cpu";
    if no_gpu(name) {
        return;
    }
    let dir = scratch(name);
    let mut runs = Vec::new();
    for device in ["cpu", "cuda"] {
        let save = dir.join(device);
        let yaml = digits_yaml(&save).replace("epochs: 2", "epochs: 3")
            + &format!("  ema: true\n  ema_decay: 0.9\n  ema_tau: 5\n  seed: 4\n  device: {device}\n");
        let cfg = write_config(&dir, &format!("{device}.yaml"), &yaml);
        let out = engine(&["--config", cfg.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{device}:\n{}", text(&out));
        runs.push(save);
    }
    let (cpu, gpu) = (&runs[0], &runs[1]);
    let last = |d: &Path| d.join("checkpoints/last.safetensors");
    let meta = |d: &Path| ecstrain::systems::checkpoint::safetensors_io::load_safetensors(&last(d)).unwrap().metadata;
    assert_eq!(meta(cpu)["ema_updates"], meta(gpu)["ema_updates"], "EMA update counts differ");
    let (avg_c, avg_g) = (checkpoint_params(&last(cpu), ""), checkpoint_params(&last(gpu), ""));
    let (w_c, w_g) = (checkpoint_params(&last(cpu), "train."), checkpoint_params(&last(gpu), "train."));
    let (d_avg, d_w) = (max_abs_diff(&avg_c, &avg_g), max_abs_diff(&w_c, &w_g));
    eprintln!("{name}: max |cpu - cuda| averages {d_avg:e}, training weights {d_w:e}");
    assert!(d_avg <= 1e-3 && d_w <= 1e-3, "averages differ by {d_avg}, weights by {d_w}");
    assert!(max_abs_diff(&avg_g, &w_g) > 1e-3, "on cuda the averages should lag the weights");
    for (c, g) in val_records(cpu, "accuracy").iter().zip(val_records(gpu, "accuracy")) {
        assert!((c.0 - g.0).abs() <= 0.02 + 0.05 * c.0, "val loss of the averaged model: cpu {} vs cuda {}", c.0, g.0);
    }
}

/// A stop mid-epoch on CUDA (`run.time_limit`, the signal path's checkpoint) saves the device's weights of
/// that step, not the host's stale copy: the resumed run ends where an uninterrupted CUDA run ends.
#[test]
fn a_stop_mid_epoch_on_cuda_resumes_where_it_stopped() {
    let name = "a_stop_mid_epoch_on_cuda_resumes_where_it_stopped";
    if no_gpu(name) {
        return;
    }
    let dir = scratch(name);
    // On the CPU emulator (tools/cuda-emu) the config's narrow MLP, which takes about 10 s for the 1000
    // epochs there; a GPU takes that long only with a wide one.
    let hidden = if emulated() { "[32]" } else { "[1024, 1024]" };
    let yaml = |save: &Path| {
        digits_yaml(save)
            .replace("hidden_sizes: [32]", &format!("hidden_sizes: {hidden}"))
            .replace("epochs: 2", "epochs: 1000")
            + "  seed: 7\n  device: cuda\n  scheduler: constant\n  resume: auto\n"
    };
    let (full, cut) = (dir.join("full"), dir.join("cut"));
    let cfg_full = write_config(&dir, "full.yaml", &yaml(&full));
    let cfg_cut = write_config(&dir, "cut.yaml", &yaml(&cut));
    let out = engine(&["--config", cfg_full.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // 0.0003 h = 1.08 s of training, a fraction of the run.
    let out = engine(&["--config", cfg_cut.to_str().unwrap(), "--set", "run.time_limit=0.0003"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["stop_reason"], "time_limit", "the run ended before the limit: {summary}");
    let out = engine(&["--config", cfg_cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("resuming from"), "{}", text(&out));
    let last = |d: &Path| checkpoint_params(&d.join("checkpoints/last.safetensors"), "");
    let diff = max_abs_diff(&last(&full), &last(&cut));
    eprintln!("{name}: stopped after {} steps; max |uninterrupted - resumed| {diff:e}", summary["steps"]);
    assert!(diff <= 1e-4, "the resumed run ends {diff} away from the uninterrupted one");
}

/// `config` trained on CUDA under each of `runs` (a label and its `--set`) against one f32 CPU run of
/// `epochs`, after checking that every epoch's val loss is within `abs + rel * cpu` of the CPU's: the CPU's
/// (val loss, `metric`) records, and each run's label and records. Autocast rounds the products and the half
/// activations, so the runs follow the CPU's curve, not its bits.
#[allow(clippy::type_complexity)]
fn runs_beside_cpu(
    name: &str,
    config: &str,
    epochs: u32,
    metric: &str,
    runs: &[(&str, &str)],
    (abs, rel): (f64, f64),
) -> (Vec<(f64, f64)>, Vec<(String, Vec<(f64, f64)>)>) {
    let cpu = train(name, config, "cpu", epochs, metric);
    let mut out = Vec::new();
    for (label, set) in runs {
        let tag = format!("{name}-{label}");
        let gpu = train_with(&tag, config, "cuda", epochs, metric, &[set]);
        assert_eq!(cpu.len(), gpu.len());
        for (e, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            eprintln!(
                "{tag} epoch {}: val loss cpu {:.5} cuda {:.5}, {metric} {:.4} / {:.4}",
                e + 1,
                c.0,
                g.0,
                c.1,
                g.1
            );
            assert!((c.0 - g.0).abs() <= abs + rel * c.0, "{tag} epoch {}: val loss {} vs {}", e + 1, c.0, g.0);
        }
        out.push((tag, gpu));
    }
    (cpu, out)
}

/// A classifier under each of `runs` beside the f32 CPU run ([`runs_beside_cpu`]): every epoch's val loss
/// within 0.05 + 15% of the CPU's, the best val accuracy within `slack` of the CPU's best and at least
/// `floor`.
fn trains_like_cpu(name: &str, config: &str, epochs: u32, runs: &[(&str, &str)], slack: f64, floor: f64) {
    let (cpu, gpus) = runs_beside_cpu(name, config, epochs, "accuracy", runs, (0.05, 0.15));
    for (tag, gpu) in gpus {
        let (bc, bg) = (best(&cpu), best(&gpu));
        assert!(bg >= floor && bg >= bc - slack, "{tag}: best val accuracy cuda {bg}, cpu {bc}");
    }
}

/// Mixed precision on CUDA (`run.amp`: the device's matrix products take f16 / bf16 inputs with f32
/// accumulation and f32 master weights; f16 with dynamic loss scaling) and TF32 products (`run.tf32`): the
/// digits MLP and CNN still reach 97% and the CPU's f32 best accuracy within 1.5 points, and every epoch's val
/// loss stays within 0.05 + 15% of the f32 CPU run's (reduced-precision rounding of every product's inputs
/// moves it a little).
#[test]
fn digits_mlp_and_cnn_train_under_autocast_on_cuda() {
    let name = "digits_mlp_and_cnn_train_under_autocast";
    if no_gpu(name) {
        return;
    }
    let runs = [("bf16", "run.amp=bf16"), ("f16", "run.amp=f16"), ("tf32", "run.tf32=true")];
    trains_like_cpu(&format!("{name}-mlp"), "configs/digits_mlp.yaml", 20, &runs, 0.015, 0.97);
    trains_like_cpu(&format!("{name}-cnn"), "configs/digits_cnn.yaml", 20, &runs, 0.015, 0.97);
}

/// The ViT under autocast, whose attention, projections, MLP layers and layer norms (each read only by
/// products) then store their activations in half precision while its residual stream stays f32
/// (`device/storage.rs`): bf16 and f16 (with
/// loss scaling) keep every epoch's val loss within 0.05 + 15% of the f32 CPU run's and the best accuracy
/// within 3 points of it, over the config's 30 epochs on a GPU (2 on tools/cuda-emu, where the storage
/// types, not convergence, are what this checks beyond `digits_vit_on_cuda_matches_cpu`).
#[test]
fn digits_vit_trains_under_autocast_on_cuda() {
    let name = "digits_vit_trains_under_autocast";
    if no_gpu(name) {
        return;
    }
    let (epochs, _) = epochs_for(30, 2, 0.97, 0.8);
    let runs = [("bf16", "run.amp=bf16"), ("f16", "run.amp=f16")];
    trains_like_cpu(name, "configs/digits_vit.yaml", epochs, &runs, 0.03, 0.0);
}

/// The ResNet (batch norms with running statistics, residual sums, global pooling) on CUDA in f32 and under
/// bf16 / f16 autocast, where it is stored half from its stem to its head (`device/storage.rs`): every
/// epoch's val loss within 0.05 + 15% of the f32 CPU run's, the best accuracy within 1.5 points of it, over
/// the config's 20 epochs on a GPU (1 on tools/cuda-emu, where the storage types and the batch-norm kernels,
/// not convergence, are what this checks).
#[test]
fn digits_resnet_trains_in_f32_and_under_autocast_on_cuda() {
    let name = "digits_resnet_trains_in_f32_and_under_autocast";
    if no_gpu(name) {
        return;
    }
    let (epochs, _) = epochs_for(20, 1, 0.97, 0.8);
    let runs = [("f32", "run.amp=false"), ("bf16", "run.amp=bf16"), ("f16", "run.amp=f16")];
    trains_like_cpu(name, "configs/digits_resnet.yaml", epochs, &runs, 0.015, 0.0);
}

/// f16 autocast's dynamic loss scaling on the device: with a first scale of 2^40 the scaled gradients
/// overflow f16 in the products, so the device check finds inf, the optimizer skips those steps and the
/// scale halves until the gradients fit, then training proceeds to 97%. (The CPU computes in f32 and
/// would not overflow: this path is the device's.)
#[test]
fn f16_loss_scaling_on_cuda_backs_off_from_overflow() {
    let name = "f16_loss_scaling_on_cuda_backs_off_from_overflow";
    if no_gpu(name) {
        return;
    }
    let dir = scratch(name);
    let save = dir.join("run");
    let sets = [
        "run.device=cuda".to_string(),
        "run.amp=f16".into(),
        "run.amp_init_scale=1099511627776".into(),
        "run.epochs=20".into(),
        format!("run.save_dir={}", save.display()),
    ];
    let mut args = vec!["--config", "configs/digits_mlp.yaml"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let out = engine(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ck =
        ecstrain::systems::checkpoint::safetensors_io::load_safetensors(&save.join("checkpoints/last.safetensors"))
            .unwrap();
    let state: serde_json::Value = serde_json::from_str(&ck.metadata["loss_scaler"]).unwrap();
    let (scale, skipped) = (state["scale"].as_f64().unwrap(), state["skipped"].as_u64().unwrap());
    eprintln!("{name}: {skipped} steps skipped, final scale {scale:e}");
    assert!(skipped >= 10 && scale <= 2f64.powi(30), "the scale did not back off: {state}");
    let acc = val_records(&save, "accuracy").iter().map(|r| r.1).fold(0.0, f64::max);
    assert!(acc >= 0.97, "best val accuracy {acc} after backing off");
}

/// The checkpoint's metadata entry `key`, parsed as JSON.
fn checkpoint_meta(path: &Path, key: &str) -> serde_json::Value {
    let ck = ecstrain::systems::checkpoint::safetensors_io::load_safetensors(path).unwrap();
    serde_json::from_str(&ck.metadata[key]).unwrap()
}

/// f16 loss scaling on CUDA decides on the device (scale, overflow check, skipped step) and the host learns
/// each window's outcome a window later. Starting at 2^40 with growth every 3 finite windows, the scale first
/// backs off, then keeps probing upwards and overflowing, so about a quarter of the steps are skipped.
/// - Every train record (one per step) shows the scale after its own window, and the sequence follows the
///   state machine: halved, doubled after exactly 3 finite windows, or unchanged. The checkpoint's scaler
///   (scale, growth tracker, skipped windows) is where that sequence ends, and the optimizer counted only the
///   steps the device took (NAdam's, with its running `mu_product` put back on each skip).
/// - A run stopped mid-epoch (the time limit, the signal path's checkpoint) and resumed ends where the
///   uninterrupted run ends: the same scaler state, step count and weights.
#[test]
fn f16_loss_scaling_on_cuda_is_settled_for_records_checkpoints_and_resume() {
    let name = "f16_loss_scaling_on_cuda_is_settled_for_records_checkpoints_and_resume";
    if no_gpu(name) {
        return;
    }
    let dir = scratch(name);
    // As in the stop test above: a run of about 10 s either way.
    let (epochs, hidden) = if emulated() { (60, "[32]") } else { (1000, "[1024, 1024]") };
    let yaml = |save: &Path| {
        digits_yaml(save)
            .replace("hidden_sizes: [32]", &format!("hidden_sizes: {hidden}"))
            .replace("epochs: 2", &format!("epochs: {epochs}"))
            .replace("optimizer: AdamW", "optimizer: NAdam")
            + "  seed: 7\n  device: cuda\n  scheduler: constant\n  resume: auto\n  nbs: 64\n  log_interval: 1\n"
            + "  amp: f16\n  amp_init_scale: 1099511627776\n  amp_growth_interval: 3\n"
    };
    let (full, cut) = (dir.join("full"), dir.join("cut"));
    let cfg_full = write_config(&dir, "full.yaml", &yaml(&full));
    let cfg_cut = write_config(&dir, "cut.yaml", &yaml(&cut));
    let out = engine(&["--config", cfg_full.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The records against the state machine (growth 2, backoff 0.5, interval 3).
    let train = records(&full, "train");
    let (mut scale, mut tracker, mut skipped) = (2f64.powi(40), 0u64, 0u64);
    for r in &train {
        let (step, now) = (r["step"].as_u64().unwrap(), r["loss_scale"].as_f64().unwrap());
        if now == scale * 0.5 {
            (skipped, tracker) = (skipped + 1, 0);
        } else if now == scale * 2.0 {
            assert_eq!(tracker, 2, "step {step}: the scale grew after {} finite windows, not 3", tracker + 1);
            tracker = 0;
        } else {
            assert_eq!(now, scale, "step {step}: the scale moved from {scale} to {now}");
            tracker += 1;
            assert!(tracker < 3, "step {step}: 3 finite windows in a row and no growth");
        }
        scale = now;
    }
    let steps = train.len() as u64;
    assert_eq!(train.last().unwrap()["step"].as_u64(), Some(steps), "one record per step");
    let last = full.join("checkpoints/last.safetensors");
    let scaler = checkpoint_meta(&last, "loss_scaler");
    let taken: u64 = checkpoint_meta(&last, "optimizer_step").as_u64().unwrap();
    eprintln!("{name}: {steps} windows, {skipped} skipped, {taken} optimizer steps; scaler {scaler}");
    assert!(skipped >= 10 && skipped * 10 < steps * 4, "{skipped} of {steps} windows skipped");
    assert_eq!(scaler, serde_json::json!({"scale": scale, "good_steps": tracker, "skipped": skipped}));
    assert_eq!(taken, steps - skipped, "the optimizer's step count must leave out the skipped windows");

    // Stopped after about a second of training, then resumed. Records every 7th step, so the stop (not a
    // record's read) must bring the host's scaler and step count up to date before the checkpoint.
    let cut_args = ["--config", cfg_cut.to_str().unwrap(), "--set", "run.log_interval=7"];
    let out = engine(&[&cut_args[..], &["--set", "run.time_limit=0.0003"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["stop_reason"], "time_limit", "the run ended before the limit: {summary}");
    let out = engine(&cut_args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("resuming from"), "{}", text(&out));
    let cut_last = cut.join("checkpoints/last.safetensors");
    assert_eq!(checkpoint_meta(&cut_last, "loss_scaler"), scaler, "the resumed run's scaler");
    assert_eq!(checkpoint_meta(&cut_last, "optimizer_step").as_u64(), Some(taken), "the resumed run's steps");
    let diff = max_abs_diff(&checkpoint_params(&last, ""), &checkpoint_params(&cut_last, ""));
    eprintln!("{name}: stopped after {} steps; max |uninterrupted - resumed| {diff:e}", summary["steps"]);
    assert!(diff <= 1e-4, "the resumed run ends {diff} away from the uninterrupted one");
}

/// `run.device_cache` keeps the train split on the device and gathers each batch's rows there by index. It
/// must train exactly as uploading every batch does: the same rows in the same order (shuffled, with a
/// partial last batch: 1437 samples in batches of 64), through a deterministic processor whose output is
/// what the device keeps, with batches assembled on the training thread or by a prefetching loader (which
/// then skips the rows). Every training record's loss, every validation record and the final parameters
/// must agree bit for bit.
#[test]
fn device_cache_on_cuda_trains_bit_for_bit_as_uploading_every_batch() {
    let name = "device_cache_on_cuda";
    if no_gpu(name) {
        return;
    }
    let dir = scratch(name);
    let processors = "    processors:\n      train:\n        - normalize: {mean: 8.0, std: 4.0}\n      eval:\n        - normalize: {mean: 8.0, std: 4.0}\n";
    let yaml = digits_yaml(&dir.join("unused")).replace("    train:\n", &format!("{processors}    train:\n"));
    let cfg = write_config(&dir, "cache.yaml", &(yaml + "  log_interval: 5\n"));
    let cfg = cfg.to_str().unwrap();
    let run = |tag: &str, sets: &[&str]| {
        let save = dir.join(tag);
        let out = run_into(&save, cfg, "cuda", 2, sets);
        let cached = sets.contains(&"run.device_cache=true");
        assert_eq!(out.contains("train split on cuda:0: 1437 samples"), cached, "{tag}: the cache's notice:\n{out}");
        let losses: Vec<String> = records(&save, "train").iter().map(|r| r["loss"].to_string()).collect();
        let val: Vec<String> =
            records(&save, "val").iter().map(|r| format!("{} {}", r["loss"], r["accuracy"])).collect();
        (losses, val, checkpoint_params(&save.join("checkpoints/last.safetensors"), ""))
    };
    let uploaded = run("uploaded", &[]);
    assert!(uploaded.0.len() >= 4 && uploaded.1.len() == 2, "records: {uploaded:?}");
    for (tag, sets) in
        [("cached", &["run.device_cache=true"][..]), ("cached_prefetch", &["run.device_cache=true", "run.workers=1"])]
    {
        let cached = run(tag, sets);
        assert_eq!(cached.0, uploaded.0, "{tag}: training losses");
        assert_eq!(cached.1, uploaded.1, "{tag}: validation");
        let same = cached.2.iter().zip(&uploaded.2).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same && cached.2.len() == uploaded.2.len(), "{tag}: parameters differ");
    }
}

/// The train split's rows are kept on the device only if they are the same every epoch: with a random
/// processor `run.device_cache` is refused (exit 2, naming the key and the processors) before anything is
/// written. Needs a device: without one, the missing driver is the error reported first.
#[test]
fn device_cache_on_cuda_refuses_random_augmentation() {
    let name = "device_cache_on_cuda_refuses_random_augmentation";
    if no_gpu(name) {
        return;
    }
    let save = scratch(name).join("run");
    // The digits as PNG files, trained through random crops and colour jitter.
    let config = repo().join("configs/digits_images_cnn.yaml");
    let out = engine(&[
        "--config",
        config.to_str().unwrap(),
        "--set",
        "run.device=cuda",
        "--set",
        "run.device_cache=true",
        "--set",
        &format!("run.save_dir={}", save.display()),
    ]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(2), "{msg}");
    assert!(msg.contains("run.device_cache") && msg.contains("color_jitter") && !msg.contains("panicked"), "{msg}");
    assert!(!save.exists(), "a refused run wrote {}", save.display());
}

/// The engine binary run with `args` on tools/cuda-emu playing a GPU of compute capability `arch` (`CUDA_EMU_ARCH`)
/// and with its kernel cache in `cache`.
fn engine_on_arch(arch: &str, cache: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(engine_bin())
        .args(args)
        .current_dir(repo())
        .env("CUDA_EMU_ARCH", arch)
        .env("ECSTRAIN_KERNEL_CACHE", cache)
        .output()
        .unwrap()
}

/// A GPU newer than NVRTC knows gets PTX for the newest architecture NVRTC does know (the driver compiles it)
/// and trains as on a GPU it knows, bit for bit on the emulator; one older than every architecture NVRTC
/// supports stops with exit 2 naming both, before anything is written. Emulator only: it plays the GPUs.
#[test]
fn cuda_kernels_fall_back_to_ptx_for_a_gpu_newer_than_nvrtc_and_refuse_an_older_one() {
    let name = "cuda_kernels_fall_back_to_ptx_for_a_gpu_newer_than_nvrtc_and_refuse_an_older_one";
    if no_gpu(name) {
        return;
    }
    if !emulated() {
        eprintln!("SKIPPED {name}: needs tools/cuda-emu to play other GPUs");
        return;
    }
    let supported = ecstrain::kernels::cuda::compile::supported_archs().expect("NVRTC loads");
    let newest = *supported.last().unwrap();
    let dir = scratch("cuda-arch-fallback");
    let run = |arch: u32, tag: &str| {
        let (save, cache) = (dir.join(format!("run-{tag}")), dir.join(format!("cache-{tag}")));
        let save_set = format!("run.save_dir={}", save.display());
        let args = [
            "--config",
            "configs/digits_mlp.yaml",
            "--set",
            "run.device=cuda",
            "--set",
            "run.epochs=1",
            "--set",
            &save_set,
        ];
        (engine_on_arch(&arch.to_string(), &cache, &args), save, cache)
    };
    let cached = |cache: &Path| -> Vec<String> {
        std::fs::read_dir(cache)
            .map(|d| d.filter_map(Result::ok).map(|f| f.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    // The GPU NVRTC knows: machine code.
    let (out, known, cache) = run(90, "known");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("(compute capability 9.0, ")
            && text(&out).contains("kernels: sm_90 machine code from NVRTC")
    );
    let files = cached(&cache);
    assert!(!files.is_empty() && files.iter().all(|f| f.contains("-sm_90-") && f.ends_with(".cubin")), "{files:?}");
    // A later GPU: PTX for the newest known architecture.
    let (out, later, cache) = run(newest + 10, "later");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let line = format!("kernels: compute_{newest} PTX from NVRTC");
    assert!(text(&out).contains(&line) && text(&out).contains("compiled by the driver"), "{}", text(&out));
    let files = cached(&cache);
    let ptx = format!("-compute_{newest}-");
    assert!(!files.is_empty() && files.iter().all(|f| f.contains(&ptx) && f.ends_with(".ptx")), "{files:?}");
    assert_eq!(val_records(&known, "accuracy"), val_records(&later, "accuracy"), "the same kernels, the same run");
    // A GPU older than NVRTC supports (NVRTC 13 starts at sm_75), or than the kernels' floor of 7.0 (NVRTC 12
    // starts at sm_50): exit 2 naming why, nothing written.
    let oldest = supported[0];
    let older = oldest.max(70) - 1;
    let (out, save, _) = run(older, "older");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    if oldest > 70 {
        assert!(
            t.contains(&format!("sm_{older}")) && t.contains("NVRTC") && t.contains(&format!("sm_{oldest}")),
            "{t}"
        );
    } else {
        assert!(t.contains("compute capability 6.9") && t.contains("7.0 or newer"), "{t}");
    }
    assert!(!save.exists(), "a run directory was written before the error");
}
