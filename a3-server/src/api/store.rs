//! `/api/store`: verify, GC and stats of the backup store (see `crate::store`).
//!
//! The store's calls block, so they run on the blocking pool. GC and stats answer when
//! done; a verify can take long, so it runs as a background task whose progress and report
//! the client polls.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::store::{
    GcReport, Store, StoreError, StoreStats, VerifyProgress, VerifyReport, VerifyScope, VersionId,
};

/// Finished verify runs kept for their clients to read.
const KEEP_FINISHED: usize = 32;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/store/stats", get(stats))
        .route("/api/store/gc", post(gc))
        .route("/api/store/verify", post(start_verify))
        .route("/api/store/verify/{id}", get(verify_status))
}

/// `POST /api/store/verify`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyBody {
    /// Only this version; the whole store when absent.
    pub version: Option<VersionId>,
}

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

    fn start(&self, scope: String) -> u64 {
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

    fn get(&self, id: u64) -> Option<VerifyStatus> {
        let runs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        runs.all.get(&id).cloned()
    }
}

fn store_of(state: &AppState) -> Store {
    state.dataport.store().store().clone()
}

fn store_error(e: StoreError) -> ApiError {
    if e.is_not_found() {
        ApiError::not_found(e.to_string())
    } else if matches!(e, StoreError::GcRunning { .. }) {
        ApiError {
            status: StatusCode::CONFLICT,
            message: e.to_string(),
        }
    } else {
        ApiError::internal(e.to_string())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
        .map_err(store_error)
}

async fn stats(State(state): State<AppState>) -> Result<Json<StoreStats>, ApiError> {
    let store = store_of(&state);
    Ok(Json(blocking(move || store.stats()).await?))
}

async fn gc(State(state): State<AppState>) -> Result<Json<GcReport>, ApiError> {
    let store = store_of(&state);
    Ok(Json(blocking(move || store.gc()).await?))
}

async fn start_verify(
    State(state): State<AppState>,
    Json(body): Json<VerifyBody>,
) -> Result<Json<VerifyStatus>, ApiError> {
    let store = store_of(&state);
    let (scope, label) = match body.version {
        Some(v) => {
            // An unknown version is a 404 now, not a failed run later.
            let s = store.clone();
            blocking(move || s.version(v)).await?;
            (VerifyScope::Version(v), format!("version {v}"))
        }
        None => (VerifyScope::All, "the whole store".to_owned()),
    };
    let runs = state.verify_runs.clone();
    let id = runs.start(label);
    let task_runs = runs.clone();
    tokio::task::spawn_blocking(move || {
        let progress_runs = task_runs.clone();
        let outcome = store.verify(scope, &mut |p| {
            progress_runs.update(id, |s| s.progress = p);
        });
        task_runs.update(id, |s| {
            s.state = match outcome {
                Ok(report) => VerifyState::Done { report },
                Err(e) => VerifyState::Failed {
                    reason: e.to_string(),
                },
            }
        });
    });
    Ok(Json(runs.get(id).expect("just started")))
}

async fn verify_status(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<VerifyStatus>, ApiError> {
    state.verify_runs.get(id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "verify run {id} is unknown (the server keeps the last {KEEP_FINISHED}, and \
             forgets them on restart); start one with `a3-server store verify`"
        ))
    })
}
