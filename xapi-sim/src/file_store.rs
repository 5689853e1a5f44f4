//! A file store: where the files of a file-based SR live. An NFS SR's store is its export
//! as seen through the simulator's NFSv3 client ([`crate::nfs_client`]); [`LocalDir`] is a
//! local directory with the same interface, which the VHD layer's unit tests use.
//!
//! Paths are relative to the store's root and use `/` (`<sr-uuid>/<vdi-uuid>.vhd`). Every
//! call blocks until the I/O is done.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

/// Blocking file operations on a store.
pub trait FileStore: Debug + Send + Sync {
    /// Where the store is, for error messages (`nfs://server/export`, a directory).
    fn describe(&self) -> String;
    /// Fills `buf` from `offset`; an error if the file is shorter.
    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`, extending the file as needed.
    fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Creates an empty file, truncating an existing one.
    fn create(&self, path: &str) -> io::Result<()>;
    /// The file's length.
    fn len(&self, path: &str) -> io::Result<u64>;
    /// Removes a file.
    fn remove(&self, path: &str) -> io::Result<()>;
    /// The names in a directory.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Creates a directory (its parent must exist); fine if it exists.
    fn mkdir(&self, dir: &str) -> io::Result<()>;
    /// Removes an empty directory.
    fn rmdir(&self, dir: &str) -> io::Result<()>;
}

/// Splits a store path into its names, refusing `..`, `.` and empty names.
pub fn components(path: &str) -> io::Result<Vec<&str>> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("store path {path:?} must not contain . or .."),
        ));
    }
    Ok(parts)
}

/// A store in a local directory.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// A store rooted at `root`, which must exist.
    pub fn new(root: &Path) -> LocalDir {
        LocalDir {
            root: root.to_owned(),
        }
    }

    fn path(&self, path: &str) -> io::Result<PathBuf> {
        let mut p = self.root.clone();
        for c in components(path)? {
            p.push(c);
        }
        debug_assert!(p.components().all(|c| c != Component::ParentDir));
        Ok(p)
    }
}

impl FileStore for LocalDir {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        File::open(self.path(path)?)?.read_exact_at(buf, offset)
    }

    fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(self.path(path)?)?
            .write_all_at(data, offset)
    }

    fn create(&self, path: &str) -> io::Result<()> {
        File::create(self.path(path)?).map(drop)
    }

    fn len(&self, path: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.path(path)?)?.len())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        fs::remove_file(self.path(path)?)
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(self.path(dir)?)? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn mkdir(&self, dir: &str) -> io::Result<()> {
        match fs::create_dir(self.path(dir)?) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    fn rmdir(&self, dir: &str) -> io::Result<()> {
        fs::remove_dir(self.path(dir)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dir_round_trip_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalDir::new(dir.path());
        s.mkdir("sr").unwrap();
        s.mkdir("sr").unwrap();
        s.create("sr/a.vhd").unwrap();
        s.write_at("sr/a.vhd", 10, b"hello").unwrap();
        assert_eq!(s.len("sr/a.vhd").unwrap(), 15);
        let mut buf = [0u8; 5];
        s.read_at("sr/a.vhd", 10, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(s.read_at("sr/a.vhd", 12, &mut buf).is_err());
        assert_eq!(s.list("sr").unwrap(), ["a.vhd"]);
        assert!(s.create("../x").is_err());
        s.remove("sr/a.vhd").unwrap();
        s.rmdir("sr").unwrap();
        assert!(s.list("").unwrap().is_empty());
    }
}
