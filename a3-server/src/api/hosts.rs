//! `/api/hosts`: add a host (and so its pool), list hosts, remove a pool, re-trust a host.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::catalog::inventory::HostRow;
use crate::inventory::{AddedPool, InventoryError, RemovedPool, Trusted};
use crate::xapi::{Credentials, XapiError};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/hosts", get(list).post(add))
        .route("/api/hosts/{id}", delete(remove))
        .route("/api/hosts/{id}/trust", post(trust))
}

/// `POST /api/hosts`: any host of the pool and its credentials.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddHost {
    /// `HOST`, `HOST:PORT` or `https://HOST[:PORT]/`.
    pub address: String,
    /// The XAPI user.
    pub username: String,
    /// The password.
    pub password: String,
}

async fn add(
    State(state): State<AppState>,
    Json(req): Json<AddHost>,
) -> Result<(StatusCode, Json<AddedPool>), ApiError> {
    let inventory = state.inventory.clone();
    let sr = state.sr.clone();
    let credentials = Credentials {
        username: req.username,
        password: req.password,
    };
    // Run to completion even if the client goes away, so a pool is never half-added.
    // Then its Alike_SR (a failure there is logged and shown by `sr status`).
    let added = tokio::spawn(async move {
        let added = inventory.add_host(&req.address, credentials).await?;
        sr.pool_added(&added.pool.uuid).await;
        Ok::<_, InventoryError>(added)
    })
    .await
    .map_err(|e| ApiError::internal(format!("host add task failed: {e}")))??;
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

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> ApiError {
        let status = match &e {
            InventoryError::BadAddress(_) => StatusCode::BAD_REQUEST,
            InventoryError::UnknownHost(_) | InventoryError::UnknownPool(_) => {
                StatusCode::NOT_FOUND
            }
            InventoryError::Xapi(XapiError::AuthenticationFailed { .. }) => StatusCode::BAD_REQUEST,
            InventoryError::Xapi(XapiError::CertificateChanged { .. }) => StatusCode::CONFLICT,
            InventoryError::Xapi(_)
            | InventoryError::MasterLoop { .. }
            | InventoryError::NoUsableHost { .. }
            | InventoryError::NoCertificate { .. } => StatusCode::BAD_GATEWAY,
            InventoryError::Catalog(_)
            | InventoryError::Secrets { .. }
            | InventoryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}
