//! The backup store: deduplicated chunks, disk manifests and versions (DESIGN.md §4).
//!
//! # Who does what
//! - [`backend`]: the small object interface the store writes through ([`Backend`]);
//!   [`fs`] is the filesystem implementation and its directory layout.
//! - [`manifest`]: the disk manifest format (block ids with zero marks, checksummed),
//!   written and read as a stream.
//! - [`spool`]: a backup's block list while it is built (a scratch file, not memory), and
//!   the streamed reads of manifests.
//! - [`session`]: a backup writer ([`BackupSession`]): dedup answers, verified inserts,
//!   the commit, and the writer leases GC respects.
//! - [`reader`]: reads that verify every chunk against its id.
//! - [`verify`]: the verify walk, which names bad blocks and quarantines bad chunks.
//! - [`gc`]: mark and sweep.
//! - [`stats`]: logical and stored bytes, dedup ratio.
//! - [`records`]: the version records, the store's own description of each committed
//!   version, and the catalog's snapshot in the store.
//! - [`rebuild`]: the catalog's versions recreated from the records
//!   (`a3-server store rebuild-catalog`).
//! - Version rows live in the catalog (`catalog::versions`); the records make the store
//!   self-describing, so losing the catalog loses no version.
//!
//! # Formats
//! A chunk is a block encoded by `a3_shared::chunk` (header, raw or zstd payload), named by
//! the BLAKE3-256 of its plaintext. A manifest is one disk of one version, named by the
//! BLAKE3 of its file. A version record (`a3_shared::version_record`, checksummed like a
//! manifest) holds what the catalog's version and disk rows hold, and is named by the
//! version's id. Chunks, manifests and records live in separate namespaces: bytes of a
//! disk block are never read as metadata. Magic numbers are in `a3_shared::formats`.
//!
//! # Commit order
//! A version becomes visible only when all of it is durable:
//! 1. every chunk is durable when `insert_chunk` returns (temp, fsync, rename, fsync dir;
//!    if the directory's fsync fails, the chunk's name is removed again and the insert
//!    fails: a chunk whose name a power cut may lose is never counted as stored);
//! 2. at commit, every chunk the manifests name is checked present (and touched, see GC);
//! 3. each manifest is written the same durable way, streamed from the block list;
//! 4. one catalog transaction (SQLite, `synchronous=FULL`) inserts the version and its
//!    disks; inside it, once the catalog has given the version its id and before it
//!    commits, the version record is written the same durable way under a pending name;
//! 5. after the commit, the record is renamed to its final name.
//!
//! A crash before 4 commits leaves no version, only unreferenced chunks and manifests
//! (and perhaps a pending record), which GC reclaims. A crash between 4 and 5 leaves a
//! committed version whose record is still pending; GC and start-up finalize it
//! ([`records`] has the rules). A failed write (a full disk) removes its temp file and
//! leaves the store as it was.
//!
//! # GC and the writer leases
//! Every backup session holds a lease, registered in the store with its start. GC:
//! 1. revokes leases without progress for longer than [`StoreOptions::lease_idle_limit`]
//!    (such a session then fails at its next call or at commit) and takes the cutoff: the
//!    older of its own start and the oldest live lease's start, minus how coarse the
//!    backend's stamps are ([`Backend::stamp_resolution`]: nothing on ext4 or XFS, so the
//!    chunks of a failed run are garbage at once, which a full disk needs);
//! 2. marks: reads every version's manifests; one unreadable manifest aborts GC;
//! 3. lists every chunk and manifest; an incomplete listing aborts GC, deleting nothing;
//! 4. sweeps what is unmarked *and* stamped (last written or touched) before the cutoff.
//!
//! Before all of that, GC compares the version records with the catalog: a committed
//! version in the store that the catalog lacks (a lost or older catalog) makes GC refuse,
//! deleting nothing ([`StoreError::CatalogBehind`]), since its chunks would look unused.
//! The pending record of a commit that never committed does not count; GC removes it once
//! it is older than the cutoff.
//!
//! A live session can only reference chunks it inserted or was told exist (`has_chunks`
//! touches them), plus its base version's chunks, which that committed version marks; its
//! commit touches all of them again, so each is either stamped after any cutoff or already
//! gone, in which case the commit fails instead of naming a missing chunk.
//!
//! ## The store's time
//! Every time above (a lease's start, GC's start, an object's stamp) is read from one
//! clock, the backend's [`Backend::clock`], never from the wall clock: the wall clock read
//! once when the store opens, then carried on by the monotonic clock
//! ([`crate::util::clock::Steady`]). The rule rests on one fact: a stamp written after a
//! lease began is not older than the lease's start. Stamps and starts both come from that
//! clock, which never steps back, and a lease's start is read under the same lock as GC's
//! (a lease GC did not see began after GC's start). So a step of the wall clock, either
//! way and at any moment, changes nothing: no object a live session references is older
//! than the cutoff. The cutoff's margin only covers file systems whose file times are
//! coarser than the clock. (A generation counter per object would need state per object; the file's
//! time is that state already, written with the put or the touch at no extra I/O. Only
//! the clock that filled it was wrong.)
//!
//! Nothing of it is persisted, and need not be: one process owns the store (the flock)
//! and no session outlives it, so after a restart the objects a session can reference are
//! those it stamps itself. Stamps an earlier process left may lie ahead of the new clock
//! (the wall clock was ahead then, or the store opened while it was behind): GC moves the
//! clock forward to the newest stamp among the unused objects it lists
//! ([`crate::util::clock::Steady::catch_up`]; moving forward keeps every later stamp at or
//! after every earlier start), so such objects wait one more GC, not until the wall clock
//! gets there. An object stamped so far ahead that no clock could run on from it is kept.
//!
//! A session idle for too long must not hold GC back for ever. Idleness is judged by the
//! monotonic clock, which the catch-up does not move (else a catch-up would revoke every
//! lease at once). A session renews its lease with
//! each store call; a job renews it too while it makes progress without one: the data
//! port on each progress report that shows the agent moved on (reading zeros, taking
//! unchanged blocks from the base), and a VM backup before each of its disks (one lease
//! covers every disk of the VM). A job that stops moving loses its lease after the limit.
//!
//! # Locking, and what may run together
//! - One process owns a store directory (an flock on `<dir>/lock`); `store
//!   rebuild-catalog` takes it too, so it never runs beside the A3.
//! - Backup sessions, reads, restores, verify and stats all run concurrently.
//! - One GC at a time; it runs alongside all of the above.
//! - Per object, a striped mutex orders the few steps that must not interleave: GC's
//!   "still old? delete", a session's touch or insert (or its commit writing a manifest
//!   identical to an orphan one), and verify's "still bad? quarantine".
//! - A quarantined chunk (renamed `.bad`, never deleted) is invisible to `has_chunks`, so
//!   the next backup uploads it again. A CBT incremental that takes the block from its base
//!   manifest without asking fails at commit instead, naming the block.
//!
//! # Durability setting
//! [`StoreOptions::sync`]: [`SyncMode::Full`] (the default) fsyncs every object and its
//! directory; [`SyncMode::Off`] keeps writes atomic but not power-cut safe.
//!
//! All calls block on disk I/O; async callers use `spawn_blocking`.

