//! Garbage collection: mark what the versions use, sweep the rest that is old enough.
//!
//! The rules (see the module overview in `store`): refuse while the catalog lacks a
//! committed version the store has, take the cutoff from the oldest live writer first,
//! mark from every version's manifest, list everything before deleting anything, and
//! delete a chunk only if it is unmarked and, re-checked under its lock, still stamped
//! before the cutoff. Quarantined chunks are never deleted. All times are the store's
//! ([`super::Backend::clock`]), never the wall clock's.

use std::collections::HashSet;
use std::time::SystemTime;

use a3_shared::chunk::BlockId;
use serde::{Deserialize, Serialize};

use super::{Entry, Space, Store, StoreError};

/// What a GC run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Versions whose manifests were marked.
    pub versions: u64,
    /// Distinct chunks the versions use.
    pub chunks_in_use: u64,
    /// Chunks removed.
    pub chunks_removed: u64,
    /// Bytes those held.
    pub bytes_removed: u64,
    /// Unused chunks kept because a running backup may still use them.
    pub chunks_kept_recent: u64,
    /// Unused manifests (of versions never committed) removed.
    pub manifests_removed: u64,
    /// Pending version records of commits that never committed, removed.
    pub records_removed: u64,
    /// Subjects of backup sessions whose idle lease was revoked; they fail at commit.
    pub leases_revoked: Vec<String>,
}

impl Store {
    /// Runs a GC. One runs at a time; backups, restores and verify go on meanwhile.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let Ok(_running) = self.inner.gc.try_lock() else {
            return Err(StoreError::GcRunning {
                store: self.location().to_owned(),
            });
        };
        let mut report = GcReport::default();
        let cutoff = self.gc_cutoff(&mut report);
        // Before anything else: with committed versions missing from the catalog, their
        // chunks would look unused.
        let records = self.check_records().map_err(|e| match e {
            StoreError::Io { what, source, .. } => self.gc_abort(format!("{what}: {source}")),
            e => e,
        })?;
        if !records.missing.is_empty() {
            return Err(self.catalog_behind(&records.missing));
        }

        // Mark. Any unreadable manifest aborts: its chunks would look unused.
        let mut marked: HashSet<BlockId> = HashSet::new();
        let mut manifests: HashSet<BlockId> = HashSet::new();
        let rows = self.inner.catalog.version_list(None)?;
        report.versions = rows.len() as u64;
        for row in &rows {
            for d in &row.disks {
                let m = self
                    .load_manifest(super::VersionId(row.id), &d.disk, &d.manifest)
                    .map_err(|e| self.gc_abort(e.to_string()))?;
                marked.extend(m.chunks().map(|(_, id)| id));
                manifests.insert(d.manifest.parse().expect("load_manifest parsed it"));
            }
        }
        report.chunks_in_use = marked.len() as u64;

        // List everything before deleting anything.
        let mut chunks: Vec<Entry> = Vec::new();
        self.inner
            .backend
            .list(Space::Chunks, &mut |e| {
                if !e.quarantined && !marked.contains(&e.id) {
                    chunks.push(e);
                }
            })
            .map_err(|e| self.gc_abort(format!("listing chunks: {e}")))?;
        let mut orphan_manifests: Vec<Entry> = Vec::new();
        self.inner
            .backend
            .list(Space::Manifests, &mut |e| {
                if !e.quarantined && !manifests.contains(&e.id) {
                    orphan_manifests.push(e);
                }
            })
            .map_err(|e| self.gc_abort(format!("listing manifests: {e}")))?;

        // Stamps left by an earlier process can be ahead of this one's clock (the wall clock
        // was ahead then, or is behind now): catch up with them, so that the next GC can
        // judge them. This GC keeps them, since they are newer than its cutoff.
        let newest = chunks
            .iter()
            .chain(&orphan_manifests)
            .map(|e| e.modified)
            .chain(records.orphans.iter().map(|r| r.modified))
            .max();
        if let Some(newest) = newest {
            let moved = self.inner.backend.clock().catch_up(newest);
            if !moved.is_zero() {
                tracing::info!(
                    ?moved,
                    "the store's clock caught up with objects stamped ahead of it (the wall \
                     clock was behind when the store opened)"
                );
            }
        }

        // Sweep.
        for e in chunks {
            if e.modified >= cutoff {
                report.chunks_kept_recent += 1;
                continue;
            }
            let _g = self.stripe(&e.id);
            // A session may have touched it since the listing.
            match self.inner.backend.stat(Space::Chunks, &e.id) {
                Ok(Some(now)) if now.modified < cutoff => {}
                Ok(Some(_)) => {
                    report.chunks_kept_recent += 1;
                    continue;
                }
                Ok(None) => continue,
                Err(err) => return Err(self.io(|| format!("GC: checking chunk {}", e.id), err)),
            }
            self.inner
                .backend
                .remove(Space::Chunks, &e.id)
                .map_err(|err| self.io(|| format!("GC: removing chunk {}", e.id), err))?;
            report.chunks_removed += 1;
            report.bytes_removed += e.len;
        }
        for e in orphan_manifests {
            // A manifest newer than the cutoff may belong to a commit in progress; a commit
            // of identical content rewrites the file under the same lock, refreshing it.
            let _g = self.stripe(&e.id);
            match self.inner.backend.stat(Space::Manifests, &e.id) {
                Ok(Some(now)) if now.modified < cutoff => {}
                Ok(_) => continue,
                Err(err) => {
                    return Err(self.io(|| format!("GC: checking manifest {}", e.id), err));
                }
            }
            self.inner
                .backend
                .remove(Space::Manifests, &e.id)
                .map_err(|err| self.io(|| format!("GC: removing manifest {}", e.id), err))?;
            report.manifests_removed += 1;
        }
        for orphan in records.orphans {
            if self.remove_orphan_record(orphan.version, cutoff)? {
                report.records_removed += 1;
            }
        }
        tracing::info!(
            removed = report.chunks_removed,
            bytes = report.bytes_removed,
            kept_recent = report.chunks_kept_recent,
            "GC done"
        );
        Ok(report)
    }

    /// Revokes idle leases and returns the store time before which unused objects may go.
    fn gc_cutoff(&self, report: &mut GcReport) -> SystemTime {
        let limit = self.inner.options.lease_idle_limit;
        let clock = self.inner.backend.clock();
        let mut leases = self.leases();
        let (now, mono) = (clock.now(), clock.mono());
        leases.live.retain(|_, l| {
            let keep = l.committing || mono.saturating_duration_since(l.last_active) < limit;
            if !keep {
                tracing::warn!(subject = %l.subject, "GC revoked an idle backup session's lease");
                report.leases_revoked.push(l.subject.clone());
            }
            keep
        });
        let oldest = leases
            .live
            .values()
            .map(|l| l.started)
            .min()
            .map_or(now, |s| s.min(now));
        oldest
            .checked_sub(self.inner.backend.stamp_resolution())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn gc_abort(&self, reason: String) -> StoreError {
        StoreError::GcAborted {
            store: self.location().to_owned(),
            reason,
        }
    }
}
