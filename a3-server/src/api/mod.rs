//! The HTTP JSON API under `/api`, used by the CLI and the web UI.
//!
//! One handler file per resource, each exposing `routes() -> Router<AppState>`, merged in
//! [`router`]. Handlers return [`ApiError`], the only place where errors become HTTP
//! statuses. Every route requires the bearer token from the state dir's `api.token`.

pub mod abds;
pub mod disks;
pub mod dto;
mod error;
pub mod fleet;
pub mod hosts;
pub mod jobs;
pub mod metrics;
pub mod pools;
pub mod sr;
pub mod store;
pub mod vms;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::inventory::Inventory;

/// What every handler can reach. Components add their handle here.
#[derive(Clone)]
pub struct AppState {
    /// The settings the server started with.
    pub config: Arc<Config>,
    /// The catalog database.
    pub catalog: Catalog,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// The bearer token the API requires.
    pub api_token: Arc<str>,
    /// Pools, hosts and their inventory.
    pub inventory: Inventory,
    /// Port 2811: agents, data-path jobs, the PKI.
    pub dataport: crate::dataport::DataPort,
    /// The backup store.
    pub store: crate::store::Store,
    /// The store's verify runs, for their progress and reports.
    pub verify_runs: crate::jobs::verify::VerifyRuns,
    /// Whole-VM backup and restore jobs, and the ABD fleet.
    pub engine: crate::jobs::Engine,
    /// Each pool's `Alike_SR`.
    pub sr: crate::sr::SrService,
    /// The store's figures for `/metrics`, walked at most once a minute.
    pub metrics: metrics::StoreStatsCache,
}

/// Runs a blocking store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
        .map_err(ApiError::from)
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .merge(hosts::routes())
        .merge(pools::routes())
        .merge(sr::routes())
        .merge(vms::routes())
        .merge(abds::routes())
        .merge(disks::routes())
        .merge(store::routes())
        .merge(jobs::routes())
        .merge(fleet::routes())
        .merge(metrics::routes())
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn health() -> &'static str {
    "ok"
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.api_token.as_bytes()) => {
            next.run(req).await
        }
        _ => ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong API token; the CLI reads it from <state-dir>/api.token"
                .into(),
        }
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
