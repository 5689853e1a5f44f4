//! `/api/abds`: ABD credentials for port 2811 (enroll, revoke, list with connection state).

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::dto::{AbdView, EnrollAnswer, Revoked};
use super::{ApiError, AppState};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/abds", get(list))
        .route("/api/abds/{id}/enroll", post(enroll))
        .route("/api/abds/{id}/revoke", post(revoke))
}

/// Checks an ABD id: it names files and appears in certificates and logs.
pub fn check_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "ABD id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<AbdView>>, ApiError> {
    let connected = state.dataport.connected();
    let rows = state.catalog.abd_list()?;
    Ok(Json(
        rows.into_iter()
            .map(|a| AbdView {
                state: if a.revoked_at.is_some() {
                    "revoked"
                } else if a.cert_sha256.is_some() {
                    "enrolled"
                } else {
                    "enrolling"
                }
                .into(),
                connected: connected.contains_key(&a.id),
                connected_from: connected.get(&a.id).map(|c| c.remote.to_string()),
                transport: connected.get(&a.id).map(|c| c.transport.to_string()),
                id: a.id,
                enrolled_at: a.enrolled_at,
                revoked_at: a.revoked_at,
                cert_expires_at: a.cert_expires_at,
            })
            .collect(),
    ))
}

async fn enroll(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EnrollAnswer>, ApiError> {
    check_id(&id)?;
    let pki = state.dataport.pki();
    let token = pki
        .begin_enrollment(&id)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let addr = state.dataport.addr();
    let server_name = if addr.ip().is_unspecified() {
        "a3".to_owned()
    } else {
        addr.ip().to_string()
    };
    Ok(Json(EnrollAnswer {
        id,
        token,
        token_expires_at: crate::util::clock::unix_now() + pki.lifetimes().token_secs,
        ca_pin: pki.ca_pin(),
        a3_address: addr.to_string(),
        server_name,
    }))
}

async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    let known = state
        .dataport
        .revoke(&id)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if !known {
        return Err(ApiError::not_found(format!(
            "ABD '{id}' is not enrolled (or already revoked); see `a3-server abd list`"
        )));
    }
    Ok(Json(Revoked { id }))
}
