//! `/api/pools`: the pools the A3 manages, and "synchronise now".

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{ApiError, AppState};
use crate::catalog::inventory::PoolRow;
use crate::inventory::sync::SyncReport;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/pools", get(list))
        .route("/api/pools/{uuid}/sync", post(sync))
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<PoolRow>>, ApiError> {
    Ok(Json(state.catalog.list_pools()?))
}

async fn sync(
    State(state): State<AppState>,
    Path(uuid): Path<String>,
) -> Result<Json<SyncReport>, ApiError> {
    Ok(Json(state.inventory.resync(&uuid).await?))
}
