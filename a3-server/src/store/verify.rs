//! The verify walk: re-read and re-hash every chunk of a version, or of the whole store.
//!
//! Each distinct chunk is checked once per run (the run's cache of verified digests), by
//! a few worker threads. A damaged chunk is quarantined (renamed `.bad`, never deleted),
//! so the next backup of a disk that has the block uploads it again; then every block
//! that uses it is named by version, disk and byte offset. A whole-store walk also checks
//! chunks no version references yet, since a later backup could dedup against them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use a3_shared::chunk::BlockId;
use serde::{Deserialize, Serialize};

use super::reader::Checked;
use super::{RecordState, Space, Store, StoreError, VersionId, VersionInfo};

/// What to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyScope {
    /// One version.
    Version(VersionId),
    /// Every version, and every chunk in the store.
    All,
}

/// Where a verify run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyProgress {
    /// Chunks checked so far.
    pub done: u64,
    /// Chunks to check.
    pub total: u64,
    /// Encoded bytes read so far.
    pub bytes: u64,
}

/// A block whose chunk is missing or damaged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadBlock {
    /// The version.
    pub version: VersionId,
    /// Its subject.
    pub subject: String,
    /// The disk.
    pub disk: String,
    /// The block's byte offset on the disk.
    pub offset: u64,
    /// The chunk's id (hex).
    pub chunk: String,
    /// What is wrong.
    pub problem: String,
}

/// A manifest that cannot be read: the whole disk version is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadManifest {
    /// The version.
    pub version: VersionId,
    /// The disk.
    pub disk: String,
    /// What is wrong.
    pub problem: String,
}

/// A version whose record in the store is missing, damaged, or disagrees with the
/// catalog's row: the catalog could not be rebuilt from the store for it, or the row
/// itself was altered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRecord {
    /// The version.
    pub version: VersionId,
    /// What is wrong.
    pub problem: String,
}

/// A damaged chunk no version uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadOrphan {
    /// The chunk's id (hex).
    pub chunk: String,
    /// What is wrong.
    pub problem: String,
}

/// The outcome of a verify run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Versions walked.
    pub versions: u64,
    /// Disk versions walked.
    pub disks: u64,
    /// Distinct chunks checked (those unreferenced included).
    pub chunks: u64,
    /// Of those, chunks no version uses.
    pub unreferenced: u64,
    /// Encoded bytes read.
    pub bytes: u64,
    /// Blocks that cannot be restored.
    pub bad_blocks: Vec<BadBlock>,
    /// Manifests that cannot be read.
    pub bad_manifests: Vec<BadManifest>,
    /// Version records that are missing, damaged, or disagree with the catalog.
    pub bad_records: Vec<BadRecord>,
    /// Damaged chunks no version uses.
    pub bad_unreferenced: Vec<BadOrphan>,
    /// Where damaged chunks were moved.
    pub quarantined: Vec<String>,
}

impl VerifyReport {
    /// Whether everything checked is whole.
    pub fn is_ok(&self) -> bool {
        self.bad_blocks.is_empty()
            && self.bad_manifests.is_empty()
            && self.bad_records.is_empty()
            && self.bad_unreferenced.is_empty()
    }
}

/// One chunk's verdict.
enum Verdict {
    Good(u64),
    Missing,
    Bad {
        problem: String,
        quarantined: Option<String>,
    },
}

