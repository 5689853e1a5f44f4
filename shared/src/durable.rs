//! Durable private files: written whole or not at all, readable by their owner only.
//!
//! Why a file helper lives in this otherwise sans-IO crate: the A3 (its CA, API token, SSH
//! key, pool passwords, enrollment files) and the ABD agent (its key and certificate) need
//! the same crash-safe write, and two copies had already drifted apart (the agent's skipped
//! the directory fsync). It is plain `std::fs`: no sockets, no tokio, no clock.
//!
//! The order, so that a crash at any point leaves either the old file or the new one:
//! 1. a temp file beside the target, mode 0600, under a name no other writer uses
//!    (`create_new`), so concurrent writers never share one;
//! 2. write, then fsync the file;
//! 3. rename it onto the target ([`write_private`]), or hard-link it there only where no
//!    file is ([`create_private`]: the first writer wins);
//! 4. fsync the directory, so that the new name itself survives a crash.
//!
//! A temp file not committed (a failed step, a panic) is removed when its guard drops.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers the temp files of this process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// A durable write that failed: the file, the step, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {step}", path.display())]
pub struct WriteError {
    /// The file being written (the target, not the temp file beside it).
    pub path: PathBuf,
    /// The step that failed, e.g. "create a temp file", "fsync", "rename into place".
    pub step: &'static str,
    /// The cause. [`create_private`] gives [`io::ErrorKind::AlreadyExists`] when the
    /// target exists.
    #[source]
    pub source: io::Error,
}

/// Writes `bytes` to `path` (mode 0600), replacing any file there, atomically and durably.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let tmp = TempFile::create(path, bytes)?;
    tmp.rename_into_place()
}

/// Writes `bytes` to `path` (mode 0600) only if no file is there, atomically and durably.
/// When another writer got there first, the error's source is
/// [`io::ErrorKind::AlreadyExists`] and its file is left as it was.
pub fn create_private(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let tmp = TempFile::create(path, bytes)?;
    tmp.link_into_place()
}

/// A written and fsynced temp file beside its target, removed on drop unless renamed.
struct TempFile {
    target: PathBuf,
    path: PathBuf,
    renamed: bool,
}

impl TempFile {
    /// Creates `.<name>.<pid>-<n>.tmp` beside `target` with `bytes`, fsynced. A name left
    /// by a crash (the agent is always PID 1) is skipped, never reused.
    fn create(target: &Path, bytes: &[u8]) -> Result<TempFile, WriteError> {
        let fail = |step, source| WriteError {
            path: target.to_owned(),
            step,
            source,
        };
        let name = target
            .file_name()
            .ok_or_else(|| fail("write", io::ErrorKind::InvalidInput.into()))?
            .to_string_lossy();
        let pid = std::process::id();
        let (mut file, tmp) = loop {
            let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
            let tmp = target.with_file_name(format!(".{name}.{pid}-{n}.tmp"));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(file) => break (file, tmp),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(fail("create a temp file", e)),
            }
        };
        // From here on the guard removes the temp file on any failure.
        let guard = TempFile {
            target: target.to_owned(),
            path: tmp,
            renamed: false,
        };
        file.write_all(bytes).map_err(|e| fail("write", e))?;
        file.sync_all().map_err(|e| fail("fsync", e))?;
        Ok(guard)
    }

    fn rename_into_place(mut self) -> Result<(), WriteError> {
        std::fs::rename(&self.path, &self.target).map_err(|e| self.fail("rename into place", e))?;
        self.renamed = true;
        self.sync_dir()
    }

    /// A hard link is made only where no file is; the temp name goes on drop.
    fn link_into_place(self) -> Result<(), WriteError> {
        std::fs::hard_link(&self.path, &self.target)
            .map_err(|e| self.fail("create (link into place)", e))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), WriteError> {
        let dir = match self.target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.fail("fsync its directory", e))
    }

    fn fail(&self, step: &'static str, source: io::Error) -> WriteError {
        WriteError {
            path: self.target.clone(),
            step,
            source,
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("a3-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_replaces_the_file_private_and_leaves_no_temp() {
        let dir = scratch("write");
        let path = dir.join("token");
        write_private(&path, b"old").unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(names(&dir), ["token"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_keeps_the_first_file() {
        let dir = scratch("create");
        let path = dir.join("client.key");
        create_private(&path, b"first").unwrap();
        let err = create_private(&path, b"second").unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(err.path, path);
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(names(&dir), ["client.key"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_creates_agree_on_one_file() {
        let dir = scratch("race");
        let path = dir.join("client.key");
        let won: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let path = &path;
                    s.spawn(move || create_private(path, &[i; 64]).is_ok())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "one writer wins");
        let winner = won.iter().position(|w| *w).unwrap() as u8;
        assert_eq!(std::fs::read(&path).unwrap(), [winner; 64]);
        assert_eq!(names(&dir), ["client.key"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_names_the_file_and_leaves_nothing() {
        let dir = scratch("fail");
        // The target is a non-empty directory: rename onto it fails after the temp exists.
        let path = dir.join("occupied");
        std::fs::create_dir_all(path.join("inside")).unwrap();
        let err = write_private(&path, b"x").unwrap_err();
        assert_eq!(err.path, path);
        assert_eq!(err.step, "rename into place");
        assert!(err.to_string().contains("occupied"), "{err}");
        assert_eq!(names(&dir), ["occupied"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_stale_temp_name_is_skipped() {
        let dir = scratch("stale");
        let path = dir.join("cert");
        let pid = std::process::id();
        // The next names this process will try, as a crashed run of the same pid (the
        // agent is always PID 1) could have left them; other tests take a few meanwhile.
        let next = NEXT_TEMP.load(Ordering::Relaxed);
        let stale: Vec<String> = (next..next + 64)
            .map(|n| format!(".cert.{pid}-{n}.tmp"))
            .collect();
        for name in &stale {
            std::fs::write(dir.join(name), b"stale").unwrap();
        }
        write_private(&path, b"fresh").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"fresh");
        for name in &stale {
            assert_eq!(std::fs::read(dir.join(name)).unwrap(), b"stale", "{name}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
