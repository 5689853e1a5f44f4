//! `a3-server serve`: starts every component, and stops them cleanly on SIGINT/SIGTERM.
//! Also `store rebuild-catalog`, which needs the state dir to itself ([`rebuild_catalog`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use a3_shared::durable::write_private;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::inventory::Inventory;
pub use crate::store::RebuildReport;
use crate::store::{Store, StoreOptions, SyncMode};

/// Why the A3 could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file or socket of the A3's own.
    #[error("{what}: {source}")]
    Io {
        /// What the A3 was doing.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A private file could not be written.
    #[error(transparent)]
    Write(#[from] a3_shared::durable::WriteError),
    /// The catalog.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The pool watchers.
    #[error("starting the pool watchers: {0}")]
    Inventory(#[from] crate::inventory::InventoryError),
    /// The certificate authority.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The A3's SSH key.
    #[error(transparent)]
    Key(#[from] crate::ssh::KeyError),
    /// The store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The catalog has no versions while the store holds committed ones: started on it,
    /// the A3 would list no backup and GC would take their chunks for garbage.
    #[error(
        "the catalog {catalog} has no versions, but the store holds {records} committed \
         version(s): the catalog was lost or replaced, and the A3 does not start on it; run \
         `a3-server store rebuild-catalog --state-dir {state_dir}`, then start the A3 again"
    )]
    CatalogLost {
        /// The catalog file.
        catalog: String,
        /// Committed versions in the store.
        records: u64,
        /// The state dir.
        state_dir: String,
    },
    /// `store rebuild-catalog` on a state dir without a store.
    #[error("{0}: no store there; give the A3's --state-dir")]
    NoStore(String),
    /// Port 2811.
    #[error(transparent)]
    DataPort(#[from] crate::dataport::StartError),
    /// A component's task panicked.
    #[error("{what} task: {source}")]
    Task {
        /// The component.
        what: &'static str,
        /// Why it ended.
        source: tokio::task::JoinError,
    },
}

impl ServerError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
        let what = what.into();
        move |source| ServerError::Io { what, source }
    }

    fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> ServerError {
        move |source| ServerError::Task { what, source }
    }
}

/// A running server, as started by [`start`].
pub struct Running {
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// Shared handles, for in-process tests.
    pub state: AppState,
    http: JoinHandle<std::io::Result<()>>,
    dataport: JoinHandle<()>,
    /// The A3 SR's NFS server, when it started.
    sr_server: Option<JoinHandle<()>>,
}

impl Running {
    /// Asks every component to stop and waits until they have.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        // While NFS still serves: the pools show Alike_SR unplugged while the A3 is away.
        self.state.sr.unplug_everywhere().await;
        self.state.shutdown.cancel();
        self.http
            .await
            .map_err(ServerError::task("HTTP server"))?
            .map_err(ServerError::io("HTTP server"))?;
        self.dataport
            .await
            .map_err(ServerError::task("port 2811"))?;
        if let Some(task) = self.sr_server {
            task.await.map_err(ServerError::task("NFS server"))?;
        }
        Ok(())
    }
}

/// Starts the server in the current tokio runtime.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let state_dir = &config.state_dir;
    create_private_dir(state_dir)?;
    let catalog = Catalog::open(&config.catalog_file())?;
    // The one handle on the store of this process (it holds the store's lock).
    let store = Store::open(&config.store_dir(), catalog.clone())?;
    check_catalog(&config, &store)?;
    let api_token = load_or_create_token(&config.api_token_file())?;

    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(ServerError::io(format!(
            "HTTP API: cannot listen on {}",
            config.http_listen
        )))?;
    let http_addr = listener
        .local_addr()
        .map_err(ServerError::io("HTTP API: the bound address"))?;
    write_private(
        &config.api_url_file(),
        format!("http://{http_addr}\n").as_bytes(),
    )?;

    let shutdown = CancellationToken::new();
    let timeouts = crate::xapi::Timeouts {
        request: std::time::Duration::from_secs(config.xapi_call_timeout_secs),
        ..Default::default()
    };
    let inventory = Inventory::new(catalog.clone(), state_dir, timeouts, shutdown.clone());
    inventory.start_watchers()?;
    let pki = crate::pki::Pki::open(
        state_dir,
        catalog.clone(),
        crate::pki::Lifetimes {
            token_secs: i64::try_from(config.enrollment_token_ttl_secs).unwrap_or(i64::MAX / 2),
            cert_secs: i64::from(config.abd_cert_days) * 86_400,
        },
    )?;
    // Made once; every ABD's boot config carries its public half (`sshkey`).
    crate::ssh::A3Key::load_or_create(state_dir)?;
    let (dataport, dataport_task) = crate::dataport::DataPort::start(
        config.data_listen,
        state_dir,
        pki,
        store.clone(),
        config.backup_block_size,
        shutdown.clone(),
    )
    .await?;
    // The A3 SR. A clash on 111 or 2049 (rpcbind, another A3 on this address) leaves the
    // other services running; `sr status` and the log say why the SR is not served.
    let sr_ip = config.sr_address.unwrap_or(config.data_listen.ip());
    let started = crate::sr::start(sr_ip, &config.sr_dir(), shutdown.clone()).await;
    if let Err(e) = &started {
        tracing::error!("the A3 SR is not served: {e}");
    }
    let advertised = config
        .sr_address
        .or((!sr_ip.is_unspecified()).then_some(sr_ip));
    let sr = crate::sr::SrService::new(
        catalog.clone(),
        inventory.clone(),
        advertised,
        started.as_ref().map(drop),
    );
    let sr_server = started.ok();
    tokio::spawn(sr.clone().upkeep(shutdown.clone()));
    let config = Arc::new(config);
    let engine = crate::jobs::Engine::new(
        catalog.instance_id()?,
        catalog.clone(),
        inventory.clone(),
        dataport.clone(),
        store.clone(),
        sr.clone(),
        config.clone(),
    );
    tokio::spawn(startup_upkeep(
        engine.clone(),
        config.clone(),
        shutdown.clone(),
    ));
    let state = AppState {
        config,
        catalog,
        shutdown: shutdown.clone(),
        api_token: api_token.into(),
        inventory,
        dataport,
        store,
        verify_runs: Default::default(),
        engine,
        sr,
        metrics: Default::default(),
    };
    let app = api::router(state.clone());
    let stop = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    tracing::info!(%http_addr, "A3 API listening");
    Ok(Running {
        http_addr,
        state,
        http,
        dataport: dataport_task,
        sr_server,
    })
}

