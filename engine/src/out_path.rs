//! Where the user asked for output (`--out` of export, quantize and data pack; `run.save_dir`): a location that
//! cannot take the output is bad input (exit 2, the path named, nothing written), and only a failure while
//! writing is a failure of the run (exit 1). An existing entry is only replaced when it is a regular file, and
//! directories created for an output that then fails are removed again.

use std::io;
use std::path::{Path, PathBuf};

use ecstrain_systems::replace::file_kind;

use crate::error::{usage, EngineError};

/// Whether `e`, met creating a file or directory at a path the user gave, says the location is unusable (a
/// file where a directory must be, no permission, a read-only or pseudo file system such as /proc, a bad name,
/// something in the way) rather than that writing failed (disk full, I/O error).
pub fn is_bad_location(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        NotFound
            | PermissionDenied
            | ReadOnlyFilesystem
            | NotADirectory
            | IsADirectory
            | AlreadyExists
            | InvalidFilename
            | InvalidInput
    )
}

/// The error for `e`, met trying to `what` (e.g. "create the run directory") at `path` for `key` (`--out`,
/// `run.save_dir`): exit 2 when the location is unusable ([`is_bad_location`]), else exit 1.
pub fn location_error(key: &str, what: &str, path: &Path, e: io::Error) -> EngineError {
    let msg = format!("{key}: cannot {what} {}: {e}", path.display());
    if is_bad_location(&e) {
        usage(msg)
    } else {
        EngineError::Run(msg)
    }
}

/// The regular file that option `flag` naming `out` is written to: `out` itself when nothing is there yet or
/// it is a regular file, and for a symbolic link to a regular file the file it points to (the link stays and
/// shows the new contents, as shell redirection writes through a link; the temporary file then goes beside
/// the target, so the final rename stays on one file system). Anything else is refused with exit 2: a rename
/// over a directory fails, and over a device, FIFO or socket it would replace it (as root, `--out /dev/null`
/// replaced the device with a regular file).
pub fn out_file(flag: &str, out: &Path) -> Result<PathBuf, EngineError> {
    let o = out.display();
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out.to_path_buf()),
        Err(e) => return Err(usage(format!("{flag}: cannot write {o}: {e}"))),
    };
    if !meta.file_type().is_symlink() {
        return if meta.is_file() { Ok(out.to_path_buf()) } else { Err(not_regular(flag, out, meta.file_type())) };
    }
    match std::fs::metadata(out) {
        Ok(t) if t.is_file() => {
            std::fs::canonicalize(out).map_err(|e| usage(format!("{flag}: cannot resolve {o}: {e}")))
        }
        Ok(t) => Err(not_regular(flag, out, t.file_type())),
        Err(_) => Err(usage(format!(
            "{flag}: {o} is a symbolic link to nothing; it must be a regular file (replaced) or a new path"
        ))),
    }
}

/// "`flag`: `out` is a FIFO, ..." for an existing entry that a write must not replace.
fn not_regular(flag: &str, out: &Path, t: std::fs::FileType) -> EngineError {
    usage(format!("{flag}: {} is {}; it must be a regular file (replaced) or a new path", out.display(), file_kind(t)))
}

/// The directories created for an output, removed again (deepest first, and only while empty) when dropped
/// before [`NewDirs::keep`]: an output that failed leaves no directories behind.
#[must_use = "dropping NewDirs removes the directories it created"]
pub struct NewDirs(Vec<PathBuf>);

impl NewDirs {
    /// Creates `dir` and its missing ancestors. On failure the ones already created are removed again.
    pub fn create(dir: &Path) -> io::Result<NewDirs> {
        // Ancestors that do not exist (symlink_metadata: a dangling link is something in the way, not missing).
        let missing: Vec<&Path> = dir
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && std::fs::symlink_metadata(p).is_err())
            .collect();
        let mut made = NewDirs(Vec::new());
        for p in missing.into_iter().rev() {
            match std::fs::create_dir(p) {
                Ok(()) => made.0.push(p.to_path_buf()),
                // Made meanwhile by another process, or a `..` component: there is a directory, as wanted.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(made)
    }

    /// The output is in place: the directories stay.
    pub fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for NewDirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ecstrain-out-path-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn new_dirs_are_removed_unless_kept() {
        let d = scratch("dirs");
        drop(NewDirs::create(&d.join("a/b/c")).unwrap());
        assert!(!d.join("a").exists());
        NewDirs::create(&d.join("a/b")).unwrap().keep();
        assert!(d.join("a/b").is_dir());
        // Under a regular file nothing can be made, and nothing is left.
        std::fs::write(d.join("f"), b"x").unwrap();
        let e = NewDirs::create(&d.join("f/x/y")).err().unwrap();
        assert!(is_bad_location(&e), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn out_file_resolves_links_to_files_and_refuses_the_rest() {
        let d = scratch("links");
        assert_eq!(out_file("--out", &d.join("new")).unwrap(), d.join("new"));
        std::fs::write(d.join("f"), b"x").unwrap();
        assert_eq!(out_file("--out", &d.join("f")).unwrap(), d.join("f"));
        std::os::unix::fs::symlink(d.join("f"), d.join("link")).unwrap();
        assert_eq!(out_file("--out", &d.join("link")).unwrap(), d.join("f").canonicalize().unwrap());
        std::os::unix::fs::symlink(d.join("gone"), d.join("dangling")).unwrap();
        assert!(out_file("--out", &d.join("dangling")).unwrap_err().to_string().contains("symbolic link to nothing"));
        std::os::unix::fs::symlink(&d, d.join("dirlink")).unwrap();
        assert!(out_file("--out", &d.join("dirlink")).unwrap_err().to_string().contains("is a directory"));
        let m = out_file("--out", &d).unwrap_err().to_string();
        assert!(m.starts_with("--out: ") && m.contains("is a directory") && m.contains("new path"), "{m}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
