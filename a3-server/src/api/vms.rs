//! `/api/vms`: the VMs of every pool (or of one: `?pool=UUID`), with their disks and NICs.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::catalog::inventory::VmRow;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/vms", get(list))
}

#[derive(Deserialize)]
struct Filter {
    pool: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    Query(filter): Query<Filter>,
) -> Result<Json<Vec<VmRow>>, ApiError> {
    let catalog = state.catalog.clone();
    // A thousand VMs with their disks: keep the SQLite work off the async threads.
    let vms = tokio::task::spawn_blocking(move || catalog.list_vms(filter.pool.as_deref()))
        .await
        .map_err(|e| ApiError::internal(format!("VM list task failed: {e}")))??;
    Ok(Json(vms))
}
