//! `/api/sr`: each pool's `Alike_SR` and whether its PBD is plugged on every host; "plug
//! now" (after fixing what stopped a plug).

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::{ApiError, AppState};
use crate::sr::PoolSr;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/sr", get(status))
        .route("/api/sr/plug", post(plug))
}

async fn status(State(state): State<AppState>) -> Result<Json<Vec<PoolSr>>, ApiError> {
    Ok(Json(state.sr.status().await?))
}

/// Creates any missing `Alike_SR` and plugs every PBD; the status after, with each pool's
/// failure (if any) in its `error`.
async fn plug(State(state): State<AppState>) -> Result<Json<Vec<PoolSr>>, ApiError> {
    for pool in state.catalog.pool_uuids()? {
        // The failure is kept per pool and shown by the status below.
        let _ = state.sr.ensure(&pool).await;
    }
    Ok(Json(state.sr.status().await?))
}