pub mod backend;
pub mod fs;
pub mod gc;
pub mod manifest;
pub mod reader;
pub mod rebuild;
pub mod records;
pub mod session;
pub mod spool;
pub mod stats;
pub mod verify;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use a3_shared::chunk::BlockId;
use serde::{Deserialize, Serialize};

use crate::catalog::versions::VersionRow;
use crate::catalog::{Catalog, CatalogError};
pub use backend::{Backend, Entry, ObjectRead, RecordEntry, RecordState, Space, Staged};
pub use fs::{FsBackend, SyncMode};
pub use gc::GcReport;
pub use manifest::{DiskManifest, ManifestError};
pub use rebuild::{RebuildReport, RebuiltVersion, SkippedRecord};
pub use records::RecordCheck;
pub use session::{BackupSession, Inserted};
pub use spool::{BaseSpool, DiskBlocks, DiskSpool};
pub use stats::StoreStats;
pub use verify::{
    BadBlock, BadManifest, BadOrphan, BadRecord, VerifyProgress, VerifyReport, VerifyScope,
};

/// Chunk-lock stripes: enough that parallel streams rarely share one.
const STRIPES: usize = 64;

/// Settings of a store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// How writes reach the disk.
    pub sync: SyncMode,
    /// A writer that makes no progress (no store call, no renewal) for this long, by the
    /// monotonic clock, loses its lease at the next GC and fails at commit.
    pub lease_idle_limit: Duration,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            sync: SyncMode::Full,
            lease_idle_limit: Duration::from_secs(60 * 60),
        }
    }
}

