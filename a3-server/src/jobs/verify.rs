//! The store's verify runs: each checks every chunk of one version or of the whole store
//! as a background task, whose progress and report clients poll by id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, VerifyProgress, VerifyReport, VerifyScope, VersionId};

/// Finished verify runs kept for their clients to read.
pub const KEEP_FINISHED: usize = 32;

/// A verify run, as `GET /api/store/verify/{id}` reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyStatus {
    /// The run's id.
    pub id: u64,
    /// "version N" or "the whole store".
    pub scope: String,
    /// Chunks checked so far.
    pub progress: VerifyProgress,
    /// Where it is.
    pub state: VerifyState,
}

/// Where a verify run is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum VerifyState {
    /// Still checking.
    Running,
    /// Finished; the report says whether anything is bad.
    Done {
        /// What was checked and found.
        report: VerifyReport,
    },
    /// Could not run to the end.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The verify runs of this server.
#[derive(Clone, Default)]
pub struct VerifyRuns(Arc<Mutex<Runs>>);

#[derive(Default)]
struct Runs {
    next: u64,
    all: BTreeMap<u64, VerifyStatus>,
}

impl VerifyRuns {
    fn update(&self, id: u64, f: impl FnOnce(&mut VerifyStatus)) {
        let mut runs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = runs.all.get_mut(&id) {
            f(s);
        }
    }

    /// Starts verifying `version` (the whole store when `None`) in the background; its
    /// status so far. An unknown version is refused now, not reported as a failed run
    /// later. Blocks briefly (a version lookup): call it off the async threads.
    pub fn start(
        &self,
        store: Store,
        version: Option<VersionId>,
    ) -> Result<VerifyStatus, StoreError> {
        let (scope, label) = match version {
            Some(v) => {
                store.version(v)?;
                (VerifyScope::Version(v), format!("version {v}"))
            }
            None => (VerifyScope::All, "the whole store".to_owned()),
        };
        let id = self.add(label);
        let runs = self.clone();
        tokio::task::spawn_blocking(move || {
            let outcome = store.verify(scope, &mut |p| runs.update(id, |s| s.progress = p));
            runs.update(id, |s| {
                s.state = match outcome {
                    Ok(report) => VerifyState::Done { report },
                    Err(e) => VerifyState::Failed {
                        reason: e.to_string(),
                    },
                }
            });
        });
        Ok(self.get(id).expect("just added"))
    }

    fn add(&self, scope: String) -> u64 {
        let mut runs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        runs.next += 1;
        let id = runs.next;
        let finished: Vec<u64> = runs
            .all
            .values()
            .filter(|s| !matches!(s.state, VerifyState::Running))
            .map(|s| s.id)
            .collect();
        for old in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            runs.all.remove(old);
        }
        runs.all.insert(
            id,
            VerifyStatus {
                id,
                scope,
                progress: VerifyProgress {
                    done: 0,
                    total: 0,
                    bytes: 0,
                },
                state: VerifyState::Running,
            },
        );
        id
    }

    /// The run `id`, while the server remembers it.
    pub fn get(&self, id: u64) -> Option<VerifyStatus> {
        let runs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        runs.all.get(&id).cloned()
    }
}
