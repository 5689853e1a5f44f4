//! `/api/pools`: the pools the A3 manages.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState};
use crate::catalog::inventory::PoolRow;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/pools", get(list))
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<PoolRow>>, ApiError> {
    Ok(Json(state.catalog.list_pools()?))
}
