//! `/api/fleet`: the ABD VMs of every pool (list, destroy, a command over SSH) and each
//! pool's static IP list.

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::catalog::abd_fleet::AbdVmRow;
use crate::catalog::ip_pool::{AbdIp, IpListError};

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/fleet/abds", get(list))
        .route("/api/fleet/abds/{id}/destroy", post(destroy))
        .route("/api/fleet/abds/{id}/ssh", post(ssh))
        .route("/api/fleet/ips", get(ips).post(set_ips))
}

/// An ABD VM with its connection state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbdVmView {
    /// The row.
    #[serde(flatten)]
    pub row: AbdVmRow,
    /// Whether its agent is connected now, and from where.
    pub connected_from: Option<String>,
    /// `QUIC`, or `TLS/TCP` for the fallback, when connected now.
    #[serde(default)]
    pub transport: Option<String>,
}

/// A pool's IP list, as `abd ips set` sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpList {
    /// The pool (uuid or name).
    pub pool: String,
    /// The network (uuid or name) ABDs with these addresses go on.
    pub network: Option<String>,
    /// `addr/prefix` each.
    pub addresses: Vec<String>,
    /// The gateway.
    pub gateway: Option<String>,
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
    let row = state
        .engine
        .fleet()
        .destroy(&id)
        .await
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    Ok(Json(row))
}

/// A command to run on an ABD over SSH (`a3-server abd ssh`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshCommand {
    /// The command: `diag [--json]`, `status [--json]`, `logs` or `reboot`.
    pub command: String,
    /// The time limit in seconds.
    pub timeout_secs: u64,
}

async fn ssh(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(cmd): Json<SshCommand>,
) -> Result<Json<crate::abdssh::ExecOutput>, ApiError> {
    let target = state
        .engine
        .fleet()
        .ssh_target(&id)
        .await
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let key = crate::abdssh::A3Key::load(&state.config.state_dir)
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let timeout = std::time::Duration::from_secs(cmd.timeout_secs);
    let out = crate::abdssh::exec(&key, &target, &cmd.command, timeout)
        .await
        .map_err(|e| ApiError {
            status: axum::http::StatusCode::BAD_GATEWAY,
            message: e.to_string(),
        })?;
    Ok(Json(out))
}

fn pool_uuid(state: &AppState, pool: &str) -> Result<String, ApiError> {
    state
        .catalog
        .list_pools()?
        .into_iter()
        .find(|p| p.uuid == pool || p.name == pool)
        .map(|p| p.uuid)
        .ok_or_else(|| ApiError::not_found(format!("no pool '{pool}'; see `a3-server pool list`")))
}

async fn ips(
    State(state): State<AppState>,
    Query(f): Query<PoolFilter>,
) -> Result<Json<Vec<AbdIp>>, ApiError> {
    let pool = pool_uuid(&state, &f.pool)?;
    Ok(Json(state.catalog.abd_ips(&pool)?))
}

async fn set_ips(
    State(state): State<AppState>,
    Json(list): Json<IpList>,
) -> Result<Json<Vec<AbdIp>>, ApiError> {
    let pool = pool_uuid(&state, &list.pool)?;
    let network = match &list.network {
        Some(n) => {
            let (s, _) = state
                .inventory
                .connect(&pool)
                .await
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let nets = crate::xapi::ops::all_records(&s, "network").await;
            s.logout().await;
            let nets = nets.map_err(|e| ApiError::bad_request(e.to_string()))?;
            nets.iter()
                .map(|(_, r)| r)
                .find(|r| {
                    crate::xapi::ops::text(r, "uuid") == n
                        || crate::xapi::ops::text(r, "name_label") == n
                })
                .map(|r| crate::xapi::ops::text(r, "uuid").to_owned())
                .ok_or_else(|| ApiError::not_found(format!("no network '{n}' in pool {pool}")))?
        }
        None => {
            let (s, _) = state
                .inventory
                .connect(&pool)
                .await
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            let net = crate::xapi::ops::management_network(&s).await;
            s.logout().await;
            let (_, rec) = net.map_err(|e| ApiError::bad_request(e.to_string()))?;
            crate::xapi::ops::text(&rec, "uuid").to_owned()
        }
    };
    if let Some(gw) = &list.gateway {
        gw.parse::<std::net::Ipv4Addr>()
            .map_err(|_| ApiError::bad_request(format!("gateway {gw:?} is not an IPv4 address")))?;
    }
    let mut entries = Vec::new();
    for a in &list.addresses {
        let (addr, prefix) = a.split_once('/').ok_or_else(|| {
            ApiError::bad_request(format!(
                "address {a:?}: write it as addr/prefix, e.g. 10.0.0.5/24"
            ))
        })?;
        addr.parse::<std::net::Ipv4Addr>()
            .map_err(|_| ApiError::bad_request(format!("address {a:?}: not an IPv4 address")))?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
            ApiError::bad_request(format!("address {a:?}: prefix must be 0..=32"))
        })?;
        entries.push(AbdIp {
            pool_uuid: pool.clone(),
            network_uuid: network.clone(),
            address: addr.to_owned(),
            prefix,
            gateway: list.gateway.clone(),
            assigned_to: None,
        });
    }
    state
        .catalog
        .abd_ips_set(&pool, &entries)
        .map_err(|e| match e {
            IpListError::InUse { .. } => ApiError::bad_request(e.to_string()),
            IpListError::Catalog(c) => c.into(),
        })?;
    Ok(Json(state.catalog.abd_ips(&pool)?))
}
