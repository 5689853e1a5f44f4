//! What the store needs from the place its bytes live: a small object interface, so that an
//! object-store backend can stand in for the filesystem later.
//!
//! Objects are named by a 32-byte digest in one of two namespaces that never mix: chunks
//! (named by the BLAKE3 of their plaintext) and manifests (named by the BLAKE3 of the file).
//! A third namespace holds version records, named by their version id, each under a
//! pending or a final name ([`RecordState`]); and one more object is the catalog's latest
//! snapshot. A backend gives these guarantees the store's invariants rest on:
//! - `put`, `put_record` and `put_catalog_snapshot` are atomic and durable: after one
//!   returns the object is whole and survives a crash; after a failure or crash it is
//!   absent or whole (or the previous one), never torn; a put that fails leaves no object
//!   that was not there before (or whose name may not survive a power cut); so is a
//!   `stage`d object once placed, and one never placed leaves nothing;
//! - `finalize_record` is an atomic, durable rename of a pending record to its final name;
//! - `touch`, `put` and `put_record` stamp the object (its modification time) with
//!   [`Backend::clock`]'s now, a time that never steps back while the backend is open:
//!   GC compares the stamps with the writers' starts, read from the same clock;
//! - `list` and `list_records` either visit every object or fail: GC deletes nothing from
//!   a partial listing;
//! - `quarantine` moves an object aside, never deletes it, and a quarantined object is no
//!   longer visible to `get`, `stat` or `touch`.
//!
//! Locking between callers is the store's job, not the backend's.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use a3_shared::chunk::BlockId;

use crate::util::clock::Steady;

/// A namespace of objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Encoded blocks.
    Chunks,
    /// Disk manifests.
    Manifests,
}

impl Space {
    /// For messages.
    pub fn noun(self) -> &'static str {
        match self {
            Space::Chunks => "chunk",
            Space::Manifests => "manifest",
        }
    }
}

/// An object, as a listing or a stat sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub id: BlockId,
    /// Its size in bytes.
    pub len: u64,
    /// Its last `put` or `touch`, by [`Backend::clock`].
    pub modified: SystemTime,
    /// Moved aside by `quarantine` (only listings show these).
    pub quarantined: bool,
}

/// Which name a version record has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// Written by a commit whose catalog transaction had not committed yet.
    Pending,
    /// Its version is committed.
    Final,
}

/// A version record, as a listing or a stat sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordEntry {
    /// The version's id.
    pub version: i64,
    /// Pending or final.
    pub state: RecordState,
    /// Its last write, by [`Backend::clock`].
    pub modified: SystemTime,
}

/// A live object opened for reading in place (a manifest may be gigabytes).
pub trait ObjectRead: io::Read + io::Seek + Send {}
impl<T: io::Read + io::Seek + Send> ObjectRead for T {}

/// An object written and made durable under a temporary name, not yet visible. Placing it
/// makes it live (atomically, durably); dropping it unplaced removes it.
pub trait Staged: Send {
    /// Makes the object live under its name.
    fn place(self: Box<Self>) -> io::Result<()>;
}

/// Where the store's objects live.
pub trait Backend: Send + Sync + 'static {
    /// Where, for messages (a directory, a bucket URL).
    fn location(&self) -> &str;

    /// The clock objects are stamped with, and GC and the writer leases read: the
    /// store's time (the module overview of `store` says why).
    fn clock(&self) -> &Steady;

    /// How much earlier than the clock's time a stamp can read back (file systems whose
    /// file times are coarser than the clock truncate them): GC keeps that much more.
    fn stamp_resolution(&self) -> std::time::Duration;

    /// Stores `bytes` as `id`, atomically and durably, replacing any live object of that
    /// name.
    fn put(&self, space: Space, id: &BlockId, bytes: &[u8]) -> io::Result<()>;

    /// Reads a live object; `ErrorKind::NotFound` when absent.
    fn get(&self, space: Space, id: &BlockId) -> io::Result<Vec<u8>>;

    /// Writes an object whose name is known only once written (a manifest, named by the
    /// digest of its bytes): `fill` streams the bytes and returns the name. The object is
    /// durable but invisible until the caller places it (under whatever lock it needs).
    fn stage(
        &self,
        space: Space,
        fill: &mut dyn FnMut(&mut dyn io::Write) -> io::Result<BlockId>,
    ) -> io::Result<(BlockId, Box<dyn Staged + '_>)>;

    /// Opens a live object for reading in place; `ErrorKind::NotFound` when absent.
    fn open(&self, space: Space, id: &BlockId) -> io::Result<Box<dyn ObjectRead>>;

    /// A scratch file for a job's working data (a backup's block list), on the store's
    /// disk; it is never an object and vanishes when closed, or at the next open after a
    /// crash.
    fn scratch(&self) -> io::Result<std::fs::File>;

    /// A live object's entry, or `None`.
    fn stat(&self, space: Space, id: &BlockId) -> io::Result<Option<Entry>>;

    /// Sets a live object's modification time to now; `false` when absent.
    fn touch(&self, space: Space, id: &BlockId) -> io::Result<bool>;

    /// Visits every object, quarantined ones included. An `Err` means the listing is
    /// incomplete.
    fn list(&self, space: Space, visit: &mut dyn FnMut(Entry)) -> io::Result<()>;

    /// Deletes a live object (absent is fine).
    fn remove(&self, space: Space, id: &BlockId) -> io::Result<()>;

    /// Moves a live object aside for a human to inspect; returns where it went.
    fn quarantine(&self, space: Space, id: &BlockId) -> io::Result<String>;

    /// Stores the record of `version` under the name of `state`, atomically and durably,
    /// replacing a record of that name.
    fn put_record(&self, version: i64, state: RecordState, bytes: &[u8]) -> io::Result<()>;

    /// Reads a record; `ErrorKind::NotFound` when absent.
    fn get_record(&self, version: i64, state: RecordState) -> io::Result<Vec<u8>>;

    /// A record's entry, or `None`.
    fn stat_record(&self, version: i64, state: RecordState) -> io::Result<Option<RecordEntry>>;

    /// Renames the pending record of `version` to its final name, durably, replacing a
    /// final one; `false` when there is no pending record.
    fn finalize_record(&self, version: i64) -> io::Result<bool>;

    /// Visits every record. An `Err` means the listing is incomplete.
    fn list_records(&self, visit: &mut dyn FnMut(RecordEntry)) -> io::Result<()>;

    /// Deletes a record (absent is fine).
    fn remove_record(&self, version: i64, state: RecordState) -> io::Result<()>;

    /// Replaces the catalog's snapshot, atomically and durably: `fill` writes the new one
    /// into the (new, absent) file at the path it is given.
    fn put_catalog_snapshot(&self, fill: &mut dyn FnMut(&Path) -> io::Result<()>)
    -> io::Result<()>;

    /// The catalog's latest snapshot, if one was written.
    fn catalog_snapshot(&self) -> io::Result<Option<PathBuf>>;
}
