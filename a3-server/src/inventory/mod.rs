//! The pools the A3 manages: host add (pool discovery), the inventory kept current with
//! `event.from`, failover to a new master, and certificate re-trust.
//!
//! Who does what:
//! - [`discovery`]: logging in through any host, following `HOST_IS_SLAVE`, failover.
//! - [`sync`]: full syncs and events turned into catalog changes.
//! - [`watch`]: one task per pool that keeps its inventory current.
//! - [`secrets`]: pool passwords, owner-only files.
//!
//! The catalog tables are in [`crate::catalog::inventory`].

pub mod discovery;
pub mod secrets;
pub mod sync;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::catalog::inventory::{HostRow, NewPool, PoolRow};
use crate::catalog::{Catalog, CatalogError};
use crate::xapi::records::HostRecord;
use crate::xapi::transport::BadAddress;
use crate::xapi::{Credentials, Endpoint, EventWatcher, Session, Timeouts, XapiError};

use secrets::Secrets;

/// Errors of host add, pool connections and re-trust.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The address does not parse.
    #[error(transparent)]
    BadAddress(#[from] BadAddress),
    /// A host refused or failed a call.
    #[error(transparent)]
    Xapi(#[from] XapiError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A pool's password file cannot be written or read.
    #[error("pool password file {}: {detail}", path.display())]
    Secrets {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// No recorded host has this uuid or address.
    #[error("no host {0:?} is recorded; `a3-server host list` shows the known hosts")]
    UnknownHost(String),
    /// The pool is not (or no longer) recorded.
    #[error("pool {0} is not recorded; add one of its hosts with `a3-server host add`")]
    UnknownPool(String),
    /// Hosts point at each other as master.
    #[error(
        "the pool's hosts name each other as master ({path}); is a master change under way? retry in a minute"
    )]
    MasterLoop {
        /// The hosts followed.
        path: String,
    },
    /// No known host of the pool could serve as master.
    #[error("pool {pool}: no host could be reached as master: {failures}")]
    NoUsableHost {
        /// The pool's uuid.
        pool: String,
        /// Why each host failed.
        failures: String,
    },
    /// A host could not be reached to read its certificate.
    #[error("host {host}: cannot read its certificate: the host is not reachable")]
    NoCertificate {
        /// The host.
        host: String,
    },
    /// A bug or a crashed helper task.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A pool as host add recorded it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddedPool {
    /// The pool.
    pub pool: PoolRow,
    /// All of its hosts.
    pub hosts: Vec<HostRow>,
}

/// What `host remove` forgot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemovedPool {
    /// The pool's uuid.
    pub pool_uuid: String,
    /// The pool's name.
    pub pool_name: String,
    /// How many hosts it had.
    pub hosts: u32,
}

/// What `host trust` changed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trusted {
    /// The host's uuid.
    pub uuid: String,
    /// Its address (`address[:port]`).
    pub address: String,
    /// The fingerprint pinned before, if any.
    pub previous: Option<String>,
    /// The fingerprint pinned now.
    pub current: String,
}

/// The inventory component: a handle shared by the API and the watcher tasks.
#[derive(Clone)]
pub struct Inventory {
    catalog: Catalog,
    secrets: Secrets,
    timeouts: Timeouts,
    shutdown: CancellationToken,
    watchers: Arc<Mutex<HashMap<String, CancellationToken>>>,
    /// The uuid of each pool whose watcher connected again after losing it.
    reconnected: tokio::sync::broadcast::Sender<String>,
}

impl Inventory {
    /// The component over `catalog`, keeping passwords under `state_dir` and calling
    /// XAPI within `timeouts`. Watchers stop when `shutdown` fires.
    pub fn new(
        catalog: Catalog,
        state_dir: &Path,
        timeouts: Timeouts,
        shutdown: CancellationToken,
    ) -> Inventory {
        Inventory {
            catalog,
            secrets: Secrets::new(state_dir),
            timeouts,
            shutdown,
            watchers: Arc::default(),
            reconnected: tokio::sync::broadcast::channel(16).0,
        }
    }

    /// Tells of each pool that is reachable again after its connection was lost (or was
    /// unreachable when the A3 started), for the reconciler.
    pub fn reconnections(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.reconnected.subscribe()
    }

    /// Starts a watcher for every recorded pool (at server start).
    pub fn start_watchers(&self) -> Result<(), InventoryError> {
        for pool in self.catalog.pool_uuids()? {
            self.spawn_watcher(&pool, None);
        }
        Ok(())
    }

