//! `/api/hosts`: add a host (and so its pool), list hosts, remove a pool, re-trust a host.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use super::dto::AddHost;
use super::{ApiError, AppState};
use crate::catalog::inventory::HostRow;
use crate::inventory::{AddedPool, RemovedPool, Trusted};
use crate::jobs::pools;
use crate::xapi::Credentials;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/hosts", get(list).post(add))
        .route("/api/hosts/{id}", delete(remove))
        .route("/api/hosts/{id}/trust", post(trust))
}

async fn add(
    State(state): State<AppState>,
    Json(req): Json<AddHost>,
) -> Result<(StatusCode, Json<AddedPool>), ApiError> {
    let credentials = Credentials {
        username: req.username,
        password: req.password,
    };
    let added = pools::add_host(&state.inventory, &state.sr, req.address, credentials).await?;
    Ok((StatusCode::CREATED, Json(added)))
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<HostRow>>, ApiError> {
    Ok(Json(state.catalog.list_hosts()?))
}

async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RemovedPool>, ApiError> {
    Ok(Json(state.inventory.remove_host(&id)?))
}

async fn trust(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Trusted>, ApiError> {
    Ok(Json(state.inventory.trust_host(&id).await?))
}
