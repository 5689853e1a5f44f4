//! The filesystem backend: the store's directory layout and its durable writes.
//!
//! ```text
//! <dir>/lock                   held (flock) by the one process that owns the store
//! <dir>/chunks/ab/cd/<hex>     a chunk, named by its id (two levels of 256 fan-out)
//! <dir>/chunks/ab/cd/<hex>.bad a quarantined chunk (<hex>.<n>.bad for later ones)
//! <dir>/manifests/ab/<hex>     a manifest, named by the BLAKE3 of the file
//! <dir>/tmp/                   writes in progress; emptied at open
//! ```
//!
//! A write goes temp → fsync → rename → fsync of the directory (with [`SyncMode::Full`]), so
//! a name in `chunks/` or `manifests/` always holds whole bytes, and the temp file is
//! removed if anything fails on the way.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use a3_shared::chunk::BlockId;

use super::backend::{Backend, Entry, Space};

/// How hard writes are pushed to the disk: a documented setting (STYLE.md 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// fsync every object and its directory before it counts as stored. The default: a
    /// committed version survives a power cut.
    #[default]
    Full,
    /// No fsync: writes are still atomic (temp + rename), so a crash of the A3 alone leaves
    /// the store consistent, but a power cut may lose committed versions. Only for
    /// throwaway stores.
    Off,
}

/// A store directory, owned by this process while the value lives.
pub struct FsBackend {
    root: PathBuf,
    location: String,
    sync: SyncMode,
    next_tmp: AtomicU64,
    /// Holds the flock; released when dropped.
    _lock: File,
}

const QUARANTINE_SUFFIX: &str = ".bad";

