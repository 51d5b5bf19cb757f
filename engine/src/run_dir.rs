//! Choosing and creating the run directory: `save_dir` itself, or with `exist_ok: false` the first free
//! numbered sibling (`runs/train`, `runs/train2`, `runs/train3`, ... as Ultralytics' increment_path); and
//! finding the one the latest run wrote to (`engine eval --checkpoint best`).

use std::path::{Path, PathBuf};

/// The directory this run will write to.
pub fn choose_run_dir(save_dir: &Path, exist_ok: bool) -> PathBuf {
    if exist_ok || !save_dir.exists() {
        return save_dir.to_path_buf();
    }
    (2..).map(|i| numbered(save_dir, i)).find(|p| !p.exists()).expect("an unused numbered directory exists")
}

/// `save_dir` with `i` appended to its name (`runs/train` -> `runs/train2`).
fn numbered(save_dir: &Path, i: u64) -> PathBuf {
    let name = save_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    save_dir.with_file_name(format!("{name}{i}"))
}

/// The run directory the latest run of a config wrote to: `save_dir` itself with `exist_ok`, else the last one
/// of the chain `save_dir`, `save_dir2`, `save_dir3`, ... before the first missing name (the one just before
/// the directory [`choose_run_dir`] would pick next). `None` when `save_dir` does not exist.
pub fn latest_run_dir(save_dir: &Path, exist_ok: bool) -> Option<PathBuf> {
    if !save_dir.exists() {
        return None;
    }
    if exist_ok {
        return Some(save_dir.to_path_buf());
    }
    let last = (2..).map(|i| numbered(save_dir, i)).take_while(|p| p.exists()).last();
    Some(last.unwrap_or_else(|| save_dir.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_siblings_unless_exist_ok() {
        let base = std::env::temp_dir().join(format!("ecstrain-rundir-{}", std::process::id()));
        let d = base.join("train");
        assert_eq!(choose_run_dir(&d, false), d);
        assert_eq!(latest_run_dir(&d, false), None);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(latest_run_dir(&d, false), Some(d.clone()));
        assert_eq!(choose_run_dir(&d, false), base.join("train2"));
        assert_eq!(choose_run_dir(&d, true), d);
        std::fs::create_dir_all(base.join("train2")).unwrap();
        assert_eq!(choose_run_dir(&d, false), base.join("train3"));
        assert_eq!(latest_run_dir(&d, false), Some(base.join("train2")));
        assert_eq!(latest_run_dir(&d, true), Some(d.clone()));
        // A gap ends the chain, as it ends choose_run_dir's search.
        std::fs::create_dir_all(base.join("train4")).unwrap();
        assert_eq!(latest_run_dir(&d, false), Some(base.join("train2")));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
