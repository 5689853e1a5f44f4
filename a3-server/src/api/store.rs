//! `/api/store`: verify, GC and stats of the backup store (see `crate::store`).
//!
//! The store's calls block, so they run on the blocking pool. GC and stats answer when
//! done; a verify can take long, so it runs as a background task whose progress and report
//! the client polls.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::dto::{VerifyBody, VerifyStatus};
use super::{ApiError, AppState, blocking};
use crate::jobs::verify::KEEP_FINISHED;
use crate::store::{GcReport, StoreStats};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/store/stats", get(stats))
        .route("/api/store/gc", post(gc))
        .route("/api/store/verify", post(start_verify))
        .route("/api/store/verify/{id}", get(verify_status))
}

async fn stats(State(state): State<AppState>) -> Result<Json<StoreStats>, ApiError> {
    let store = state.store.clone();
    Ok(Json(blocking(move || store.stats()).await?))
}

async fn gc(State(state): State<AppState>) -> Result<Json<GcReport>, ApiError> {
    let store = state.store.clone();
    Ok(Json(blocking(move || store.gc()).await?))
}

async fn start_verify(
    State(state): State<AppState>,
    Json(body): Json<VerifyBody>,
) -> Result<Json<VerifyStatus>, ApiError> {
    let store = state.store.clone();
    let runs = state.verify_runs.clone();
    Ok(Json(
        blocking(move || runs.start(store, body.version)).await?,
    ))
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