/// A committed version's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionId(pub i64);

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for VersionId {
    type Err = String;

    fn from_str(s: &str) -> Result<VersionId, String> {
        s.parse()
            .map(VersionId)
            .map_err(|_| format!("'{s}' is not a version id (a number, as `versions` lists)"))
    }
}

/// A committed version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Its id.
    pub id: VersionId,
    /// What was backed up (a disk's name now, a VM later).
    pub subject: String,
    /// Unix seconds of the commit.
    pub created_at: i64,
    /// The caller's metadata (e.g. the VM record), as given at commit.
    pub metadata: serde_json::Value,
    /// Its disks, by name.
    pub disks: Vec<DiskInfo>,
}

/// One disk of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The disk's name within the version.
    pub name: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
}

/// Store failures. Each names the store and the object, then the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error.
    #[error("store {store}: {what}: {source}")]
    Io {
        /// The store's location.
        store: String,
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The filesystem is full; nothing was half-written.
    #[error("store {store}: disk full while {what}: free space or run `a3-server store gc`")]
    DiskFull {
        /// The store's location.
        store: String,
        /// What was being written.
        what: String,
    },
    /// Another process owns the store.
    #[error(
        "store {store}: in use by another process (lock {store}/lock); stop the other \
         a3-server or give this one another --state-dir"
    )]
    Locked {
        /// The store's location.
        store: String,
    },
    /// An uploaded chunk does not decode to its id: refused, nothing stored.
    #[error("store {store}: refused an uploaded chunk: {source}")]
    Refused {
        /// The store's location.
        store: String,
        /// Why.
        source: a3_shared::chunk::ChunkError,
    },
    /// A stored chunk failed its check on read; it was quarantined.
    #[error(
        "store {store}: chunk {chunk} is corrupt ({reason}); quarantined as {quarantined}; \
         `a3-server store verify` lists the versions that use it, and the next backup of \
         the disk stores it again"
    )]
    Corrupt {
        /// The store's location.
        store: String,
        /// The chunk.
        chunk: BlockId,
        /// What is wrong with it.
        reason: String,
        /// Where it was moved.
        quarantined: String,
    },
    /// A chunk a manifest names is not in the store.
    #[error(
        "store {store}: chunk {chunk} is missing (quarantined or lost); run `a3-server \
         store verify` to list the versions that use it"
    )]
    Missing {
        /// The store's location.
        store: String,
        /// The chunk.
        chunk: BlockId,
    },
    /// A stored manifest cannot be read.
    #[error("store {store}: version {version} disk '{disk}': manifest {digest}: {reason}")]
    BadManifest {
        /// The store's location.
        store: String,
        /// The version.
        version: VersionId,
        /// The disk.
        disk: String,
        /// The manifest's name.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// No such version.
    #[error("version {0} does not exist; `a3-server disk versions` lists them")]
    NoSuchVersion(VersionId),
    /// The version has no disk of that name.
    #[error("version {version} has no disk '{disk}'; its disks: {}", disks.join(", "))]
    NoSuchDisk {
        /// The version.
        version: VersionId,
        /// The disk asked for.
        disk: String,
        /// The disks it has.
        disks: Vec<String>,
    },
    /// A backup session cannot go on; nothing of it was committed.
    #[error("backup of '{subject}': {reason}; nothing was committed")]
    Session {
        /// What was being backed up.
        subject: String,
        /// What went wrong, and the fix.
        reason: String,
    },
    /// A GC is already running.
    #[error("store {store}: a GC is already running; wait for it to finish")]
    GcRunning {
        /// The store's location.
        store: String,
    },
    /// GC could not see everything, so it deleted nothing.
    #[error("store {store}: GC aborted, nothing was deleted: {reason}")]
    GcAborted {
        /// The store's location.
        store: String,
        /// What could not be read.
        reason: String,
    },
    /// The store holds committed versions the catalog lacks: the catalog was lost or
    /// replaced by an older copy. GC deletes nothing then: their chunks would look unused.
    #[error(
        "store {store}: {missing} committed version(s) in the store are missing from the \
         catalog (the first is version {first}): the catalog was lost or replaced by an \
         older copy; nothing was deleted; stop the A3 and run `a3-server store \
         rebuild-catalog --state-dir {state_dir}`"
    )]
    CatalogBehind {
        /// The store's location.
        store: String,
        /// How many versions the catalog lacks.
        missing: u64,
        /// The lowest of their ids.
        first: i64,
        /// The A3's state dir, for the command.
        state_dir: String,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl StoreError {
    /// Whether the error means "no such version or disk" (for a 404).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::NoSuchVersion(_) | StoreError::NoSuchDisk { .. }
        )
    }
}

