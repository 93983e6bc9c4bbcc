//! Crash-safe file operations: a file is either absent, the old version or
//! the complete new version, never a mix.

use std::{
    fs,
    io::{
        self,
        Write as _, //
    },
    os::fd::AsRawFd as _,
    path::{
        Path,
        PathBuf, //
    },
};

/// A file operation that failed: what was done, on which path, and why.
#[derive(Debug, thiserror::Error)]
#[error("'{}': {op} failed: {source}", path.display())]
pub struct FileError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Names the operation and the path of an `io::Error`:
/// `fs::read(&p).map_err(fsutil::at("read", &p))?`.
pub fn at(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_owned();
    move |source| FileError { op, path, source }
}

/// Prefix of kmend's temporary files; stale ones (from a killed process)
/// are removed by [`remove_stale_temporaries`].
pub const TEMP_PREFIX: &str = ".kmend-tmp-";

/// A new temporary file in `dir`, named with [`TEMP_PREFIX`].
pub fn temp_in(dir: &Path) -> io::Result<tempfile::NamedTempFile> {
    fs::create_dir_all(dir)?;
    tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(dir)
}

/// Writes `data` to `path` through a fsynced temporary file and a rename,
/// then fsyncs the directory so the rename survives a crash.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = temp_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Removes `path` (absent is fine) and fsyncs its directory.
pub fn remove_durably(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsync of a directory, which makes creations, renames and removals in it
/// durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Removes temporary files that a killed kmend left in `dir`; returns
/// their names.
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(TEMP_PREFIX) {
            fs::remove_file(entry.path())?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// An exclusive advisory lock, held until dropped: serialises every
/// command that changes what is applied (the daemon, `update`, `apply`...).
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    /// Takes the lock on `path`, waiting for another holder to finish.
    pub fn acquire(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // SAFETY: flock on an open descriptor we own.
        loop {
            let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if ret == 0 {
                return Ok(Self { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn removes_only_stale_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = temp_in(dir.path()).unwrap();
        let (_, tmp_path) = tmp.keep().unwrap();
        fs::write(dir.path().join("keep.kmpatch"), b"x").unwrap();
        let removed = remove_stale_temporaries(dir.path()).unwrap();
        assert_eq!(removed.len(), 1);
        assert!(!tmp_path.exists());
        assert!(dir.path().join("keep.kmpatch").exists());
    }
}
