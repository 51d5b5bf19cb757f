//! Replacing a file by renaming a finished temporary file over it (the atomic writes of checkpoints, logs and
//! exports) is only safe when what is there is a regular file: a rename replaces a device, a FIFO or a socket
//! just as well, and as root `/dev/null` would become a regular file.

use std::io;
use std::path::Path;

/// What kind of file system entry `t` is, for messages ("a FIFO", "a character device", ...).
pub fn file_kind(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// `Ok` when `path` is missing or a regular file (a symbolic link is followed: the rename replaces the link,
/// never what it points to). Otherwise an `InvalidInput` error saying what is there, so the caller leaves it
/// alone.
pub fn check_replaceable(path: &Path) -> io::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is {}, not a regular file; not replacing it", path.display(), file_kind(m.file_type())),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_paths_and_regular_files_are_replaceable() {
        let dir = std::env::temp_dir().join(format!("ecstrain-replace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(check_replaceable(&dir.join("new")).is_ok());
        std::fs::write(dir.join("f"), b"x").unwrap();
        assert!(check_replaceable(&dir.join("f")).is_ok());
        let e = check_replaceable(&dir).unwrap_err();
        assert!(e.kind() == io::ErrorKind::InvalidInput && e.to_string().contains("a directory"), "{e}");
        #[cfg(unix)]
        {
            let fifo = dir.join("fifo");
            assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
            let e = check_replaceable(&fifo).unwrap_err();
            assert!(e.to_string().contains("a FIFO"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
