//! A backup writer: answers "which blocks do you have", stores verified chunks, and
//! commits a version in the order that keeps the store consistent (see the module
//! overview). Dropping a session without committing aborts it: nothing becomes visible.

use std::io;
use std::sync::Mutex;

use a3_shared::chunk::{self, BlockId};
use a3_shared::proto::IdCache;

use super::manifest::{ManifestError, ManifestWriter};
use super::records::record_of;
use super::spool::DiskBlocks;
use super::{Lease, Space, Store, StoreError, VersionId};
use crate::catalog::versions::VersionDiskRow;

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The chunk was written; this many bytes are now stored.
    New {
        /// Bytes written.
        bytes: u64,
    },
    /// The store already had it.
    Existing,
}

/// A backup in progress, holding a writer lease. `Send + Sync`: data streams share it.
pub struct BackupSession {
    pub(super) store: Store,
    lease: u64,
    subject: String,
    disks: Mutex<Vec<(String, DiskBlocks)>>,
}

impl Store {
    /// Starts a backup of `subject`, registering its writer lease.
    pub fn begin_backup(&self, subject: &str) -> Result<BackupSession, StoreError> {
        if subject.trim().is_empty() {
            return Err(StoreError::Session {
                subject: subject.to_owned(),
                reason: "the subject name is empty".into(),
            });
        }
        // Its start is read under the registry's lock, as GC reads its own: a lease GC did
        // not see began after GC's start, so all it stamps is newer than GC's cutoff.
        let mut leases = self.leases();
        let clock = self.inner.backend.clock();
        leases.next += 1;
        let lease = leases.next;
        leases.live.insert(
            lease,
            Lease {
                subject: subject.to_owned(),
                started: clock.now(),
                last_active: clock.mono(),
                committing: false,
            },
        );
        Ok(BackupSession {
            store: self.clone(),
            lease,
            subject: subject.to_owned(),
            disks: Mutex::new(Vec::new()),
        })
    }
}

impl BackupSession {
    /// What is being backed up.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// For each id, whether the store has that chunk (and will keep it for this session:
    /// a present chunk is touched, so GC spares it). Quarantined chunks answer `false`.
    pub fn has_chunks(&self, ids: &[BlockId]) -> Result<Vec<bool>, StoreError> {
        self.renew()?;
        let backend = &self.store.inner.backend;
        ids.iter()
            .map(|id| {
                let _g = self.store.stripe(id);
                backend
                    .touch(Space::Chunks, id)
                    .map_err(|e| self.store.io(|| format!("checking chunk {id}"), e))
            })
            .collect()
    }

    /// Stores an encoded chunk after checking that it decodes to `id`; a chunk that does
    /// not is refused. Durable when this returns.
    pub fn insert_chunk(&self, id: &BlockId, encoded: &[u8]) -> Result<Inserted, StoreError> {
        self.renew()?;
        chunk::decode(id, encoded).map_err(|source| StoreError::Refused {
            store: self.store.location().to_owned(),
            source,
        })?;
        let backend = &self.store.inner.backend;
        let _g = self.store.stripe(id);
        if backend
            .touch(Space::Chunks, id)
            .map_err(|e| self.store.io(|| format!("checking chunk {id}"), e))?
        {
            return Ok(Inserted::Existing);
        }
        backend
            .put(Space::Chunks, id, encoded)
            .map_err(|e| self.store.io(|| format!("writing chunk {id}"), e))?;
        Ok(Inserted::New {
            bytes: encoded.len() as u64,
        })
    }

    /// Adds a disk to the version being built: its block list, in memory or spooled.
    pub fn add_disk(&self, name: &str, blocks: impl Into<DiskBlocks>) -> Result<(), StoreError> {
        let blocks = blocks.into();
        let fail = |reason: String| StoreError::Session {
            subject: self.subject.clone(),
            reason,
        };
        if name.trim().is_empty() {
            return Err(fail("a disk name is empty".into()));
        }
        let g = blocks.geometry();
        // The same checks as the manifest writer's, before anything is committed.
        ManifestWriter::new(io::sink(), g.size, g.block_size)
            .map_err(|e| fail(format!("disk '{name}': {e}")))?;
        if blocks.len() != g.blocks() {
            return Err(fail(format!(
                "disk '{name}': {} blocks listed, but a {}-byte disk at {}-byte blocks has {}",
                blocks.len(),
                g.size,
                g.block_size,
                g.blocks()
            )));
        }
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        if disks.iter().any(|(n, _)| n == name) {
            return Err(fail(format!("disk '{name}' was added twice")));
        }
        disks.push((name.to_owned(), blocks));
        Ok(())
    }