/// A writer's lease.
struct Lease {
    subject: String,
    /// Store time (the backend's clock) when it began.
    started: SystemTime,
    /// Monotonic time of its last renewal.
    last_active: Instant,
    /// Set while commit runs: GC does not revoke it then.
    committing: bool,
}

#[derive(Default)]
struct Leases {
    next: u64,
    live: HashMap<u64, Lease>,
}

struct Inner {
    backend: Box<dyn Backend>,
    catalog: Catalog,
    options: StoreOptions,
    leases: Mutex<Leases>,
    stripes: Vec<Mutex<()>>,
    /// Orders a commit's "no final record under this id? write the pending one" and
    /// renames against GC's "still an old orphan? remove it".
    records: Mutex<()>,
    gc: Mutex<()>,
}

/// The store. Cheap to clone; `Send + Sync`; every call blocks.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (creating if needed) the filesystem store at `dir`, with default options.
    pub fn open(dir: &Path, catalog: Catalog) -> Result<Store, StoreError> {
        Store::open_with(dir, catalog, StoreOptions::default())
    }

    /// Opens the filesystem store at `dir`.
    pub fn open_with(
        dir: &Path,
        catalog: Catalog,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        let backend = Store::lock_dir(dir, options.sync)?;
        Ok(Store::with_backend(Box::new(backend), catalog, options))
    }

    /// Opens the filesystem store at `dir` and takes its lock, without a catalog yet: a
    /// tool that must not run beside the A3 takes the lock before it touches the catalog.
    pub fn lock_dir(dir: &Path, sync: SyncMode) -> Result<FsBackend, StoreError> {
        let store = dir.display().to_string();
        FsBackend::open(dir, sync).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => StoreError::Locked {
                store: store.clone(),
            },
            _ => io_error(&store, "opening".into(), e),
        })
    }

    /// A store over any backend.
    pub fn with_backend(
        backend: Box<dyn Backend>,
        catalog: Catalog,
        options: StoreOptions,
    ) -> Store {
        Store {
            inner: Arc::new(Inner {
                backend,
                catalog,
                options,
                leases: Mutex::new(Leases::default()),
                stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
                records: Mutex::new(()),
                gc: Mutex::new(()),
            }),
        }
    }

    /// Where the store lives, for messages.
    pub fn location(&self) -> &str {
        self.inner.backend.location()
    }

    /// One version.
    pub fn version(&self, id: VersionId) -> Result<VersionInfo, StoreError> {
        let row = self
            .inner
            .catalog
            .version_get(id.0)?
            .ok_or(StoreError::NoSuchVersion(id))?;
        Ok(version_info(row))
    }

    /// The versions of `subject` (or of all subjects), oldest first.
    pub fn versions(&self, subject: Option<&str>) -> Result<Vec<VersionInfo>, StoreError> {
        Ok(self
            .inner
            .catalog
            .version_list(subject)?
            .into_iter()
            .map(version_info)
            .collect())
    }

    /// The newest committed version of `subject`: the base of its next incremental.
    pub fn latest_version(&self, subject: &str) -> Result<Option<VersionInfo>, StoreError> {
        Ok(self
            .inner
            .catalog
            .version_latest(subject)?
            .map(version_info))
    }

    /// The manifest of one disk of a version, checked, whole in memory (small uses; a
    /// restore streams it with [`Store::open_manifest`]).
    pub fn manifest(&self, version: VersionId, disk: &str) -> Result<DiskManifest, StoreError> {
        let digest = self.manifest_digest(version, disk)?;
        self.load_manifest(version, disk, &digest)
    }

    /// The name of one disk's manifest.
    fn manifest_digest(&self, version: VersionId, disk: &str) -> Result<String, StoreError> {
        let row = self
            .inner
            .catalog
            .version_get(version.0)?
            .ok_or(StoreError::NoSuchVersion(version))?;
        let Some(d) = row.disks.iter().find(|d| d.disk == disk) else {
            return Err(StoreError::NoSuchDisk {
                version,
                disk: disk.to_owned(),
                disks: row.disks.iter().map(|d| d.disk.clone()).collect(),
            });
        };
        Ok(d.manifest.clone())
    }

    /// Reads and checks a manifest by its digest.
    fn load_manifest(
        &self,
        version: VersionId,
        disk: &str,
        digest: &str,
    ) -> Result<DiskManifest, StoreError> {
        let bad = |reason: String| StoreError::BadManifest {
            store: self.location().to_owned(),
            version,
            disk: disk.to_owned(),
            digest: digest.to_owned(),
            reason,
        };
        let id: BlockId = digest.parse().map_err(|e| bad(format!("{e}")))?;
        let bytes = match self.inner.backend.get(Space::Manifests, &id) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad("missing from the store".into()));
            }
            Err(e) => return Err(bad(format!("unreadable: {e}"))),
        };
        if BlockId::of(&bytes) != id {
            return Err(bad("content does not match its name (damaged)".into()));
        }
        DiskManifest::decode(&bytes).map_err(|e| bad(e.to_string()))
    }

    fn stripe(&self, id: &BlockId) -> MutexGuard<'_, ()> {
        self.inner.stripes[usize::from(id.0[0]) % STRIPES]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn records_lock(&self) -> MutexGuard<'_, ()> {
        self.inner.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leases(&self) -> MutexGuard<'_, Leases> {
        self.inner.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wraps a backend error, telling a full disk apart.
    fn io(&self, what: impl FnOnce() -> String, e: std::io::Error) -> StoreError {
        io_error(self.location(), what(), e)
    }
}

fn io_error(store: &str, what: String, e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            StoreError::DiskFull {
                store: store.to_owned(),
                what,
            }
        }
        _ => StoreError::Io {
            store: store.to_owned(),
            what,
            source: e,
        },
    }
}

fn version_info(row: VersionRow) -> VersionInfo {
    VersionInfo {
        id: VersionId(row.id),
        subject: row.subject,
        created_at: row.created_at,
        // The store wrote this text from a `Value`; anything else is kept as a string.
        metadata: serde_json::from_str(&row.metadata)
            .unwrap_or(serde_json::Value::String(row.metadata)),
        disks: row
            .disks
            .into_iter()
            .map(|d| DiskInfo {
                name: d.disk,
                size: d.size,
                block_size: d.block_size,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
