//! `a3-server store rebuild-catalog`: the catalog's versions recreated from the store's
//! version records, ids kept, and its job history from the store's catalog snapshot.
//!
//! Runs with the store's lock held (so never beside a running A3). Idempotent: a version
//! already in the catalog, identical, is left alone; job history is imported only into a
//! catalog that has none.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::backend::RecordState;
use super::records::row_of;
use super::{Store, StoreError, VersionId};
use crate::catalog::snapshot::JobHistory;
use crate::catalog::versions::VersionRestore;

/// A version the rebuild put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuiltVersion {
    /// Its id, as before.
    pub id: VersionId,
    /// What was backed up.
    pub subject: String,
    /// Unix seconds of the commit.
    pub created_at: i64,
    /// Its disks' names.
    pub disks: Vec<String>,
    /// From a pending record: a commit that crashed around its catalog transaction, whose
    /// data is complete.
    pub from_pending: bool,
}

/// A record the rebuild could not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    /// The version it is named after.
    pub version: VersionId,
    /// A pending record (a commit that may never have committed): skipping it loses
    /// nothing that was ever listed.
    pub pending: bool,
    /// Why.
    pub reason: String,
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildReport {
    /// Versions added to the catalog.
    pub added: Vec<RebuiltVersion>,
    /// Versions the catalog already had, identical.
    pub present: u64,
    /// Records not used.
    pub skipped: Vec<SkippedRecord>,
    /// Job history brought back from the store's catalog snapshot; `None` when there was
    /// no snapshot or the catalog already had jobs.
    pub job_history: Option<JobHistory>,
    /// The snapshot read, if any.
    pub snapshot: Option<String>,
}

impl RebuildReport {
    /// Whether every committed version is back: no final record was skipped.
    pub fn is_ok(&self) -> bool {
        self.skipped.iter().all(|s| s.pending)
    }
}

impl Store {
    /// Recreates the catalog's version rows from the store's records (see the module doc).
    pub fn rebuild_catalog(&self) -> Result<RebuildReport, StoreError> {
        let mut states: BTreeMap<i64, RecordState> = BTreeMap::new();
        self.inner
            .backend
            .list_records(&mut |e| {
                // A final record wins over a pending one of the same id.
                let s = states.entry(e.version).or_insert(e.state);
                if e.state == RecordState::Final {
                    *s = RecordState::Final;
                }
            })
            .map_err(|e| self.io(|| "listing version records".into(), e))?;
        let mut report = RebuildReport::default();
        for (&version, &state) in &states {
            let pending = state == RecordState::Pending;
            let skip = |reason: String| SkippedRecord {
                version: VersionId(version),
                pending,
                reason,
            };
            let record = match self.load_record(version, state) {
                Ok(r) => r,
                Err(reason) => {
                    report.skipped.push(skip(format!("record: {reason}")));
                    continue;
                }
            };
            if let Err(reason) = self.record_data_present(&record, pending) {
                report.skipped.push(skip(reason));
                continue;
            }
            match self.inner.catalog.version_restore(&row_of(&record))? {
                VersionRestore::Added => report.added.push(RebuiltVersion {
                    id: VersionId(version),
                    subject: record.subject.clone(),
                    created_at: record.created_at,
                    disks: record.disks.iter().map(|d| d.name.clone()).collect(),
                    from_pending: pending,
                }),
                VersionRestore::Present => report.present += 1,
                VersionRestore::Conflict(there) => {
                    report.skipped.push(skip(format!(
                        "the catalog holds another version under this id (subject '{}', \
                         committed at {}); left as it is",
                        there.subject, there.created_at
                    )));
                    continue;
                }
            }
            if pending {
                let _g = self.records_lock();
                self.inner
                    .backend
                    .finalize_record(version)
                    .map_err(|e| self.io(|| format!("finalizing version {version}'s record"), e))?;
            }
        }
        let snapshot = self
            .inner
            .backend
            .catalog_snapshot()
            .map_err(|e| self.io(|| "looking for the catalog snapshot".into(), e))?;
        if let Some(path) = snapshot {
            report.job_history = self.inner.catalog.import_job_history(&path)?;
            report.snapshot = Some(path.display().to_string());
        }
        tracing::info!(
            added = report.added.len(),
            present = report.present,
            skipped = report.skipped.len(),
            "catalog rebuilt from the store"
        );
        Ok(report)
    }

    /// Checks that the manifests a record names are in the store and whole; for a pending
    /// record (a commit that may never have committed, whose data GC may have started to
    /// collect), that every chunk they name is there too.
    fn record_data_present(
        &self,
        record: &a3_shared::version_record::VersionRecord,
        pending: bool,
    ) -> Result<(), String> {
        let id = VersionId(record.id);
        for d in &record.disks {
            let m = self
                .load_manifest(id, &d.name, &d.manifest.to_hex())
                .map_err(|e| e.to_string())?;
            if !pending {
                continue;
            }
            for (index, chunk) in m.chunks() {
                let present = self
                    .inner
                    .backend
                    .stat(super::Space::Chunks, &chunk)
                    .map_err(|e| format!("disk '{}': checking chunk {chunk}: {e}", d.name))?;
                if present.is_none() {
                    return Err(format!(
                        "disk '{}': the block at offset {} (chunk {chunk}) is gone: a commit \
                         that never committed, whose data GC collected",
                        d.name,
                        m.offset_of(index)
                    ));
                }
            }
        }
        Ok(())
    }
}
