//! `/api/fleet`: the ABD VMs of every pool (list, destroy, a command over SSH) and each
//! pool's static IP list.

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::dto::{AbdVmView, IpList, SshCommand};
use super::{ApiError, AppState};
use crate::catalog::abd_fleet::AbdVmRow;
use crate::catalog::ip_pool::AbdIp;
use crate::fleet::ips;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/fleet/abds", get(list))
        .route("/api/fleet/abds/{id}/destroy", post(destroy))
        .route("/api/fleet/abds/{id}/ssh", post(ssh))
        .route("/api/fleet/ips", get(ips).post(set_ips))
}

#[derive(Deserialize)]
struct PoolFilter {
    pool: String,
}

async fn list(State(state): State<AppState>) -> Result<Json<Vec<AbdVmView>>, ApiError> {
    let connected = state.dataport.connected();
    Ok(Json(
        state
            .catalog
            .abd_vm_list(None)?
            .into_iter()
            .map(|row| AbdVmView {
                connected_from: connected.get(&row.id).map(|c| c.remote.to_string()),
                transport: connected.get(&row.id).map(|c| c.transport.to_string()),
                row,
            })
            .collect(),
    ))
}

async fn destroy(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AbdVmRow>, ApiError> {
    let row = state.engine.fleet().destroy(&id).await?;
    Ok(Json(row))
}

async fn ssh(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(cmd): Json<SshCommand>,
) -> Result<Json<crate::ssh::ExecOutput>, ApiError> {
    let target = state.engine.fleet().ssh_target(&id).await?;
    let key = crate::ssh::A3Key::load(&state.config.state_dir)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let timeout = std::time::Duration::from_secs(cmd.timeout_secs);
    let out = crate::ssh::exec(&key, &target, &cmd.command, timeout)
        .await
        .map_err(|e| ApiError {
            status: axum::http::StatusCode::BAD_GATEWAY,
            message: e.to_string(),
        })?;
    Ok(Json(out))
}

async fn ips(
    State(state): State<AppState>,
    Query(f): Query<PoolFilter>,
) -> Result<Json<Vec<AbdIp>>, ApiError> {
    Ok(Json(ips::list(&state.catalog, &f.pool)?))
}

async fn set_ips(
    State(state): State<AppState>,
    Json(list): Json<IpList>,
) -> Result<Json<Vec<AbdIp>>, ApiError> {
    Ok(Json(
        ips::set(
            &state.catalog,
            &state.inventory,
            &list.pool,
            list.network.as_deref(),
            &list.addresses,
            list.gateway.as_deref(),
        )
        .await?,
    ))
}
