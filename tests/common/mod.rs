//! Shared helpers of the end-to-end tests: run the real `engine` binary in a scratch directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (configs/ and data/ live there).
pub fn repo() -> PathBuf {
    // ECSTRAIN_REPO: a prebuilt test binary run from another checkout (tools/gpu-session/run.sh).
    std::env::var_os("ECSTRAIN_REPO").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// A fresh scratch directory for one test, removed when the test passes (kept when it panics, so a failure
/// can be looked at). Without the removal every run of the suite left about a gigabyte in the temp directory.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Scratch {
    /// Hands the scratch directory on as its `run` subdirectory (the save_dir the tests use), still removed
    /// when the returned value is dropped.
    pub fn into_run(self) -> RunDir {
        let path = self.0.join("run");
        RunDir { path, _scratch: self }
    }
}

/// `<scratch>/run`, keeping its scratch directory alive.
pub struct RunDir {
    path: PathBuf,
    _scratch: Scratch,
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for RunDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

impl std::ops::Deref for RunDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.path
    }
}

/// Creates the scratch directory `ecstrain-e2e-<pid>-<name>` under the temp directory, empty.
pub fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("ecstrain-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Runs `engine` with `args` from the repository root.
pub fn engine(args: &[&str]) -> Output {
    Command::new(engine_bin()).args(args).current_dir(repo()).output().expect("engine runs")
}

/// The engine binary: `ECSTRAIN_ENGINE_BIN` if set (prebuilt binaries carried to another machine), else
/// the one cargo built with these tests.
pub fn engine_bin() -> PathBuf {
    std::env::var_os("ECSTRAIN_ENGINE_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_engine")), PathBuf::from)
}

/// stdout + stderr as text.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Writes a config file into `dir` and returns its path.
pub fn write_config(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

/// A small valid digits config writing into `save_dir`; tests replace pieces of it.
pub fn digits_yaml(save_dir: &Path) -> String {
    let r = repo().display().to_string();
    [
        "model:".to_string(),
        "  arch: mlp".into(),
        "  input_size: 64".into(),
        "  hidden_sizes: [32]".into(),
        "  output_size: 10".into(),
        "datasets:".into(),
        "  digits:".into(),
        "    builder: npy".into(),
        "    train:".into(),
        format!("      x: {r}/data/digits/train_x.npy"),
        format!("      y: {r}/data/digits/train_y.npy"),
        "    val:".into(),
        format!("      x: {r}/data/digits/val_x.npy"),
        format!("      y: {r}/data/digits/val_y.npy"),
        "run:".into(),
        "  epochs: 2".into(),
        "  batch: 64".into(),
        "  optimizer: AdamW".into(),
        "  lr0: 0.001".into(),
        format!("  save_dir: {}", save_dir.display()),
    ]
    .join("\n")
        + "\n"
}

/// The python interpreter of the interoperability checks (ECSTRAIN_PYTHON, else `python3`).
pub fn python() -> String {
    std::env::var("ECSTRAIN_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether python can import `onnx` and `onnxruntime`. Without them a test prints a SKIPPED line and returns,
/// unless ECSTRAIN_REQUIRE_ORT=1 (set by .ci/run), where the missing package fails the test.
pub fn onnxruntime_available(test: &str) -> bool {
    let ok = Command::new(python()).args(["-c", "import onnx, onnxruntime"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("ECSTRAIN_REQUIRE_ORT").as_deref() != Ok("1"),
            "{test}: python `onnx` / `onnxruntime` not importable (pip install onnx onnxruntime)"
        );
        println!("SKIPPED {test}: python `onnx` / `onnxruntime` not importable (pip install onnx onnxruntime)");
    }
    ok
}

/// Writes a float32 C-order .npy file.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // The magic, version and length take 10 bytes; the header ends with a newline at a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

/// Writes `dir/{train,val}_x.npy` (the digits inputs) and `dir/{train,val}_y.npy` = `x @ P` (f32, `[N, k]`)
/// for a fixed random `P` of shape `[64, k]`.
pub fn write_projection_dataset(dir: &Path, k: usize) {
    let mut rng = ecstrain::kernels::rng::Rng::new(0x7A5C);
    let p: Vec<f64> = (0..64 * k).map(|_| rng.normal() / 8.0).collect();
    for split in ["train", "val"] {
        let x =
            ecstrain::systems::data::npy::NpyArray::open(&repo().join(format!("data/digits/{split}_x.npy"))).unwrap();
        let (n, d) = (x.rows(), x.row_len());
        assert_eq!(d, 64);
        let xv = x.to_f32_vec();
        let mut y = vec![0.0f32; n * k];
        for i in 0..n {
            for j in 0..k {
                y[i * k + j] = (0..d).map(|c| xv[i * d + c] as f64 * p[c * k + j]).sum::<f64>() as f32;
            }
        }
        ecstrain::systems::data::npy::write_npy(&dir.join(format!("{split}_x.npy")), &[n, d], &xv).unwrap();
        ecstrain::systems::data::npy::write_npy(&dir.join(format!("{split}_y.npy")), &[n, k], &y).unwrap();
    }
}

/// A config training an MLP 64 -> [64] -> k on the dataset written by [`write_projection_dataset`].
pub fn projection_yaml(data: &Path, save: &Path, task: &str, k: usize) -> String {
    let d = data.display();
    format!(
        "model:
  arch: mlp
  input_size: 64
  hidden_sizes: [64]
  output_size: {k}
datasets:
  proj:
    builder: npy
    train:
      x: {d}/train_x.npy
      y: {d}/train_y.npy
    val:
      x: {d}/val_x.npy
      y: {d}/val_y.npy
run:
  task: {task}
  epochs: 10
  batch: 32
  optimizer: AdamW
  lr0: 0.003
  scheduler: constant
  save_dir: {}
",
        save.display()
    )
}

/// `config` (a path under the repository) on `device` with `more` overrides, assembled in this process (for
/// tests that look into the world or step it themselves); its log goes to /dev/null. Changes the current
/// directory to the repository, as the engine resolves data paths against it.
pub fn app_of(config: &str, device: &str, more: &[&str]) -> ecstrain::engine::app::App {
    use ecstrain::engine::{assemble::assemble, cli::default_app, config::load_config};
    let root = repo();
    std::env::set_current_dir(&root).unwrap();
    let mut sets = vec!["run.log_interval=1000000".to_string(), format!("run.device={device}")];
    sets.extend(more.iter().map(|s| s.to_string()));
    let loaded = load_config(&root.join(config), &sets).unwrap();
    let mut app = assemble(default_app(), loaded, true).unwrap().app;
    let sink = std::fs::File::create("/dev/null").unwrap();
    app.world.insert_resource(ecstrain::systems::logging::jsonl::JsonlLog(std::io::BufWriter::new(sink)));
    app
}