impl FsBackend {
    /// Opens (creating if needed) the store at `root`, takes its lock and clears leftover
    /// temp files of a crashed run. `ErrorKind::WouldBlock` means another process owns it.
    pub fn open(root: &Path, sync: SyncMode) -> io::Result<FsBackend> {
        fs::create_dir_all(root)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => io::Error::from(io::ErrorKind::WouldBlock),
            fs::TryLockError::Error(e) => e,
        })?;
        for sub in ["chunks", "manifests", "tmp"] {
            let dir = root.join(sub);
            if !dir.is_dir() {
                fs::create_dir(&dir)?;
                sync_dir(root, sync)?;
            }
        }
        // Only this process writes here (we hold the lock), so every temp file is a
        // leftover of a crash: nothing references it.
        for entry in fs::read_dir(root.join("tmp"))? {
            fs::remove_file(entry?.path())?;
        }
        Ok(FsBackend {
            root: root.to_owned(),
            location: root.display().to_string(),
            sync,
            next_tmp: AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// The live path of an object.
    pub fn path_of(&self, space: Space, id: &BlockId) -> PathBuf {
        let hex = id.to_hex();
        match space {
            Space::Chunks => self
                .root
                .join("chunks")
                .join(&hex[0..2])
                .join(&hex[2..4])
                .join(hex),
            Space::Manifests => self.root.join("manifests").join(&hex[0..2]).join(hex),
        }
    }

    /// Creates `dir` and any missing parent below the root, making each new entry durable.
    fn make_dirs(&self, dir: &Path) -> io::Result<()> {
        let parent = dir.parent().expect("object dirs are below the root");
        if !parent.is_dir() {
            self.make_dirs(parent)?;
        }
        match fs::create_dir(dir) {
            Ok(()) => sync_dir(parent, self.sync),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A temp file removed on drop unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn sync_dir(dir: &Path, sync: SyncMode) -> io::Result<()> {
    match sync {
        SyncMode::Full => File::open(dir)?.sync_all(),
        SyncMode::Off => Ok(()),
    }
}

impl Backend for FsBackend {
    fn location(&self) -> &str {
        &self.location
    }

    fn put(&self, space: Space, id: &BlockId, bytes: &[u8]) -> io::Result<()> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let mut tmp = TempFile {
            path: self.root.join("tmp").join(format!("{}.{n}", id.to_hex())),
            armed: true,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp.path)?;
        f.write_all(bytes)?;
        // GC compares this time with the oldest writer's start: set it from the same clock
        // (the inode's own is the kernel's coarse clock, a few ms behind).
        f.set_modified(SystemTime::now())?;
        if self.sync == SyncMode::Full {
            f.sync_all()?;
        }
        drop(f);
        let dest = self.path_of(space, id);
        let dir = dest.parent().expect("object path has a parent");
        if let Err(e) = fs::rename(&tmp.path, &dest) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            self.make_dirs(dir)?;
            fs::rename(&tmp.path, &dest)?;
        }
        tmp.armed = false;
        sync_dir(dir, self.sync)
    }

    fn get(&self, space: Space, id: &BlockId) -> io::Result<Vec<u8>> {
        fs::read(self.path_of(space, id))
    }

    fn stat(&self, space: Space, id: &BlockId) -> io::Result<Option<Entry>> {
        match fs::metadata(self.path_of(space, id)) {
            Ok(m) => Ok(Some(Entry {
                id: *id,
                len: m.len(),
                modified: m.modified()?,
                quarantined: false,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn touch(&self, space: Space, id: &BlockId) -> io::Result<bool> {
        match File::open(self.path_of(space, id)) {
            Ok(f) => {
                f.set_modified(SystemTime::now())?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn list(&self, space: Space, visit: &mut dyn FnMut(Entry)) -> io::Result<()> {
        let (top, depth) = match space {
            Space::Chunks => (self.root.join("chunks"), 2),
            Space::Manifests => (self.root.join("manifests"), 1),
        };
        walk(&top, depth, visit)
    }

    fn remove(&self, space: Space, id: &BlockId) -> io::Result<()> {
        match fs::remove_file(self.path_of(space, id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn quarantine(&self, space: Space, id: &BlockId) -> io::Result<String> {
        let live = self.path_of(space, id);
        let hex = id.to_hex();
        let dir = live.parent().expect("object path has a parent");
        let mut target = dir.join(format!("{hex}{QUARANTINE_SUFFIX}"));
        let mut n = 0;
        while target.exists() {
            n += 1;
            target = dir.join(format!("{hex}.{n}{QUARANTINE_SUFFIX}"));
        }
        fs::rename(&live, &target)?;
        sync_dir(dir, self.sync)?;
        Ok(target.display().to_string())
    }
}

/// Lists the objects `depth` directory levels below `dir`; any unreadable directory or
/// entry fails the whole walk.
fn walk(dir: &Path, depth: u32, visit: &mut dyn FnMut(Entry)) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if depth > 0 {
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), depth - 1, visit)?;
            }
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = name.get(..64).and_then(|h| h.parse::<BlockId>().ok()) else {
            continue;
        };
        let quarantined = match &name[64..] {
            "" => false,
            rest if rest.ends_with(QUARANTINE_SUFFIX) => true,
            _ => continue,
        };
        let meta = entry.metadata()?;
        visit(Entry {
            id,
            len: meta.len(),
            modified: meta.modified()?,
            quarantined,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_touch_list_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let b = FsBackend::open(dir.path(), SyncMode::Full).unwrap();
        let id = BlockId::of(b"x");
        assert!(!b.touch(Space::Chunks, &id).unwrap());
        b.put(Space::Chunks, &id, b"bytes").unwrap();
        let hex = id.to_hex();
        assert!(
            dir.path()
                .join(format!("chunks/{}/{}/{hex}", &hex[..2], &hex[2..4]))
                .is_file()
        );
        assert_eq!(b.get(Space::Chunks, &id).unwrap(), b"bytes");
        // The same name in the other namespace is another object.
        assert!(b.stat(Space::Manifests, &id).unwrap().is_none());
        assert!(b.touch(Space::Chunks, &id).unwrap());
        let mut seen = Vec::new();
        b.list(Space::Chunks, &mut |e| seen.push(e)).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (seen[0].id, seen[0].len, seen[0].quarantined),
            (id, 5, false)
        );
        let q1 = b.quarantine(Space::Chunks, &id).unwrap();
        assert!(q1.ends_with(".bad"));
        assert!(b.stat(Space::Chunks, &id).unwrap().is_none());
        b.put(Space::Chunks, &id, b"again").unwrap();
        let q2 = b.quarantine(Space::Chunks, &id).unwrap();
        assert_ne!(q1, q2);
        let mut bad = 0;
        b.list(Space::Chunks, &mut |e| bad += u32::from(e.quarantined))
            .unwrap();
        assert_eq!(bad, 2);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn one_process_owns_a_store_and_leftover_temps_are_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let b = FsBackend::open(dir.path(), SyncMode::Off).unwrap();
        let err = FsBackend::open(dir.path(), SyncMode::Off).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(b);
        fs::write(dir.path().join("tmp/leftover.7"), b"half").unwrap();
        FsBackend::open(dir.path(), SyncMode::Off).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
