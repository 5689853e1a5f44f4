//! The filesystem backend: the store's directory layout and its durable writes.
//!
//! ```text
//! <dir>/lock                   held (flock) by the one process that owns the store
//! <dir>/chunks/ab/cd/<hex>     a chunk, named by its id (two levels of 256 fan-out)
//! <dir>/chunks/ab/cd/<hex>.bad a quarantined chunk (<hex>.<n>.bad for later ones)
//! <dir>/manifests/ab/<hex>     a manifest, named by the BLAKE3 of the file
//! <dir>/versions/<id>          the record of committed version <id> (20 decimal digits)
//! <dir>/versions/<id>.pending  a record whose commit had not reached the catalog yet
//! <dir>/catalog.sqlite         the catalog's latest snapshot, for job history
//! <dir>/tmp/                   writes in progress; emptied at open
//! ```
//!
//! A write goes temp → fsync → rename → fsync of the directory (with [`SyncMode::Full`]), so
//! every name above always holds whole bytes, and the temp file is removed if anything
//! fails on the way. If the directory's fsync fails, a name the write created is removed
//! again: an object whose name may not survive a power cut is not stored.
//!
//! Puts and touches stamp the file's modification time with the store's clock
//! ([`Steady`]: the wall clock read at open, then carried on by the monotonic clock), not
//! with the kernel's wall clock, so GC's comparisons of stamps hold whatever the wall
//! clock does.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use a3_shared::chunk::BlockId;

use super::backend::{Backend, Entry, ObjectRead, RecordEntry, RecordState, Space, Staged};
use crate::util::clock::{Clock, Steady, SystemClock};

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
    /// What puts and touches stamp.
    clock: Steady,
    /// How coarse the file system's file times are (measured at open).
    stamp_resolution: Duration,
    /// Tests: how many of the next directory fsyncs fail, as a failing disk's would.
    #[cfg(test)]
    dir_sync_failures: Arc<std::sync::atomic::AtomicU32>,
    /// Holds the flock; released when dropped.
    _lock: File,
}

const QUARANTINE_SUFFIX: &str = ".bad";
const PENDING_SUFFIX: &str = ".pending";
const CATALOG_SNAPSHOT: &str = "catalog.sqlite";

impl FsBackend {
    /// Opens (creating if needed) the store at `root`, takes its lock and clears leftover
    /// temp files of a crashed run. `ErrorKind::WouldBlock` means another process owns it.
    pub fn open(root: &Path, sync: SyncMode) -> io::Result<FsBackend> {
        FsBackend::open_with_clock(root, sync, Arc::new(SystemClock))
    }

    /// [`FsBackend::open`], reading time from `clock`.
    pub fn open_with_clock(
        root: &Path,
        sync: SyncMode,
        clock: Arc<dyn Clock>,
    ) -> io::Result<FsBackend> {
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
        for sub in ["chunks", "manifests", "versions", "tmp"] {
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
        let stamp_resolution = probe_stamp_resolution(&root.join("tmp"))?;
        Ok(FsBackend {
            root: root.to_owned(),
            location: root.display().to_string(),
            sync,
            next_tmp: AtomicU64::new(0),
            clock: Steady::new(clock),
            stamp_resolution,
            #[cfg(test)]
            dir_sync_failures: Default::default(),
            _lock: lock,
        })
    }

    /// Tests: how many of the next directory fsyncs fail (kept by the test once the
    /// backend is boxed into a store).
    #[cfg(test)]
    pub(crate) fn dir_sync_failures(&self) -> Arc<std::sync::atomic::AtomicU32> {
        self.dir_sync_failures.clone()
    }

    /// Makes the entries of `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(test)]
        if self
            .dir_sync_failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        sync_dir(dir, self.sync)
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

    /// The path of a version record.
    fn record_path(&self, version: i64, state: RecordState) -> PathBuf {
        let suffix = match state {
            RecordState::Pending => PENDING_SUFFIX,
            RecordState::Final => "",
        };
        self.root
            .join("versions")
            .join(format!("{version:020}{suffix}"))
    }

    /// A new temp file for a write that will end as `stem`.
    fn temp(&self, stem: &str) -> TempFile {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        TempFile {
            path: self.root.join("tmp").join(format!("{stem}.{n}")),
            armed: true,
        }
    }

    /// Writes `bytes` to `dest` durably: temp, fsync, rename, fsync of the directory.
    fn write_durably(&self, stem: &str, dest: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.temp(stem);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp.path)?;
        f.write_all(bytes)?;
        // GC compares this stamp with the oldest writer's start, taken from the same clock.
        f.set_modified(self.clock.now())?;
        if self.sync == SyncMode::Full {
            f.sync_all()?;
        }
        drop(f);
        self.place(tmp, dest)
    }

