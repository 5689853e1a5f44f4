//! `/api/disks`: back up a device as a named disk, restore a version, follow the job, list
//! versions. The work runs on an ABD's agent over port 2811 (see `crate::dataport`).

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::dto::{BackupBody, RestoreBody};
use super::{ApiError, AppState};
use crate::dataport::{BackupRequest, Dispatched, JobStatus, RestoreRequest};
use crate::store::VersionInfo;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/disks/backup", post(backup))
        .route("/api/disks/restore", post(restore))
        .route("/api/disks/jobs", get(jobs))
        .route("/api/disks/jobs/{id}", get(job))
        .route("/api/disks/versions", get(versions))
}

/// `GET /api/disks/versions?disk=`.
#[derive(Debug, Clone, Deserialize)]
pub struct VersionsQuery {
    /// Only this disk's versions.
    pub disk: Option<String>,
}

fn check_name(what: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{what} must not be empty")));
    }
    Ok(())
}

async fn backup(
    State(state): State<AppState>,
    Json(body): Json<BackupBody>,
) -> Result<Json<Dispatched>, ApiError> {
    check_name("--disk", &body.disk)?;
    check_name("--path", &body.path)?;
    let d = state
        .dataport
        .start_backup(BackupRequest {
            abd: body.abd,
            path: body.path,
            disk: body.disk,
            cbt: body.cbt,
        })
        .await?;
    Ok(Json(d))
}

async fn restore(
    State(state): State<AppState>,
    Json(body): Json<RestoreBody>,
) -> Result<Json<Dispatched>, ApiError> {
    check_name("--path", &body.path)?;
    let d = state
        .dataport
        .start_restore(RestoreRequest {
            abd: body.abd,
            version: body.version,
            disk: body.disk,
            path: body.path,
        })
        .await?;
    Ok(Json(d))
}

async fn jobs(State(state): State<AppState>) -> Json<Vec<JobStatus>> {
    Json(state.dataport.jobs().list())
}

async fn job(
    State(state): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Json<JobStatus>, ApiError> {
    state.dataport.jobs().get(id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "data-path job {id} is unknown to this A3 (jobs do not survive an A3 restart: if \
             it restarted, the job failed and committed nothing; run it again)"
        ))
    })
}

async fn versions(
    State(state): State<AppState>,
    Query(q): Query<VersionsQuery>,
) -> Result<Json<Vec<VersionInfo>>, ApiError> {
    let store = state.store.clone();
    Ok(Json(
        super::blocking(move || store.versions(q.disk.as_deref())).await?,
    ))
}