/// Refuses an empty catalog over a store with committed versions; warns about a catalog
/// that lacks some (GC refuses to run until they are rebuilt).
fn check_catalog(config: &Config, store: &Store) -> Result<(), ServerError> {
    let check = store.check_records()?;
    if check.missing.is_empty() {
        return Ok(());
    }
    let state_dir = config.state_dir.display().to_string();
    if check.catalog_versions == 0 {
        return Err(ServerError::CatalogLost {
            catalog: config.catalog_file().display().to_string(),
            records: check.records,
            state_dir,
        });
    }
    tracing::warn!(
        "the catalog lacks {} committed version(s) the store holds (the first is version \
         {}); GC refuses to run until `a3-server store rebuild-catalog --state-dir \
         {state_dir}` puts them back (with the A3 stopped)",
        check.missing.len(),
        check.missing[0]
    );
    Ok(())
}

/// `a3-server store rebuild-catalog`: the catalog's versions recreated from the store's
/// version records, and its job history from the store's catalog snapshot. Takes the
/// store's lock before touching the catalog, so it fails while the A3 runs.
pub fn rebuild_catalog(config: &Config) -> Result<RebuildReport, ServerError> {
    let dir = config.store_dir();
    if !dir.is_dir() {
        return Err(ServerError::NoStore(dir.display().to_string()));
    }
    let backend = Store::lock_dir(&dir, SyncMode::Full)?;
    let catalog = Catalog::open(&config.catalog_file())?;
    let store = Store::with_backend(Box::new(backend), catalog, StoreOptions::default());
    Ok(store.rebuild_catalog()?)
}

/// Recovery of interrupted runs, the reconciler's passes (periodic, and for a pool as
/// soon as it is reachable again), and the pools' templates kept current.
async fn startup_upkeep(
    engine: crate::jobs::Engine,
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    if let Err(e) = crate::jobs::recovery::recover(&engine).await {
        tracing::error!("recovery of interrupted runs failed: {e:#}");
    }
    let every = std::time::Duration::from_secs(config.reconcile_interval_secs.max(1));
    let stop = shutdown.clone();
    let reconciler = engine.clone();
    let mut reconnected = engine.inventory().reconnections();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let pool = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => None,
                back = reconnected.recv() => match back {
                    Ok(pool) => Some(pool),
                    Err(RecvError::Lagged(_)) => None,
                    Err(RecvError::Closed) => return,
                },
            };
            match pool {
                Some(pool) => crate::jobs::reconcile::reconcile_one(&reconciler, &pool).await,
                None => {
                    if let Err(e) = crate::jobs::reconcile::reconcile_all(&reconciler).await {
                        tracing::warn!("reconciler: {e:#}");
                    }
                }
            }
        }
    });
    crate::fleet::template::upkeep(
        engine.catalog().clone(),
        engine.inventory().clone(),
        config,
        shutdown,
    )
    .await;
}

/// Runs the server until SIGINT or SIGTERM, then shuts it down.
pub async fn serve(config: Config) -> Result<(), ServerError> {
    let running = start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServerError::io("SIGTERM handler"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.shutdown().await
}

/// Creates the state dir owner-only, or makes an existing one so: it holds the pools'
/// passwords, the CA key and every backup.
fn create_private_dir(dir: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(ServerError::io(format!(
            "state dir {}: cannot create",
            dir.display()
        )))?;
    let mode = std::fs::metadata(dir)
        .map_err(ServerError::io(format!("state dir {}", dir.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            "state dir {} was mode {:o}; making it owner-only (0700)",
            dir.display(),
            mode & 0o777
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            ServerError::io(format!(
                "state dir {}: cannot make it owner-only",
                dir.display()
            )),
        )?;
    }
    Ok(())
}

fn load_or_create_token(path: &Path) -> Result<String, ServerError> {
    match std::fs::read_to_string(path) {
        Ok(token) => Ok(token.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            let token = hex::encode(bytes);
            write_private(path, token.as_bytes())?;
            Ok(token)
        }
        Err(e) => Err(ServerError::io(format!(
            "{}: cannot read API token",
            path.display()
        ))(e)),
    }
}