    /// Adds the pool of the host at `address`: logs in (following `HOST_IS_SLAVE` to the
    /// master), records the pool and all of its hosts with their certificates pinned, stores
    /// the password, synchronises the inventory and starts watching it. Nothing is recorded
    /// if the login fails.
    pub async fn add_host(
        &self,
        address: &str,
        credentials: Credentials,
    ) -> Result<AddedPool, InventoryError> {
        let start = Endpoint::parse(address)?;
        let reached =
            discovery::login_following_master(&self.catalog, start, &credentials, self.timeouts)
                .await?;
        let session = Arc::new(reached.session);
        let port = session.endpoint().port;
        let (pool_ref, pool) = crate::xapi::ops::the_pool(&session).await?;
        let hosts = session.get_all_records::<HostRecord>().await?;

        // Pin every member: those just contacted, the known ones keep their pin, and the
        // rest are contacted now (in parallel). Unreachable ones are pinned later.
        let probes = hosts.iter().map(|(_, h)| {
            let endpoint = Endpoint::new(&h.address, port);
            let seen = reached.seen.get(&endpoint).copied();
            let catalog = self.catalog.clone();
            let timeouts = self.timeouts;
            async move {
                if seen.is_some() {
                    return Ok::<_, InventoryError>(seen);
                }
                if let Some(pin) = catalog.pin_for(&endpoint)? {
                    return Ok(Some(pin));
                }
                Ok(discovery::probe_certificate(endpoint, timeouts).await)
            }
        });
        let pins = futures::future::try_join_all(probes).await?;
        let members: Vec<_> = hosts
            .into_iter()
            .zip(pins)
            .map(|((r, h), pin)| (r, h, pin))
            .collect();

        // The watcher's token comes before the sync, so no change falls between them.
        let token = EventWatcher::current_token(&session, &pool_ref).await?;
        self.secrets.store(&pool.uuid, &credentials.password)?;
        self.catalog.record_pool(&NewPool {
            reference: &pool_ref,
            record: &pool,
            port,
            username: &credentials.username,
            hosts: &members,
        })?;
        let report = sync::full_sync(&self.catalog, &pool.uuid, &session).await?;
        tracing::info!(pool = %pool.uuid, master = %session.endpoint(), hosts = members.len(), objects = report.objects, "pool added");
        self.spawn_watcher(&pool.uuid, Some(watch::Connected { session, token }));
        self.added(&pool.uuid)
    }

    /// Forgets the pool of the host `id` (uuid or address): the A3 manages pools as a
    /// whole, so removing any of its hosts removes the pool, its inventory and its password.
    pub fn remove_host(&self, id: &str) -> Result<RemovedPool, InventoryError> {
        let host = self
            .catalog
            .find_host(id)?
            .ok_or_else(|| InventoryError::UnknownHost(id.to_owned()))?;
        if let Some(cancel) = self.lock_watchers().remove(&host.pool_uuid) {
            cancel.cancel();
        }
        let hosts = self
            .catalog
            .remove_pool(&host.pool_uuid)?
            .ok_or_else(|| InventoryError::UnknownPool(host.pool_uuid.clone()))?;
        self.secrets.remove(&host.pool_uuid)?;
        tracing::info!(pool = %host.pool_uuid, "pool removed");
        Ok(RemovedPool {
            pool_uuid: host.pool_uuid,
            pool_name: host.pool_name,
            hosts,
        })
    }

    /// Re-trusts a host whose certificate changed: pins the certificate it presents now
    /// and reconnects the pool's watcher.
    pub async fn trust_host(&self, id: &str) -> Result<Trusted, InventoryError> {
        let host = self
            .catalog
            .find_host(id)?
            .ok_or_else(|| InventoryError::UnknownHost(id.to_owned()))?;
        let endpoint = host.endpoint();
        let current = discovery::probe_certificate(endpoint.clone(), self.timeouts)
            .await
            .ok_or_else(|| InventoryError::NoCertificate {
                host: endpoint.to_string(),
            })?;
        self.catalog.set_pin(&host.uuid, current)?;
        tracing::info!(host = %endpoint, previous = ?host.cert_sha256, %current, "certificate re-trusted");
        self.spawn_watcher(&host.pool_uuid, None);
        Ok(Trusted {
            uuid: host.uuid,
            address: endpoint.to_string(),
            previous: host.cert_sha256,
            current: current.to_string(),
        })
    }

    /// Re-reads a pool's whole inventory now (the watcher keeps it current anyway; this is
    /// "refresh now", and what `cargo xtask bench xapi` times).
    pub async fn resync(&self, pool_uuid: &str) -> Result<sync::SyncReport, InventoryError> {
        let (session, _) = self.connect(pool_uuid).await?;
        let report = sync::full_sync(&self.catalog, pool_uuid, &session).await;
        session.logout().await;
        report
    }

    /// A session on a recorded pool's current master, failing over to the other hosts when
    /// the master is unreachable. Returns the pool's ref too.
    pub async fn connect(&self, pool_uuid: &str) -> Result<(Session, String), InventoryError> {
        let access = self
            .catalog
            .pool_access(pool_uuid)?
            .ok_or_else(|| InventoryError::UnknownPool(pool_uuid.to_owned()))?;
        let credentials = Credentials {
            username: access.username.clone(),
            password: self.secrets.load(pool_uuid)?,
        };
        discovery::connect_pool(&self.catalog, &access, &credentials, self.timeouts).await
    }

    fn added(&self, pool_uuid: &str) -> Result<AddedPool, InventoryError> {
        let pool = self
            .catalog
            .list_pools()?
            .into_iter()
            .find(|p| p.uuid == pool_uuid)
            .ok_or_else(|| InventoryError::UnknownPool(pool_uuid.to_owned()))?;
        let hosts = self
            .catalog
            .list_hosts()?
            .into_iter()
            .filter(|h| h.pool_uuid == pool_uuid)
            .collect();
        Ok(AddedPool { pool, hosts })
    }

    fn spawn_watcher(&self, pool_uuid: &str, initial: Option<watch::Connected>) {
        let cancel = self.shutdown.child_token();
        if let Some(old) = self
            .lock_watchers()
            .insert(pool_uuid.to_owned(), cancel.clone())
        {
            old.cancel();
        }
        tokio::spawn(watch::run(
            self.clone(),
            pool_uuid.to_owned(),
            cancel,
            initial,
        ));
    }

    fn lock_watchers(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }
}