impl Store {
    /// Verifies `scope`, calling `progress` as chunks are checked. Only a failure to
    /// enumerate what to check is an `Err`; damage is in the report.
    pub fn verify(
        &self,
        scope: VerifyScope,
        progress: &mut dyn FnMut(VerifyProgress),
    ) -> Result<VerifyReport, StoreError> {
        let versions = match scope {
            VerifyScope::Version(id) => vec![self.version(id)?],
            VerifyScope::All => self.versions(None)?,
        };
        let mut report = VerifyReport {
            versions: versions.len() as u64,
            ..VerifyReport::default()
        };
        // Pass 1: each version's record, and the distinct chunks to check, in first-use
        // order.
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        for v in &versions {
            if let Err(problem) = self.check_record(v.id) {
                report.bad_records.push(BadRecord {
                    version: v.id,
                    problem,
                });
            }
            for d in &v.disks {
                report.disks += 1;
                match self.manifest(v.id, &d.name) {
                    Ok(m) => ids.extend(m.chunks().map(|(_, id)| id).filter(|id| seen.insert(*id))),
                    Err(e) => report.bad_manifests.push(BadManifest {
                        version: v.id,
                        disk: d.name.clone(),
                        problem: e.to_string(),
                    }),
                }
            }
        }
        let referenced = ids.len();
        if scope == VerifyScope::All {
            let mut extra = Vec::new();
            self.inner
                .backend
                .list(Space::Chunks, &mut |e| {
                    if !e.quarantined && !seen.contains(&e.id) {
                        extra.push(e.id);
                    }
                })
                .map_err(|e| self.io(|| "listing chunks".into(), e))?;
            report.unreferenced = extra.len() as u64;
            ids.extend(extra);
        }
        report.chunks = ids.len() as u64;
        let verdicts = self.check_all(&ids, progress);
        let mut bad: HashMap<BlockId, String> = HashMap::new();
        for (i, verdict) in verdicts {
            match verdict {
                Verdict::Good(n) => report.bytes += n,
                // An unused chunk may have been collected since the listing: not damage.
                Verdict::Missing if i >= referenced => {}
                Verdict::Missing => {
                    bad.insert(ids[i], format!("chunk {} is missing", ids[i]));
                }
                Verdict::Bad {
                    problem,
                    quarantined,
                } => {
                    report.quarantined.extend(quarantined);
                    if i < referenced {
                        bad.insert(ids[i], problem);
                    } else {
                        report.bad_unreferenced.push(BadOrphan {
                            chunk: ids[i].to_hex(),
                            problem,
                        });
                    }
                }
            }
        }
        // Pass 2: name every block that uses a bad chunk.
        if !bad.is_empty() {
            for v in &versions {
                self.name_bad_blocks(v, &bad, &mut report);
            }
        }
        report.quarantined.sort();
        tracing::info!(
            chunks = report.chunks,
            bad_blocks = report.bad_blocks.len(),
            bad_manifests = report.bad_manifests.len(),
            bad_records = report.bad_records.len(),
            quarantined = report.quarantined.len(),
            "verify done"
        );
        Ok(report)
    }

    /// Checks that version `id` has a record (final, or pending for a commit whose
    /// rename has not happened yet) that says what the catalog's row says.
    fn check_record(&self, id: VersionId) -> Result<(), String> {
        let record = match self.load_record(id.0, RecordState::Final) {
            Err(e) if e.starts_with("unreadable") => {
                self.load_record(id.0, RecordState::Pending)
                    .map_err(|p| format!("its record: {e} (pending: {p})"))?
            }
            other => other.map_err(|e| format!("its record: {e}"))?,
        };
        let row = self
            .inner
            .catalog
            .version_get(id.0)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "its catalog row is gone".to_owned())?;
        let stored = super::records::row_of(&record);
        if stored != row {
            return Err(format!(
                "the catalog's row and the store's record disagree (catalog: {row:?}; \
                 record: {stored:?})"
            ));
        }
        Ok(())
    }

    fn name_bad_blocks(
        &self,
        v: &VersionInfo,
        bad: &HashMap<BlockId, String>,
        report: &mut VerifyReport,
    ) {
        for d in &v.disks {
            // A manifest that failed in pass 1 is already reported.
            let Ok(m) = self.manifest(v.id, &d.name) else {
                continue;
            };
            for (index, id) in m.chunks() {
                if let Some(problem) = bad.get(&id) {
                    report.bad_blocks.push(BadBlock {
                        version: v.id,
                        subject: v.subject.clone(),
                        disk: d.name.clone(),
                        offset: m.offset_of(index),
                        chunk: id.to_hex(),
                        problem: problem.clone(),
                    });
                }
            }
        }
    }

    /// Checks `ids` on a few threads; returns (index, verdict) for each.
    fn check_all(
        &self,
        ids: &[BlockId],
        progress: &mut dyn FnMut(VerifyProgress),
    ) -> Vec<(usize, Verdict)> {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4);
        let next = AtomicUsize::new(0);
        let (tx, rx) = mpsc::channel();
        let mut out = Vec::with_capacity(ids.len());
        let mut state = VerifyProgress {
            done: 0,
            total: ids.len() as u64,
            bytes: 0,
        };
        progress(state);
        std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = tx.clone();
                let next = &next;
                s.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(id) = ids.get(i) else { break };
                        // An unreadable chunk (EIO on a bad sector) is damage to report,
                        // not a reason to stop the walk.
                        let verdict = match self.check_chunk(id) {
                            Ok(Checked::Good { encoded, .. }) => {
                                Verdict::Good(encoded.len() as u64)
                            }
                            Ok(Checked::Missing) => Verdict::Missing,
                            Ok(Checked::Quarantined { reason, to }) => Verdict::Bad {
                                problem: format!("{reason}; quarantined as {to}"),
                                quarantined: Some(to),
                            },
                            Err(e) => Verdict::Bad {
                                problem: e.to_string(),
                                quarantined: None,
                            },
                        };
                        if tx.send((i, verdict)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            for (i, verdict) in rx {
                if let Verdict::Good(n) = verdict {
                    state.bytes += n;
                }
                state.done += 1;
                out.push((i, verdict));
                if state.done.is_multiple_of(64) || state.done == state.total {
                    progress(state);
                }
            }
        });
        out
    }
}
