//! Version records: the store's own description of each committed version (subject,
//! commit time, metadata, and each disk with its manifest), in the format of
//! `a3_shared::version_record`, so that the catalog can be rebuilt from the store alone
//! ([`Store::rebuild_catalog`]).
//!
//! # Pending, then final
//! A record is named by its version id, which the catalog gives inside the commit's
//! transaction (`Catalog::version_insert`). The commit writes it under a *pending* name
//! there, durably, before the transaction commits; once the row is committed it renames
//! it to its *final* name. So:
//! - a final record always has its catalog row, unless the catalog was lost or replaced:
//!   GC refuses to run then ([`StoreError::CatalogBehind`]) and `serve` refuses to start
//!   on an empty catalog, both naming the rebuild command;
//! - a pending record whose id has a catalog row belongs to a commit that crashed (or
//!   failed to rename) after its transaction: GC and start-up finalize it;
//! - a pending record without a row belongs to a commit that never committed: nothing
//!   lists it, GC removes it once older than its cutoff (and collects its data), and the
//!   next commit, which the catalog gives the same id since the transaction rolled back,
//!   overwrites it. It never blocks GC. `rebuild-catalog` does take one whose data is
//!   complete: after a lost catalog it cannot tell a crashed commit from one that
//!   committed just before the loss, and the data is whole either way;
//! - a commit that finds a *final* record already under the id the catalog gave it stops,
//!   committing nothing: the catalog is older than the store, and overwriting would lose a
//!   version.
//!
//! A future delete of a version must remove its row before its record, renaming the
//! record to pending first, so that a crash never leaves a row without its record nor a
//! final record without its row.

use std::collections::HashSet;
use std::path::Path;

use a3_shared::chunk::BlockId;
use a3_shared::version_record::{RecordDisk, VersionRecord};

use super::backend::{RecordEntry, RecordState};
use super::{Store, StoreError, io_error};
use crate::catalog::versions::{VersionDiskRow, VersionRow};

/// Which records the catalog lacks, as [`Store::check_records`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordCheck {
    /// Versions in the catalog.
    pub catalog_versions: u64,
    /// Final records (committed versions) in the store.
    pub records: u64,
    /// Final records whose version the catalog lacks.
    pub missing: Vec<i64>,
    /// Pending records finalized because the catalog has their version.
    pub finalized: u64,
    /// Pending records whose version the catalog lacks (commits that never committed).
    pub orphans: Vec<RecordEntry>,
}

impl Store {
    /// Compares the store's version records with the catalog, finalizing the pending
    /// records of committed versions on the way. Lists the records before reading the
    /// catalog: a record is final only after its row committed, so a record listed final
    /// and absent from the catalog read afterwards is truly missing, never a commit in
    /// flight.
    pub fn check_records(&self) -> Result<RecordCheck, StoreError> {
        let mut entries = Vec::new();
        self.inner
            .backend
            .list_records(&mut |e| entries.push(e))
            .map_err(|e| self.io(|| "listing version records".into(), e))?;
        let ids: HashSet<i64> = self.inner.catalog.version_ids()?.into_iter().collect();
        let finals: HashSet<i64> = entries
            .iter()
            .filter(|e| e.state == RecordState::Final)
            .map(|e| e.version)
            .collect();
        let mut check = RecordCheck {
            catalog_versions: ids.len() as u64,
            records: finals.len() as u64,
            ..RecordCheck::default()
        };
        check.missing = finals
            .iter()
            .filter(|v| !ids.contains(v))
            .copied()
            .collect();
        check.missing.sort_unstable();
        for e in entries {
            if e.state != RecordState::Pending {
                continue;
            }
            if ids.contains(&e.version) {
                let _g = self.records_lock();
                if self
                    .inner
                    .backend
                    .finalize_record(e.version)
                    .map_err(|err| {
                        self.io(|| format!("finalizing version {}'s record", e.version), err)
                    })?
                {
                    check.finalized += 1;
                }
            } else {
                check.orphans.push(e);
            }
        }
        Ok(check)
    }

    /// The error GC and start-up give when the catalog lacks committed versions.
    pub(super) fn catalog_behind(&self, missing: &[i64]) -> StoreError {
        StoreError::CatalogBehind {
            store: self.location().to_owned(),
            missing: missing.len() as u64,
            first: missing.first().copied().unwrap_or_default(),
            state_dir: self.state_dir(),
        }
    }

    /// The state dir the store lives in (`<state-dir>/store`), for the rebuild command.
    pub(super) fn state_dir(&self) -> String {
        let location = Path::new(self.location());
        location.parent().unwrap_or(location).display().to_string()
    }

