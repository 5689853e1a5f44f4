//! What the store needs from the place its bytes live: a small object interface, so that an
//! object-store backend can stand in for the filesystem later.
//!
//! Objects are named by a 32-byte digest in one of two namespaces that never mix: chunks
//! (named by the BLAKE3 of their plaintext) and manifests (named by the BLAKE3 of the file).
//! A backend gives four guarantees the store's invariants rest on:
//! - `put` is atomic and durable: after it returns the object is whole and survives a
//!   crash; after a failure or crash it is absent or whole, never torn;
//! - `touch` and `put` set the object's modification time to now (GC's clock);
//! - `list` either visits every object or fails: GC deletes nothing from a partial listing;
//! - `quarantine` moves an object aside, never deletes it, and a quarantined object is no
//!   longer visible to `get`, `stat` or `touch`.
//!
//! Locking between callers is the store's job, not the backend's.

use std::io;
use std::time::SystemTime;

use a3_shared::chunk::BlockId;

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
    /// Its last `put` or `touch`.
    pub modified: SystemTime,
    /// Moved aside by `quarantine` (only listings show these).
    pub quarantined: bool,
}

/// Where the store's objects live.
pub trait Backend: Send + Sync + 'static {
    /// Where, for messages (a directory, a bucket URL).
    fn location(&self) -> &str;

    /// Stores `bytes` as `id`, atomically and durably, replacing any live object of that
    /// name.
    fn put(&self, space: Space, id: &BlockId, bytes: &[u8]) -> io::Result<()>;

    /// Reads a live object; `ErrorKind::NotFound` when absent.
    fn get(&self, space: Space, id: &BlockId) -> io::Result<Vec<u8>>;

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
}
