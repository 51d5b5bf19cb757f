//! Data parallelism over MPI (feature `mpi`): `mpirun -n 2` on the digits MLP with batch 32 per rank ends
//! with the parameters of one process with batch 64 over the same data order (within 1e-5), and only rank 0
//! writes. Bad input stops every rank with exit 2. The same holds for a torchrun-style launch (RANK /
//! WORLD_SIZE / MASTER_ADDR / MASTER_PORT, no mpirun). Prints a SKIPPED line when mpirun or ompi-server is
//! missing.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// mpirun on PATH, if any.
fn mpirun() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("mpirun")).find(|p| p.is_file())
}

/// `mpirun -n 2 engine args...` (as root too: CI runs as root).
fn mpirun_engine(mpirun: &Path, args: &[&str]) -> Output {
    Command::new(mpirun)
        .args(["-n", "2", "--oversubscribe", "--allow-run-as-root", "--bind-to", "none"])
        .arg(env!("CARGO_BIN_EXE_engine"))
        .args(args)
        .current_dir(repo())
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("mpirun runs")
}

/// Every file under `dir`, relative, sorted; TensorBoard event files by their prefix only (their names carry
/// the second the run started, which differs between the two runs).
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(dir).unwrap().display().to_string();
                let tb = "events.out.tfevents.";
                out.push(if name.starts_with(tb) { tb.to_string() } else { name });
            }
        }
    }
    out.sort();
    out
}

fn yaml(save: &Path, batch: usize) -> String {
    // drop_last: 1437 samples make 22 full batches of 64, or 22 of 32 per rank over the same positions.
    digits_yaml(save)
        .replace("batch: 64", &format!("batch: {batch}\n  nbs: 64\n  drop_last: true"))
        .replace("epochs: 2", "epochs: 3")
        + "  seed: 3\n  log_interval: 5\n"
}

/// The two runs' last checkpoints hold the same parameters (within 1e-5) after the same optimizer steps, and
/// their logged epoch losses agree: the data-parallel run trained as the single process did.
fn assert_trained_alike(one: &Path, two: &Path, what: &str) {
    let load = |p: &Path| ecstrain::systems::checkpoint::safetensors_io::load_safetensors(p).unwrap();
    let (a, b) = (load(&one.join("checkpoints/last.safetensors")), load(&two.join("checkpoints/last.safetensors")));
    assert_eq!(a.metadata["optimizer_step"], b.metadata["optimizer_step"]);
    let mut max_err = 0.0f32;
    for (name, t) in &a.tensors {
        let (x, y) = (t.data.as_f32().unwrap(), b.tensors[name].data.as_f32().unwrap());
        for (p, q) in x.iter().zip(y) {
            max_err = max_err.max((p - q).abs());
        }
    }
    println!("max |param difference| after 3 epochs, {what}: {max_err:e}");
    assert!(max_err <= 1e-5, "parameters differ by {max_err}");

    // The logged loss is the global one: the epoch records agree too.
    let losses = |d: &Path| -> Vec<f64> {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["split"] == "epoch")
            .map(|r| r["train_loss"].as_f64().unwrap())
            .collect()
    };
    for (p, q) in losses(one).iter().zip(losses(two)) {
        assert!((p - q).abs() < 1e-5, "train_loss {p} vs {q}");
    }
}

