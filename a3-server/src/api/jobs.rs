//! `/api/backups`, `/api/restores`, `/api/diags`, `/api/jobs`, `/api/versions`: whole-VM
//! backup and restore jobs and ABD diag jobs, their runs, progress, logs and check results,
//! and the versions of a VM.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::dto::{JobDetail, JobSummary, VersionView};
use super::{ApiError, AppState};
use crate::catalog::jobs::LogLine;
use crate::jobs::diag::DiagSpec;
use crate::jobs::restore::RestoreSpec;
use crate::jobs::{BackupSpec, Started};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/backups", post(backup))
        .route("/api/restores", post(restore))
        .route("/api/diags", post(diag))
        .route("/api/jobs", get(list))
        .route("/api/jobs/{id}", get(show))
        .route("/api/jobs/{id}/log", get(log))
        .route("/api/versions", get(versions))
}

async fn backup(
    State(state): State<AppState>,
    Json(spec): Json<BackupSpec>,
) -> Result<Json<Started>, ApiError> {
    Ok(Json(state.engine.start_backup(spec)?))
}

async fn restore(
    State(state): State<AppState>,
    Json(spec): Json<RestoreSpec>,
) -> Result<Json<Started>, ApiError> {
    Ok(Json(state.engine.start_restore(spec)?))
}

async fn diag(
    State(state): State<AppState>,
    Json(spec): Json<DiagSpec>,
) -> Result<Json<Started>, ApiError> {
    Ok(Json(state.engine.start_diag(spec)?))
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<JobSummary>>, ApiError> {
    let mut out = Vec::new();
    for job in state.catalog.job_list()? {
        let run = state.catalog.run_list(job.id)?.into_iter().next();
        out.push(JobSummary { job, run });
    }
    Ok(Json(out))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<JobDetail>, ApiError> {
    let job = state
        .catalog
        .job_get(id)?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}; see `a3-server job list`")))?;
    let run = state.catalog.run_list(id)?.into_iter().next();
    let (items, progress, checks) = match &run {
        Some(r) => (
            state.catalog.run_items(r.id)?,
            state.engine.progress(r.id),
            state.catalog.run_checks(r.id)?,
        ),
        None => (Vec::new(), HashMap::new(), Vec::new()),
    };
    Ok(Json(JobDetail {
        job,
        run,
        items,
        progress,
        checks,
    }))
}

async fn log(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Vec<LogLine>>, ApiError> {
    let run = state
        .catalog
        .run_list(id)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no job {id}; see `a3-server job list`")))?;
    Ok(Json(state.catalog.run_log_lines(run.id)?))
}

#[derive(Deserialize)]
struct VersionFilter {
    vm: String,
}

async fn versions(
    State(state): State<AppState>,
    Query(f): Query<VersionFilter>,
) -> Result<Json<Vec<VersionView>>, ApiError> {
    let vm = state.engine.find_vm(&f.vm).map(|v| v.uuid).or_else(|e| {
        // A VM deleted since its backup is still found by uuid through its versions.
        if state.catalog.version_latest(&f.vm)?.is_some() {
            Ok(f.vm.clone())
        } else {
            Err(ApiError::from(e))
        }
    })?;
    let rows = state.catalog.version_list(Some(&vm))?;
    Ok(Json(
        rows.into_iter()
            .map(|v| {
                let name = serde_json::from_str::<crate::jobs::metadata::VmMetadata>(&v.metadata)
                    .map(|m| m.name_label)
                    .unwrap_or_default();
                VersionView {
                    id: v.id,
                    vm_uuid: v.subject,
                    vm_name: name,
                    created_at: v.created_at,
                    disks: v.disks.into_iter().map(|d| (d.disk, d.size)).collect(),
                }
            })
            .collect(),
    ))
}
