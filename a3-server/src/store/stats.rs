//! What the store holds and what it saves. Logical bytes come from the catalog; stored
//! bytes from a listing of the chunks, so the figure is exact, at the cost of one walk.

use serde::{Deserialize, Serialize};

use super::{Space, Store, StoreError};

/// The store's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Committed versions.
    pub versions: u64,
    /// Disk versions in them.
    pub disks: u64,
    /// The sum of the disk sizes of every version: what a plain copy of each would take.
    pub logical_bytes: u64,
    /// Bytes of the live chunks on disk.
    pub stored_bytes: u64,
    /// Live chunks.
    pub chunks: u64,
    /// Bytes of the manifests.
    pub manifest_bytes: u64,
    /// Quarantined chunks (kept for inspection, not counted as stored).
    pub quarantined_chunks: u64,
    /// `logical_bytes / stored_bytes`: what dedup, zero skipping and compression save
    /// together. `None` while nothing is stored.
    pub dedup_ratio: Option<f64>,
}

impl Store {
    /// Counts everything.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let versions = self.inner.catalog.version_list(None)?;
        let mut s = StoreStats {
            versions: versions.len() as u64,
            disks: 0,
            logical_bytes: 0,
            stored_bytes: 0,
            chunks: 0,
            manifest_bytes: 0,
            quarantined_chunks: 0,
            dedup_ratio: None,
        };
        for v in &versions {
            for d in &v.disks {
                s.disks += 1;
                s.logical_bytes += d.size;
            }
        }
        self.inner
            .backend
            .list(Space::Chunks, &mut |e| {
                if e.quarantined {
                    s.quarantined_chunks += 1;
                } else {
                    s.chunks += 1;
                    s.stored_bytes += e.len;
                }
            })
            .map_err(|e| self.io(|| "listing chunks".into(), e))?;
        self.inner
            .backend
            .list(Space::Manifests, &mut |e| s.manifest_bytes += e.len)
            .map_err(|e| self.io(|| "listing manifests".into(), e))?;
        if s.stored_bytes > 0 {
            s.dedup_ratio = Some(s.logical_bytes as f64 / s.stored_bytes as f64);
        }
        Ok(s)
    }
}