#[test]
fn two_ranks_of_32_train_as_one_process_of_64() {
    let Some(mpirun) = mpirun() else {
        println!("SKIPPED: mpirun not found on PATH (apt-get install openmpi-bin libopenmpi-dev)");
        return;
    };
    let dir = scratch("mpi_dp");
    let (one, two) = (dir.join("one"), dir.join("two"));
    let c1 = write_config(&dir, "one.yaml", &yaml(&one, 64));
    let c2 = write_config(&dir, "two.yaml", &yaml(&two, 32));
    let out = engine(&["--config", c1.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = mpirun_engine(&mpirun, &["--config", c2.to_str().unwrap()]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(log.contains("data parallel: rank 0 of 2"), "{log}");
    // Only rank 0 printed the run (one summary, one run directory line).
    assert_eq!(log.matches("run directory:").count(), 1, "{log}");

    // Only rank 0 wrote: the one run directory, with the files of a single-process run and no sibling.
    let mut entries: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    entries.sort();
    assert_eq!(entries, ["one", "one.yaml", "two", "two.yaml"], "a rank wrote elsewhere");
    assert_eq!(files(&one), files(&two), "the data-parallel run wrote other files");

    assert_trained_alike(&one, &two, "1 x 64 vs 2 x 32 ranks");
}

/// The gradient all-reduce overlapped with the backward in small buckets (`run.bucket_mb: 0.01`, so the digits
/// MLP's 85k gradients go out as several buckets while the backward runs) trains bitwise as the single
/// all-reduce after the backward (`run.bucket_mb: 0`): with two ranks every sum is exact in any order. Also with
/// gradient accumulation (nbs 128: two micro-batches per step, only the second one reduces). Both log the
/// all-reduce time and the part of it the training thread waited for.
#[test]
fn overlapped_buckets_train_bitwise_as_one_all_reduce_after_the_backward() {
    let Some(mpirun) = mpirun() else {
        println!("SKIPPED: mpirun not found on PATH (apt-get install openmpi-bin libopenmpi-dev)");
        return;
    };
    let dir = scratch("mpi_overlap");
    for nbs in ["64", "128"] {
        let mut runs = Vec::new();
        for (tag, bucket) in [("after", "0"), ("overlap", "0.01")] {
            let save = dir.join(format!("{tag}_{nbs}"));
            let yaml = yaml(&save, 32).replace("nbs: 64", &format!("nbs: {nbs}")) + &format!("  bucket_mb: {bucket}\n");
            let cfg = write_config(&dir, &format!("{tag}_{nbs}.yaml"), &yaml);
            let out = mpirun_engine(&mpirun, &["--config", cfg.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
            let records: Vec<serde_json::Value> = std::fs::read_to_string(save.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .filter(|r: &serde_json::Value| r["split"] == "train")
                .collect();
            assert!(!records.is_empty());
            for r in &records {
                let (all, wait) = (r["allreduce_s"].as_f64().unwrap(), r["allreduce_wait_s"].as_f64().unwrap());
                assert!(all > 0.0 && wait > 0.0, "{tag}: {r}");
            }
            runs.push(save);
        }
        let load = |p: &Path| ecstrain::systems::checkpoint::safetensors_io::load_safetensors(p).unwrap();
        let (a, b) =
            (load(&runs[0].join("checkpoints/last.safetensors")), load(&runs[1].join("checkpoints/last.safetensors")));
        assert_eq!(a.metadata["optimizer_step"], b.metadata["optimizer_step"]);
        assert_eq!(a.tensors.len(), b.tensors.len());
        for (name, t) in &a.tensors {
            let (x, y) = (t.data.as_f32().unwrap(), b.tensors[name].data.as_f32().unwrap());
            let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "nbs {nbs}: {name} differs between the overlapped and the after-backward all-reduce");
        }
    }
}

#[test]
fn bad_input_stops_every_rank_with_exit_2() {
    let Some(mpirun) = mpirun() else {
        println!("SKIPPED: mpirun not found on PATH");
        return;
    };
    let dir = scratch("mpi_bad");
    let save = dir.join("run");
    let cfg = write_config(&dir, "bad.yaml", &yaml(&save, 32).replace("lr0: 0.001", "lr0: -1"));
    let out = mpirun_engine(&mpirun, &["--config", cfg.to_str().unwrap()]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert_eq!(log.matches("run.lr0 must be a positive number").count(), 2, "every rank reports: {log}");
    assert!(!save.exists(), "a rank wrote the run directory");
}

/// A free TCP port on this machine (the OS picks; it is released again for the rendezvous to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The rank variables of a launcher: torchrun-style, or srun's (a job step without PMI for MPI).
fn rank_vars(launcher: &str, rank: usize, world: usize) -> Vec<(&'static str, String)> {
    match launcher {
        "torchrun" => {
            vec![("RANK", rank.to_string()), ("WORLD_SIZE", world.to_string()), ("LOCAL_RANK", rank.to_string())]
        }
        "srun" => vec![
            ("SLURM_STEP_ID", "0".into()),
            ("SLURM_PROCID", rank.to_string()),
            ("SLURM_NTASKS", world.to_string()),
            ("SLURM_LOCALID", rank.to_string()),
        ],
        other => panic!("no such launcher {other}"),
    }
}

/// `world` engine processes started as `launcher` would (its rank variables plus MASTER_ADDR /
/// MASTER_PORT, no mpirun), all waited for; their outputs in rank order.
fn launch_style(launcher: &str, world: usize, port: u16, args: &[&str], extra: &[(&str, &str)]) -> Vec<Output> {
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(env!("CARGO_BIN_EXE_engine"))
                .args(args)
                .current_dir(repo())
                .envs(rank_vars(launcher, rank, world))
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .envs(extra.iter().copied())
                .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the engine starts")
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

/// True (after printing the SKIPPED line) when ompi-server is not on PATH: Open MPI needs it to join
/// processes that mpirun did not start.
fn no_ompi_server() -> bool {
    let found =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("ompi-server").is_file()));
    if !found {
        println!("SKIPPED: ompi-server not found on PATH (apt-get install openmpi-bin)");
    }
    !found
}

/// One torchrun-style rank `rank` of `world` alone, meeting at a free local port, waiting `timeout` seconds
/// for the others; spawned with its output captured.
fn lone_rank(cfg: &Path, rank: usize, world: usize, timeout: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_engine"))
        .args(["--config", cfg.to_str().unwrap()])
        .current_dir(repo())
        .envs(rank_vars("torchrun", rank, world))
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string())
        .env("ECSTRAIN_RENDEZVOUS_TIMEOUT", timeout)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A torchrun-style launch (no mpirun: the ranks meet at MASTER_ADDR:MASTER_PORT and form an MPI world
/// through ompi-server) trains as the single process does, and only rank 0 writes; so does an srun job step
/// without PMI for MPI whose script exported MASTER_ADDR / MASTER_PORT.
#[test]
fn torchrun_style_and_srun_without_pmi_ranks_train_as_one_process() {
    if no_ompi_server() {
        return;
    }
    let dir = scratch("torchrun_dp");
    let one = dir.join("one");
    let c1 = write_config(&dir, "one.yaml", &yaml(&one, 64));
    let out = engine(&["--config", c1.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for launcher in ["torchrun", "srun"] {
        let two = dir.join(launcher);
        let c2 = write_config(&dir, &format!("{launcher}.yaml"), &yaml(&two, 32));
        let outs = launch_style(launcher, 2, free_port(), &["--config", c2.to_str().unwrap()], &[]);
        let logs: Vec<String> = outs.iter().map(text).collect();
        for (rank, out) in outs.iter().enumerate() {
            assert_eq!(out.status.code(), Some(0), "{launcher} rank {rank}: {}", logs[rank]);
        }
        let note = format!("data parallel: rank 0 of 2 (launcher {launcher}, local rank 0) over MPI");
        assert!(logs[0].contains(&note), "{}", logs[0]);
        assert!(!logs[1].contains("run directory:"), "rank 1 printed the run: {}", logs[1]);
        assert_eq!(files(&one), files(&two), "the data-parallel run wrote other files");
        assert_trained_alike(&one, &two, &format!("1 x 64 vs 2 x 32 {launcher}-style ranks"));
    }
    let mut entries: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    entries.sort();
    assert_eq!(
        entries,
        ["one", "one.yaml", "srun", "srun.yaml", "torchrun", "torchrun.yaml"],
        "a rank wrote elsewhere"
    );
}

/// A torchrun-style rank 0 whose peers never come stops with exit 2 after the rendezvous timeout, naming the
/// missing ranks, and leaves no run directory and no ompi-server behind.
#[test]
fn a_torchrun_style_rank_alone_times_out_with_exit_2() {
    if no_ompi_server() {
        return;
    }
    let dir = scratch("torchrun_alone");
    let save = dir.join("run");
    let cfg = write_config(&dir, "c.yaml", &yaml(&save, 32));
    let child = lone_rank(&cfg, 0, 3, "1.5");
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("ranks 1, 2 did not arrive within"), "{log}");
    assert!(!save.exists(), "a run directory was written");
    // The name server rank 0 started went with it: its state directory (named by rank 0's pid) is removed
    // when the server is stopped.
    let state = std::env::temp_dir().join(format!("ecstrain-ompi-server-{pid}"));
    assert!(!state.exists(), "ompi-server was left running: {} exists", state.display());

    // A peer that finds nobody at MASTER_ADDR:MASTER_PORT stops the same way.
    let out = lone_rank(&cfg, 1, 2, "1").wait_with_output().unwrap();
    let log = text(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("nothing answered at 127.0.0.1:"), "{log}");
}

/// The same equivalence on CUDA: `mpirun -n 2` with 32 per rank on the device ends where one CUDA process
/// with 64 ends (within 1e-4: the device sums in another order than the host). With the `nccl` feature the
/// gradients are averaged over NCCL (one GPU per rank, so it needs two GPUs); without it they are staged
/// through host memory over MPI (both ranks may share GPU 0). SKIPPED without a GPU.
#[test]
fn two_ranks_on_cuda_train_as_one_cuda_process() {
    let Some(mpirun) = mpirun() else {
        println!("SKIPPED: mpirun not found on PATH");
        return;
    };
    let info = match ecstrain::kernels::cuda::probe(0) {
        Ok(info) => info,
        Err(e) => {
            ecstrain::kernels::cuda::testing::skip_without_gpu("two_ranks_on_cuda_train_as_one_cuda_process", &e);
            return;
        }
    };
    let nccl = cfg!(feature = "nccl");
    if nccl && info.device_count < 2 {
        println!("SKIPPED: NCCL needs one GPU per rank and this machine has {}", info.device_count);
        return;
    }
    // Each rank takes the GPU of its local rank with a plain `cuda`; with one GPU both ranks share cuda:0.
    let device = if info.device_count >= 2 { "cuda" } else { "cuda:0" };
    let dir = scratch("mpi_dp_cuda");
    let (one, two) = (dir.join("one"), dir.join("two"));
    let cuda = |y: String| y + &format!("  device: {device}\n");
    let c1 = write_config(&dir, "one.yaml", &cuda(yaml(&one, 64)).replace("device: cuda\n", "device: cuda:0\n"));
    let c2 = write_config(&dir, "two.yaml", &cuda(yaml(&two, 32)));
    let out = engine(&["--config", c1.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = mpirun_engine(&mpirun, &["--config", c2.to_str().unwrap()]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let how = if nccl { "gradients averaged on the device with NCCL" } else { "gradients staged through host memory" };
    assert!(log.contains(how), "{log}");
    let load = |p: &Path| ecstrain::systems::checkpoint::safetensors_io::load_safetensors(p).unwrap();
    let (a, b) = (load(&one.join("checkpoints/last.safetensors")), load(&two.join("checkpoints/last.safetensors")));
    let mut max_err = 0.0f32;
    for (name, t) in &a.tensors {
        for (p, q) in t.data.as_f32().unwrap().iter().zip(b.tensors[name].data.as_f32().unwrap()) {
            max_err = max_err.max((p - q).abs());
        }
    }
    println!("cuda: max |param difference| after 3 epochs, 1 x 64 vs 2 x 32 ranks: {max_err:e}");
    assert!(max_err <= 1e-4, "parameters differ by {max_err}");
    if !nccl {
        return;
    }
    // Over NCCL the average overlaps the backward by default (one bucket here: the MLP's 85k gradients are
    // under the first bucket's 1 MiB). In small buckets (several per backward, each averaged on the
    // communicator's stream while the backward's kernels go on) and after the backward in one call
    // (`bucket_mb: 0`) it trains to the same bits: with two ranks every sum is exact in any order.
    let mut runs = vec![two];
    for (tag, bucket) in [("small_buckets", "0.01"), ("after_backward", "0")] {
        let save = dir.join(tag);
        let c =
            write_config(&dir, &format!("{tag}.yaml"), &(cuda(yaml(&save, 32)) + &format!("  bucket_mb: {bucket}\n")));
        let out = mpirun_engine(&mpirun, &["--config", c.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{tag}: {}", text(&out));
        runs.push(save);
    }
    let reference = load(&runs[2].join("checkpoints/last.safetensors"));
    for run in &runs[..2] {
        let got = load(&run.join("checkpoints/last.safetensors"));
        for (name, t) in &reference.tensors {
            let (x, y) = (t.data.as_f32().unwrap(), got.tensors[name].data.as_f32().unwrap());
            let same = x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{}: {name} differs from the average after the backward", run.display());
        }
    }
    println!("cuda over NCCL: one bucket, small buckets and one average after the backward train bitwise alike");
}
