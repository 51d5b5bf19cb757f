//! Choosing and creating the run directory: `save_dir` itself, or with `exist_ok: false` the first free
//! numbered sibling (`runs/train`, `runs/train2`, `runs/train3`, ... as Ultralytics' increment_path).

use std::path::{Path, PathBuf};

/// The directory this run will write to.
pub fn choose_run_dir(save_dir: &Path, exist_ok: bool) -> PathBuf {
    if exist_ok || !save_dir.exists() {
        return save_dir.to_path_buf();
    }
    let name = save_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    (2..)
        .map(|i| save_dir.with_file_name(format!("{name}{i}")))
        .find(|p| !p.exists())
        .expect("an unused numbered directory exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_siblings_unless_exist_ok() {
        let base = std::env::temp_dir().join(format!("ecstrain-rundir-{}", std::process::id()));
        let d = base.join("train");
        assert_eq!(choose_run_dir(&d, false), d);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(choose_run_dir(&d, false), base.join("train2"));
        assert_eq!(choose_run_dir(&d, true), d);
        std::fs::create_dir_all(base.join("train2")).unwrap();
        assert_eq!(choose_run_dir(&d, false), base.join("train3"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