    /// The commit's record step, run inside the catalog transaction that gave `record.id`:
    /// writes the record under its pending name, durably. Refuses an id that already has
    /// a final record (the catalog is older than the store).
    pub(super) fn write_pending_record(&self, record: &VersionRecord) -> Result<(), StoreError> {
        let fail = |reason: String| StoreError::Session {
            subject: record.subject.clone(),
            reason,
        };
        let bytes = record
            .encode()
            .map_err(|e| fail(format!("its version record cannot be written: {e}")))?;
        let backend = &self.inner.backend;
        let _g = self.records_lock();
        let taken = backend
            .stat_record(record.id, RecordState::Final)
            .map_err(|e| self.io(|| format!("checking version {}'s record", record.id), e))?;
        if taken.is_some() {
            return Err(fail(format!(
                "the catalog gave it version id {}, which a committed version in the store \
                 already has: the catalog is older than the store; stop the A3 and run \
                 `a3-server store rebuild-catalog --state-dir {}`",
                record.id,
                self.state_dir()
            )));
        }
        backend
            .put_record(record.id, RecordState::Pending, &bytes)
            .map_err(|e| self.io(|| format!("writing version {}'s record", record.id), e))
    }

    /// The commit's last step, after the catalog transaction: the record's final name.
    /// A failure leaves a pending record of a committed version, which the next GC or
    /// start-up finalizes; the version stands, so this only logs.
    pub(super) fn finalize_record(&self, version: i64) {
        let _g = self.records_lock();
        if let Err(e) = self.inner.backend.finalize_record(version) {
            tracing::warn!(
                version,
                "the version is committed, but its record kept its pending name ({e}); \
                 the next GC or start-up renames it"
            );
        }
    }

    /// Removes the pending record of a commit that never committed, if it is still the
    /// one GC saw and older than `cutoff`. `true` when removed.
    pub(super) fn remove_orphan_record(
        &self,
        version: i64,
        cutoff: std::time::SystemTime,
    ) -> Result<bool, StoreError> {
        let backend = &self.inner.backend;
        let what = || format!("GC: removing the pending record of version {version}");
        // Under the lock: a commit that the catalog gave this id again may be writing it.
        let _g = self.records_lock();
        match backend.stat_record(version, RecordState::Pending) {
            Ok(Some(e)) if e.modified < cutoff => {}
            Ok(_) => return Ok(false),
            Err(e) => return Err(self.io(what, e)),
        }
        backend
            .remove_record(version, RecordState::Pending)
            .map_err(|e| self.io(what, e))?;
        Ok(true)
    }

    /// Reads and checks a record.
    pub(super) fn load_record(
        &self,
        version: i64,
        state: RecordState,
    ) -> Result<VersionRecord, String> {
        let bytes = self
            .inner
            .backend
            .get_record(version, state)
            .map_err(|e| format!("unreadable: {e}"))?;
        let record = VersionRecord::decode(&bytes).map_err(|e| e.to_string())?;
        if record.id != version {
            return Err(format!(
                "it describes version {}, not the one it is named after",
                record.id
            ));
        }
        Ok(record)
    }

    /// Copies the catalog into the store with SQLite's online backup, replacing the
    /// previous copy atomically, so that job history survives the catalog file.
    pub fn snapshot_catalog(&self) -> Result<(), StoreError> {
        let catalog = &self.inner.catalog;
        self.inner
            .backend
            .put_catalog_snapshot(&mut |path| {
                catalog.snapshot_to(path).map_err(std::io::Error::other)
            })
            .map_err(|e| io_error(self.location(), "snapshotting the catalog".into(), e))
    }
}

/// The record of a version about to be committed.
pub(super) fn record_of(
    id: i64,
    subject: &str,
    created_at: i64,
    metadata: &str,
    disks: &[VersionDiskRow],
) -> VersionRecord {
    VersionRecord {
        id,
        subject: subject.to_owned(),
        created_at,
        metadata: metadata.to_owned(),
        disks: disks
            .iter()
            .map(|d| RecordDisk {
                name: d.disk.clone(),
                size: d.size,
                block_size: d.block_size,
                manifest: d.manifest.parse().expect("the commit named it by a digest"),
            })
            .collect(),
    }
}

/// The catalog row a record stands for.
pub(super) fn row_of(r: &VersionRecord) -> VersionRow {
    VersionRow {
        id: r.id,
        subject: r.subject.clone(),
        created_at: r.created_at,
        metadata: r.metadata.clone(),
        disks: r
            .disks
            .iter()
            .map(|d| VersionDiskRow {
                disk: d.name.clone(),
                size: d.size,
                block_size: d.block_size,
                manifest: BlockId::to_hex(&d.manifest),
            })
            .collect(),
    }
}