    /// Commits the version: checks every referenced chunk is present, writes the manifests
    /// durably, then inserts the version row, writing the version's record inside that
    /// transaction. Fails, committing nothing, if the lease was lost, a chunk is missing or
    /// the record cannot be written.
    pub fn commit(self, metadata: serde_json::Value) -> Result<VersionId, StoreError> {
        let fail = |reason: String| StoreError::Session {
            subject: self.subject.clone(),
            reason,
        };
        let disks = std::mem::take(&mut *self.disks.lock().unwrap_or_else(|p| p.into_inner()));
        if disks.is_empty() {
            return Err(fail("no disk was added".into()));
        }
        self.set_committing()?;
        let store = &self.store;
        let backend = &store.inner.backend;
        // Each disk's list is streamed twice (check, then write), in bounded memory: the
        // ids checked are a bounded cache, and touching a chunk twice is harmless.
        let mut checked = IdCache::default();
        for (name, d) in &disks {
            for entry in d.entries() {
                let (index, block) = entry.map_err(|e| {
                    store.io(|| format!("reading the block list of disk '{name}'"), e)
                })?;
                let Some(id) = block else { continue };
                if checked.contains(&id.0) {
                    continue;
                }
                let _g = store.stripe(&id);
                let present = backend
                    .touch(Space::Chunks, &id)
                    .map_err(|e| store.io(|| format!("checking chunk {id}"), e))?;
                if !present {
                    return Err(fail(format!(
                        "disk '{name}': the block at offset {} (chunk {id}) is not in the \
                         store (never sent, quarantined, or collected); run the backup again \
                         without a CBT bitmap",
                        index * u64::from(d.geometry().block_size)
                    )));
                }
                checked.insert(id.0);
            }
        }
        let mut rows = Vec::with_capacity(disks.len());
        for (name, d) in &disks {
            let g = d.geometry();
            let (digest, staged) = backend
                .stage(Space::Manifests, &mut |out| {
                    let mut w = ManifestWriter::new(out, g.size, g.block_size).map_err(into_io)?;
                    for entry in d.entries() {
                        w.push(entry?.1).map_err(into_io)?;
                    }
                    Ok(w.finish().map_err(into_io)?.0)
                })
                .map_err(|e| store.io(|| format!("writing the manifest of disk '{name}'"), e))?;
            // Under the digest's lock: GC may be about to remove an identical orphan.
            let _g = store.stripe(&digest);
            staged
                .place()
                .map_err(|e| store.io(|| format!("writing the manifest of disk '{name}'"), e))?;
            rows.push(VersionDiskRow {
                disk: name.clone(),
                size: g.size,
                block_size: g.block_size,
                manifest: digest.to_hex(),
            });
        }
        fail::fail_point!("commit-manifests-written");
        let created_at = crate::util::clock::unix_now();
        let metadata = metadata.to_string();
        let id = store.inner.catalog.version_insert(
            &self.subject,
            created_at,
            &metadata,
            &rows,
            |id| {
                store.write_pending_record(&record_of(
                    id,
                    &self.subject,
                    created_at,
                    &metadata,
                    &rows,
                ))?;
                fail::fail_point!("commit-record-pending");
                Ok::<(), StoreError>(())
            },
        )?;
        fail::fail_point!("commit-catalog-committed");
        store.finalize_record(id);
        tracing::info!(subject = %self.subject, version = id, disks = rows.len(), "version committed");
        Ok(VersionId(id))
    }

    /// Marks the session active, so GC does not revoke its lease as idle; fails if GC
    /// already did. Every store call of the session does this; a job calls it too while
    /// it makes progress without one (the agent reading zeros or unchanged blocks, the
    /// next disk of a VM being attached).
    pub fn renew(&self) -> Result<(), StoreError> {
        let now = self.store.inner.backend.clock().mono();
        match self.store.leases().live.get_mut(&self.lease) {
            Some(l) => {
                l.last_active = now;
                Ok(())
            }
            None => Err(self.lease_lost()),
        }
    }

    fn set_committing(&self) -> Result<(), StoreError> {
        match self.store.leases().live.get_mut(&self.lease) {
            Some(l) => {
                l.committing = true;
                Ok(())
            }
            None => Err(self.lease_lost()),
        }
    }

    fn lease_lost(&self) -> StoreError {
        StoreError::Session {
            subject: self.subject.clone(),
            reason: format!(
                "the writer lease was lost (no progress for over {:?} while GC ran), so \
                 chunks it relied on may be gone; run the backup again",
                self.store.inner.options.lease_idle_limit
            ),
        }
    }
}

/// A manifest write's failure as I/O, keeping the kind (a full disk stays a full disk).
fn into_io(e: ManifestError) -> io::Error {
    match e {
        ManifestError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl Drop for BackupSession {
    fn drop(&mut self) {
        self.store.leases().live.remove(&self.lease);
    }
}