    /// Renames a written (and synced) temp file to `dest`, creating its directory if
    /// needed, and makes the rename durable. If that last step fails, a name the rename
    /// created is removed: the caller must not count on an object a power cut may lose.
    /// A name that was there before keeps the new file: it held the same bytes (objects
    /// are named by their content) or is replaced anyway (a record, the catalog's
    /// snapshot), and the write still fails. The store's per-object locks make the check
    /// and the rename one step.
    fn place(&self, mut tmp: TempFile, dest: &Path) -> io::Result<()> {
        let dir = dest.parent().expect("object path has a parent");
        let existed = fs::symlink_metadata(dest).is_ok();
        if let Err(e) = fs::rename(&tmp.path, dest) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            self.make_dirs(dir)?;
            fs::rename(&tmp.path, dest)?;
        }
        tmp.armed = false;
        fail::fail_point!("store-object-renamed");
        self.sync_dir(dir).map_err(|e| {
            if existed {
                return e;
            }
            match fs::remove_file(dest) {
                Ok(()) => e,
                Err(gone) => io::Error::new(
                    e.kind(),
                    format!("{e}; and removing {} again failed: {gone}", dest.display()),
                ),
            }
        })
    }

    /// Creates `dir` and any missing parent below the root, making each new entry durable.
    fn make_dirs(&self, dir: &Path) -> io::Result<()> {
        let parent = dir.parent().expect("object dirs are below the root");
        if !parent.is_dir() {
            self.make_dirs(parent)?;
        }
        match fs::create_dir(dir) {
            // A directory whose own name may not be durable is removed again, so that the
            // next write creates and syncs it anew.
            Ok(()) => self.sync_dir(parent).inspect_err(|_| {
                let _ = fs::remove_dir(dir);
            }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A staged object: a synced temp file waiting for its rename.
struct FsStaged<'a> {
    backend: &'a FsBackend,
    tmp: TempFile,
    dest: PathBuf,
}

impl Staged for FsStaged<'_> {
    fn place(self: Box<Self>) -> io::Result<()> {
        let FsStaged { backend, tmp, dest } = *self;
        backend.place(tmp, &dest)
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

    fn clock(&self) -> &Steady {
        &self.clock
    }

    fn stamp_resolution(&self) -> Duration {
        self.stamp_resolution
    }

    fn put(&self, space: Space, id: &BlockId, bytes: &[u8]) -> io::Result<()> {
        self.write_durably(&id.to_hex(), &self.path_of(space, id), bytes)
    }

    fn get(&self, space: Space, id: &BlockId) -> io::Result<Vec<u8>> {
        fs::read(self.path_of(space, id))
    }

    fn stage(
        &self,
        space: Space,
        fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<BlockId>,
    ) -> io::Result<(BlockId, Box<dyn Staged + '_>)> {
        let tmp = self.temp(space.noun());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp.path)?;
        let id = fill(&mut f)?;
        // The store's clock, as in `write_durably`.
        f.set_modified(self.clock.now())?;
        if self.sync == SyncMode::Full {
            f.sync_all()?;
        }
        let dest = self.path_of(space, &id);
        Ok((
            id,
            Box::new(FsStaged {
                backend: self,
                tmp,
                dest,
            }),
        ))
    }

    fn open(&self, space: Space, id: &BlockId) -> io::Result<Box<dyn ObjectRead>> {
        Ok(Box::new(File::open(self.path_of(space, id))?))
    }

    fn scratch(&self) -> io::Result<File> {
        // Unlinked at once: the open file is all there is, and a crash leaves nothing.
        let tmp = self.temp("scratch");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp.path)?;
        drop(tmp);
        Ok(f)
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
                f.set_modified(self.clock.now())?;
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
        self.sync_dir(dir)?;
        Ok(target.display().to_string())
    }

    fn put_record(&self, version: i64, state: RecordState, bytes: &[u8]) -> io::Result<()> {
        let stem = format!("version-{version}");
        self.write_durably(&stem, &self.record_path(version, state), bytes)
    }

    fn get_record(&self, version: i64, state: RecordState) -> io::Result<Vec<u8>> {
        fs::read(self.record_path(version, state))
    }

    fn stat_record(&self, version: i64, state: RecordState) -> io::Result<Option<RecordEntry>> {
        match fs::metadata(self.record_path(version, state)) {
            Ok(m) => Ok(Some(RecordEntry {
                version,
                state,
                modified: m.modified()?,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn finalize_record(&self, version: i64) -> io::Result<bool> {
        let pending = self.record_path(version, RecordState::Pending);
        let done = self.record_path(version, RecordState::Final);
        match fs::rename(&pending, &done) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        self.sync_dir(done.parent().expect("record path has a parent"))?;
        Ok(true)
    }

    fn list_records(&self, visit: &mut dyn FnMut(RecordEntry)) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join("versions"))? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let (digits, state) = match name.strip_suffix(PENDING_SUFFIX) {
                Some(d) => (d, RecordState::Pending),
                None => (name, RecordState::Final),
            };
            // Only names this backend writes; anything else is not a record.
            if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(version) = digits.parse() else {
                continue;
            };
            visit(RecordEntry {
                version,
                state,
                modified: entry.metadata()?.modified()?,
            });
        }
        Ok(())
    }

    fn remove_record(&self, version: i64, state: RecordState) -> io::Result<()> {
        match fs::remove_file(self.record_path(version, state)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn put_catalog_snapshot(
        &self,
        fill: &mut dyn FnMut(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let tmp = self.temp("catalog");
        fill(&tmp.path)?;
        if self.sync == SyncMode::Full {
            File::open(&tmp.path)?.sync_all()?;
        }
        fail::fail_point!("catalog-snapshot-filled");
        self.place(tmp, &self.root.join(CATALOG_SNAPSHOT))
    }

    fn catalog_snapshot(&self) -> io::Result<Option<PathBuf>> {
        let path = self.root.join(CATALOG_SNAPSHOT);
        match fs::metadata(&path) {
            Ok(_) => Ok(Some(path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
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

/// How much a file time set in `dir` loses when read back: nothing on file systems with
/// nanosecond times (ext4, XFS, btrfs, tmpfs), up to 2 s on FAT. A stamp at an odd second
/// plus 999,999,999 ns shows any truncation; a file system that rounds instead gets the
/// coarsest known resolution.
fn probe_stamp_resolution(dir: &Path) -> io::Result<Duration> {
    const COARSEST: Duration = Duration::from_secs(2);
    let set = SystemTime::UNIX_EPOCH + Duration::new(1_000_000_001, 999_999_999);
    let path = dir.join("stamp-probe");
    let f = File::create(&path)?;
    f.set_modified(set)?;
    drop(f);
    let got = fs::metadata(&path)?.modified();
    fs::remove_file(&path)?;
    Ok(match set.duration_since(got?) {
        Ok(lost) => lost.min(COARSEST),
        Err(_) => COARSEST,
    })
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
    fn records_are_written_finalized_listed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let b = FsBackend::open(dir.path(), SyncMode::Full).unwrap();
        b.put_record(7, RecordState::Pending, b"seven").unwrap();
        b.put_record(12, RecordState::Final, b"twelve").unwrap();
        assert!(
            dir.path()
                .join("versions/00000000000000000007.pending")
                .is_file()
        );
        fs::write(dir.path().join("versions/notes.txt"), b"not a record").unwrap();
        let mut seen = Vec::new();
        b.list_records(&mut |e| seen.push((e.version, e.state)))
            .unwrap();
        seen.sort_by_key(|s| s.0);
        assert_eq!(seen, [(7, RecordState::Pending), (12, RecordState::Final)]);
        assert!(b.finalize_record(7).unwrap());
        assert!(!b.finalize_record(7).unwrap());
        assert_eq!(b.get_record(7, RecordState::Final).unwrap(), b"seven");
        assert!(b.stat_record(7, RecordState::Pending).unwrap().is_none());
        b.remove_record(12, RecordState::Final).unwrap();
        b.remove_record(12, RecordState::Final).unwrap();
        assert_eq!(
            b.get_record(12, RecordState::Final).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(b.catalog_snapshot().unwrap(), None);
        b.put_catalog_snapshot(&mut |p| fs::write(p, b"one"))
            .unwrap();
        b.put_catalog_snapshot(&mut |p| fs::write(p, b"two"))
            .unwrap();
        // A failed fill leaves the previous snapshot, and no temp file.
        assert!(
            b.put_catalog_snapshot(&mut |p| {
                fs::write(p, b"half")?;
                Err(io::Error::other("disk full"))
            })
            .is_err()
        );
        let snap = b.catalog_snapshot().unwrap().unwrap();
        assert_eq!(fs::read(snap).unwrap(), b"two");
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
