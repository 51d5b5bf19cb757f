//! The background loader (`run.workers`, `run.prefetch`) end to end: it trains bit for bit as loading on the
//! training thread does (epoch runs, a run resumed mid-way, an iteration run whose data wraps inside inner
//! epochs and that resumes mid-pass); every train and epoch record carries `data_wait` / `data_wait_frac`; a
//! sample that cannot be read ends the run at its step, with nothing trained on a stale batch; and
//! `engine data bench` measures a config's loader alone.

mod common;

use std::path::Path;

use common::*;
use ecstrain::components::{Clock, Grads, Params, Targets};
use ecstrain::engine::registry::{DatasetEntry, DatasetSplits};
use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config, runner, App, EngineError};
use ecstrain::systems::checkpoint::safetensors_io::{load_safetensors, LoadedCheckpoint};
use ecstrain::systems::data::{DataError, Dataset, Sample, TargetSpec, TrainLoader};

fn trained(args: &[&str]) -> String {
    let out = engine(args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    text(&out)
}

fn last(dir: &Path) -> LoadedCheckpoint {
    load_safetensors(&dir.join("checkpoints/last.safetensors")).unwrap()
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every train and epoch record has a mean wait per step in [0, 1) s and a share of the wall time in [0, 1].
fn check_data_wait(dir: &Path) {
    let recs = records(dir);
    let timed: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["split"] == "train" || r["split"] == "epoch").collect();
    assert!(!timed.is_empty());
    for r in timed {
        let (wait, frac) = (r["data_wait"].as_f64(), r["data_wait_frac"].as_f64());
        assert!(wait.is_some_and(|w| (0.0..1.0).contains(&w)), "data_wait missing or out of range: {r}");
        assert!(frac.is_some_and(|f| (0.0..=1.0).contains(&f)), "data_wait_frac missing or out of range: {r}");
    }
}

#[test]
fn prefetching_trains_bit_for_bit_as_loading_on_the_training_thread() {
    let dir = scratch("loader_prefetch_epochs");
    // Batch 32 of 1437 samples: 45 batches, the last one of 29; dropout and a constant schedule (so a 1-epoch
    // run resumed to 3 is the 3-epoch run).
    let yaml = |save: &Path| {
        digits_yaml(save)
            .replace("hidden_sizes: [32]", "hidden_sizes: [32]\n  dropout: 0.2")
            .replace("batch: 64", "batch: 32")
            .replace("epochs: 2", "epochs: 3\n  scheduler: constant")
            + "  seed: 3\n  log_interval: 7\n"
    };
    let runs = [("sync", "0", "2"), ("w2p1", "2", "1"), ("w2p3", "2", "3")];
    for (tag, workers, prefetch) in runs {
        let save = dir.join(tag);
        let cfg = write_config(&dir, &format!("{tag}.yaml"), &yaml(&save));
        let log = trained(&[
            "--config",
            cfg.to_str().unwrap(),
            "--set",
            &format!("run.workers={workers}"),
            "--set",
            &format!("run.prefetch={prefetch}"),
        ]);
        assert!(!log.contains("error"), "{log}");
        check_data_wait(&save);
    }
    let sync = last(&dir.join("sync"));
    for (tag, _, _) in &runs[1..] {
        let ck = last(&dir.join(tag));
        assert!(ck.tensors == sync.tensors, "{tag}: parameters differ from the synchronous loader's");
        assert_eq!(ck.metadata["clock"], sync.metadata["clock"]);
    }
    // The validation metrics agree too (the val loader prefetches as well).
    let vals = |tag: &str| -> Vec<String> {
        records(&dir.join(tag)).iter().filter(|r| r["split"] == "val").map(|r| r["loss"].to_string()).collect()
    };
    assert_eq!(vals("sync"), vals("w2p3"));

    // One epoch with workers 2, then resumed to 3 with workers 2: the straight run's parameters.
    let save = dir.join("resumed");
    let cfg = write_config(&dir, "resumed.yaml", &yaml(&save));
    let c = cfg.to_str().unwrap();
    trained(&["--config", c, "--set", "run.workers=2", "--set", "run.epochs=1"]);
    let log = trained(&["--config", c, "--set", "run.workers=2", "--set", "run.resume=true"]);
    assert!(log.contains("resuming from") && log.contains("at epoch 2"), "{log}");
    assert!(last(&save).tensors == sync.tensors, "1 + 2 resumed epochs with workers 2 differ from 3 straight ones");
}

#[test]
fn an_iteration_run_with_prefetching_wraps_and_resumes_exactly() {
    let dir = scratch("loader_prefetch_iters");
    // As tests/iters_e2e.rs: 45 micro-batches per pass, inner epochs of 7 steps, so passes wrap mid inner
    // epoch (the producer runs into the next pass's order on its own) and the epoch-3 checkpoint is mid-pass.
    let yaml = |save: &Path| {
        digits_yaml(save)
            .replace("hidden_sizes: [32]", "hidden_sizes: [32]\n  dropout: 0.2")
            .replace("batch: 64", "batch: 32")
            + "  max_iters: 40\n  iters_per_inner_epoch: 7\n  warmup_epochs: 1\n  save_period: 3\n  seed: 5\n"
    };
    let (a, b) = (dir.join("sync"), dir.join("prefetch"));
    let ca = write_config(&dir, "a.yaml", &yaml(&a));
    let cb = write_config(&dir, "b.yaml", &yaml(&b));
    trained(&["--config", ca.to_str().unwrap()]);
    trained(&["--config", cb.to_str().unwrap(), "--set", "run.workers=2", "--set", "run.prefetch=3"]);
    let (full, pre) = (last(&a), last(&b));
    assert!(full.tensors == pre.tensors, "the iteration run with workers 2 differs from the synchronous one");
    assert_eq!(full.metadata["clock"], pre.metadata["clock"]);
    check_data_wait(&b);

    // Resume the prefetching run from inner epoch 3 (step 21, mid-pass) with workers 2.
    let ck = b.join("checkpoints/epoch3.safetensors");
    let log = trained(&[
        "--config",
        cb.to_str().unwrap(),
        "--set",
        "run.workers=2",
        "--set",
        &format!("run.resume={}", ck.display()),
    ]);
    assert!(log.contains("at epoch 4 (step 21)"), "{log}");
    assert!(last(&b).tensors == full.tensors, "resumed mid-pass with workers 2: parameters differ");
}

/// A test dataset: 300 samples of 8 values, 3 classes, whose sample `fail_at` cannot be read.
struct Flaky {
    fail_at: Option<usize>,
}

const FLAKY_LEN: usize = 300;

impl Dataset for Flaky {
    fn describe(&self) -> String {
        "flaky".into()
    }
    fn len(&self) -> usize {
        FLAKY_LEN
    }
    fn sample_shape(&self) -> &[usize] {
        &[8]
    }
    fn target_spec(&self) -> TargetSpec {
        TargetSpec::Classes { num_classes: 3 }
    }
    fn read_sample(&self, index: usize, out: &mut Sample) -> Result<(), DataError> {
        if Some(index) == self.fail_at {
            return Err(format!("flaky: sample {index} cannot be read"));
        }
        for (j, v) in out.reset(&[8]).iter_mut().enumerate() {
            *v = ((index * 7 + j * 3) % 11) as f32 / 11.0 - 0.5 + (index % 3 == j % 3) as u8 as f32;
        }
        Ok(())
    }
    fn read_targets(&self, indices: &[usize], out: &mut Targets) {
        if let Targets::Classes(v) = out {
            v.clear();
            v.extend(indices.iter().map(|&i| (i % 3) as i64));
        }
    }
}

fn build_flaky(o: &serde_json::Map<String, serde_json::Value>, _root: &Path) -> Result<DatasetSplits, String> {
    let fail_at = o.get("fail_at").and_then(|v| v.as_u64()).map(|v| v as usize);
    Ok(DatasetSplits::new(std::sync::Arc::new(Flaky { fail_at }), None))
}

/// The flaky run assembled in-process with its dataset registered, logging into `dir`.
fn flaky_app(dir: &Path, fail_at: Option<usize>, workers: usize) -> App {
    let mut app = default_app();
    app.registry.register_dataset("flaky", DatasetEntry { build: build_flaky, doc: "fails on one sample" });
    let fail = fail_at.map_or(String::new(), |i| format!("    fail_at: {i}\n"));
    let yaml = format!(
        "model:\n  arch: mlp\n  input_size: 8\n  hidden_sizes: [16]\n  output_size: 3\n\
         datasets:\n  flaky:\n    builder: flaky\n{fail}\
         run:\n  epochs: 2\n  batch: 16\n  nbs: 16\n  seed: 1\n  workers: {workers}\n  save_dir: {}\n",
        dir.join("run").display()
    );
    let cfg = write_config(dir, &format!("flaky_{workers}.yaml"), &yaml);
    let mut app = assemble(app, load_config(&cfg, &[]).unwrap(), true).unwrap().app;
    let log = std::fs::File::create(dir.join(format!("metrics_{workers}.jsonl"))).unwrap();
    app.world.insert_resource(ecstrain::systems::logging::jsonl::JsonlLog(std::io::BufWriter::new(log)));
    app
}

#[test]
fn a_read_failure_ends_the_run_at_its_step_without_training_on_a_stale_batch() {
    let dir = scratch("loader_read_failure");
    for workers in [0, 2] {
        // The sample at position 5 * 16 + 3 of epoch 0's order: batch 5 fails.
        let mut reference = flaky_app(&dir, None, workers);
        let bad = {
            let mut train = reference.world.resource_mut::<TrainLoader>();
            train.0.set_epoch(0);
            train.0.order()[5 * 16 + 3]
        };
        let mut app = flaky_app(&dir, Some(bad), workers);
        assert_eq!(loader_threads_started(workers > 0), workers > 0, "workers {workers}: loader threads");
        let result = runner::in_pool(|| runner::run(&mut app));
        match result {
            Err(EngineError::Run(m)) => assert!(m.contains(&format!("flaky: sample {bad} cannot be read")), "{m}"),
            other => panic!("workers {workers}: expected the read failure, got {other:?}"),
        }
        let clock = app.world.resource::<Clock>().clone();
        assert_eq!((clock.micro_step, clock.batch_in_epoch), (5, 5), "workers {workers}: stopped at {clock:?}");
        // Exactly the 5 good steps trained: the failed one ran no forward, backward or optimizer step.
        reference.run(ecstrain::systems::sets::RunStart);
        for _ in 0..5 {
            runner::train_step(&mut reference);
        }
        let params = |a: &App| a.world.resource::<Params>().0.data.clone();
        let grads = |a: &App| a.world.resource::<Grads>().0.data.clone();
        assert!(params(&app) == params(&reference), "workers {workers}: the failed step changed the parameters");
        assert!(grads(&app) == grads(&reference), "workers {workers}: the failed step accumulated gradients");
    }
    // Dropping the apps stopped their loader threads (the producers are joined; the pools' threads exit on
    // their own shortly after). Only this test builds loaders in this process.
    let t0 = std::time::Instant::now();
    while loader_threads() > 0 {
        assert!(t0.elapsed().as_secs() < 10, "{} loader threads still running", loader_threads());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Threads of this process named `ecstrain-loader...` (the name is cut to 15 bytes in /proc).
/// Whether loader threads run in this process. A thread takes its name once it first runs, which on a busy
/// machine can come a while after it was spawned, so when `expect` is true this waits up to 10 s for one.
fn loader_threads_started(expect: bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let running = loader_threads() > 0;
        if running || !expect || std::time::Instant::now() > deadline {
            return running;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn loader_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with("ecstrain-loader"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn data_bench_times_the_train_loader_of_a_config() {
    let out = engine(&[
        "data",
        "bench",
        "--config",
        "configs/digits_mlp.yaml",
        "--set",
        "run.workers=2",
        "--set",
        "run.prefetch=3",
        "--batches",
        "60",
    ]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("60 batches") && log.contains("samples/s") && log.contains("ms per batch"), "{log}");
    assert!(log.contains("(workers 2, prefetch 3)"), "{log}");
    // Default: one epoch on the training thread (1437 samples in 23 batches of 64).
    let out = engine(&["data", "bench", "--config", "configs/digits_mlp.yaml"]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("23 batches, 1437 samples") && log.contains("(workers 0, prefetch 0)"), "{log}");
    // Bad config: exit 2, the key named.
    let out = engine(&["data", "bench", "--config", "configs/digits_mlp.yaml", "--set", "run.prefetch=0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("run.prefetch"), "{}", text(&out));
    let out = engine(&["data", "bench", "--config", "configs/missing.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
