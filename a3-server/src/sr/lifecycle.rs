//! Each pool's `Alike_SR`, as XAPI sees it: created once per pool (a shared `nfs` SR on the
//! A3's export, one PBD per host), found again by the uuid the catalog keeps, plugged on every
//! host when the A3 starts (then scanned), and unplugged on every host on a clean shutdown, so
//! that XenCenter shows it unplugged while the A3 is away.
//!
//! Plug order follows XAPI's rule for shared SRs: the master's PBD first when plugging, last
//! when unplugging. XAPI refuses to unplug a PBD while a running VM on its host has a disk
//! of the SR attached (`VDI_IN_USE`), and the ABDs boot from `Alike_SR`: a clean shutdown
//! halts them first (hard: they keep nothing, and the A3 restarts them with a fresh token
//! when it needs them again).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use a3_shared::xapi_wire::Value;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError};
use crate::inventory::{Inventory, InventoryError};
use crate::xapi::ops;
use crate::xapi::records::HostRecord;
use crate::xapi::{Session, XapiError};

use super::EXPORT;

/// The SR's name in every pool.
pub const SR_NAME: &str = "Alike_SR";
const SR_DESCRIPTION: &str = "The A3's own SR, served by the A3 over NFS (ABD template, ABDs, \
                              instant restores). Unplugged while the A3 is stopped.";
/// How long all the unplugs of a clean shutdown may take.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(120);
/// How often pools whose SR is not fully plugged are retried.
const RETRY_EVERY: Duration = Duration::from_secs(30);

/// Errors of the SR lifecycle. Each names the pool and, where one exists, the fix.
#[derive(Debug, thiserror::Error)]
pub enum SrError {
    /// The pool is not reachable or not recorded.
    #[error("pool {pool}: {source}")]
    Pool {
        /// The pool's uuid.
        pool: String,
        /// Why.
        source: InventoryError,
    },
    /// A call failed.
    #[error("pool {pool}: Alike_SR: {source}")]
    Xapi {
        /// The pool's uuid.
        pool: String,
        /// The failed call.
        source: XapiError,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Some hosts' PBDs did not unplug.
    #[error("pool {pool}: Alike_SR did not unplug everywhere: {}", failures.join("; "))]
    Unplug {
        /// The pool's uuid.
        pool: String,
        /// Each failure, naming its host.
        failures: Vec<String>,
    },
    /// The A3's NFS server did not start, so there is nothing for the hosts to mount.
    #[error(
        "the A3's NFS server is not running ({0}); fix the cause and restart the A3 \
         (`a3-server serve`)"
    )]
    NotServing(String),
    /// PBD.plug failed on some hosts.
    #[error(
        "pool {pool}: Alike_SR {sr}: PBD.plug failed on {}; each host must reach the A3's \
         NFS server at {address}:2049 and its portmapper at {address}:111: set `sr_address` in \
         the A3's config to an address of the A3 the hosts can reach, open these ports in any \
         firewall between them, then run `a3-server sr plug`",
        failures.join("; ")
    )]
    Plug {
        /// The pool's uuid.
        pool: String,
        /// The SR's uuid.
        sr: String,
        /// The address the PBDs point at.
        address: String,
        /// `host NAME (ADDRESS): error`, one per host that failed.
        failures: Vec<String>,
    },
}

/// One host's PBD of `Alike_SR`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostPbd {
    /// The host's uuid.
    pub host_uuid: String,
    /// Its name.
    pub host_name: String,
    /// Its address.
    pub address: String,
    /// Whether the PBD is plugged (`currently_attached`); false when the host has no PBD.
    pub plugged: bool,
}

/// One pool's `Alike_SR` and its PBDs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolSr {
    /// The pool's uuid.
    pub pool_uuid: String,
    /// The pool's name.
    pub pool_name: String,
    /// The SR's uuid, once created.
    pub sr_uuid: Option<String>,
    /// What the PBDs mount (`server:serverpath`).
    pub server: Option<String>,
    /// Every host of the pool.
    pub hosts: Vec<HostPbd>,
    /// What stops it being plugged everywhere, with the fix.
    pub error: Option<String>,
}

/// A `PBD` record: the fields the lifecycle reads.
#[derive(Clone, Debug)]
struct Pbd {
    host: String,
    sr: String,
    attached: bool,
    server: String,
    serverpath: String,
}

impl Pbd {
    fn from_value(v: &Value) -> Pbd {
        let text = |f: &str| v.get_str(f).unwrap_or_default().to_owned();
        let config = |k: &str| {
            v.get("device_config")
                .and_then(|c| c.get_str(k))
                .unwrap_or_default()
                .to_owned()
        };
        Pbd {
            host: text("host"),
            sr: text("SR"),
            attached: v
                .get("currently_attached")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            server: config("server"),
            serverpath: config("serverpath"),
        }
    }
}

/// The SR lifecycle: a handle shared by the server, the API and other components.
#[derive(Clone)]
pub struct SrService {
    catalog: Catalog,
    inventory: Inventory,
    /// The address hosts use to reach the A3's NFS, when configured or bound to one address.
    address: Option<IpAddr>,
    /// `Err` when the NFS server did not start.
    serving: Result<(), Arc<str>>,
    /// The last failure per pool, for `sr status`.
    failures: Arc<Mutex<HashMap<String, String>>>,
    /// One lifecycle operation per pool at a time (host add and start-up may overlap).
    pool_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Set by a clean shutdown: nothing is plugged any more.
    stopping: Arc<AtomicBool>,
}

impl SrService {
    /// The lifecycle for SRs served at `address` (`None`: the A3's address towards each
    /// pool's master). `serving` says whether the NFS server started, and if not why.
    pub fn new(
        catalog: Catalog,
        inventory: Inventory,
        address: Option<IpAddr>,
        serving: Result<(), &super::ServeError>,
    ) -> SrService {
        SrService {
            catalog,
            inventory,
            address,
            serving: serving.map_err(|e| Arc::from(e.to_string())),
            failures: Arc::default(),
            pool_locks: Arc::default(),
            stopping: Arc::default(),
        }
    }

    /// The uuid of the pool's `Alike_SR`, once created.
    pub fn sr_uuid(&self, pool_uuid: &str) -> Result<Option<String>, CatalogError> {
        self.catalog.alike_sr(pool_uuid)
    }

    /// The ref of the pool's `Alike_SR` on `session` (a session on that pool), or `None`
    /// when the A3 has not created it yet.
    pub async fn sr_ref(
        &self,
        session: &Session,
        pool_uuid: &str,
    ) -> Result<Option<String>, SrError> {
        alike_sr(session, &self.catalog, pool_uuid).await
    }

    /// Makes sure the pool's `Alike_SR` is plugged on every host before something uses it
    /// (right after the A3 starts, [`SrService::upkeep`] may not have got to the pool yet):
    /// [`SrService::ensure`] when a PBD is detached or the SR is missing.
    pub async fn ensure_attached(&self, session: &Session, pool_uuid: &str) -> Result<(), SrError> {
        if let Some(sr_ref) = self.sr_ref(session, pool_uuid).await? {
            let pbds = pbds_of(session, &sr_ref)
                .await
                .map_err(|source| SrError::Xapi {
                    pool: pool_uuid.to_owned(),
                    source,
                })?;
            if !pbds.is_empty() && pbds.iter().all(|(_, p)| p.attached) {
                return Ok(());
            }
        }
        self.ensure(pool_uuid).await.map(drop)
    }

    /// A pool was just added: creates its `Alike_SR` (or finds it) and plugs it everywhere.
    /// Failures are logged and kept for `sr status`; the pool stays added.
    pub async fn pool_added(&self, pool_uuid: &str) {
        if let Err(e) = self.ensure(pool_uuid).await {
            tracing::error!(pool = pool_uuid, "{e}");
        }
    }

    /// Makes sure the pool has its `Alike_SR`, plugged on every host, and scanned: finds it
    /// by its recorded uuid, or adopts one on this A3's export, or creates it.
    pub async fn ensure(&self, pool_uuid: &str) -> Result<PoolSr, SrError> {
        let lock = self.pool_lock(pool_uuid);
        let _guard = lock.lock().await;
        let outcome = self.ensure_locked(pool_uuid).await;
        self.note(pool_uuid, outcome.as_ref().err());
        outcome
    }

    async fn ensure_locked(&self, pool_uuid: &str) -> Result<PoolSr, SrError> {
        if let Err(why) = &self.serving {
            return Err(SrError::NotServing(why.to_string()));
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(SrError::NotServing("the A3 is shutting down".into()));
        }
        let session = self.connect(pool_uuid).await?;
        let result = async {
            let address = self.address_for(&session).await;
            let xapi = |source| SrError::Xapi {
                pool: pool_uuid.to_owned(),
                source,
            };
            let (sr_ref, sr_uuid) = self
                .find_or_create(&session, pool_uuid, address)
                .await
                .map_err(xapi)?;
            self.plug(&session, pool_uuid, &sr_ref, &sr_uuid, address)
                .await?;
            ops::sr_scan(&session, &sr_ref).await.map_err(xapi)?;
            self.read_status(&session, pool_uuid).await.map_err(xapi)
        }
        .await;
        session.logout().await;
        result
    }

    /// At start: every pool's SR ensured, then the ones that failed retried until
    /// `shutdown` (a host that was down at boot gets its PBD plugged when it is back).
    pub async fn upkeep(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut first = true;
        loop {
            for pool in self.catalog.pool_uuids().unwrap_or_default() {
                if shutdown.is_cancelled() {
                    return;
                }
                let retry = first || self.lock_failures().contains_key(&pool);
                if retry && let Err(e) = self.ensure(&pool).await {
                    tracing::warn!(pool, "{e}");
                }
            }
            first = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY_EVERY) => {}
            }
        }
    }

    /// On a clean shutdown: unplugs every pool's `Alike_SR` on every host (bounded), so the
    /// pools show it unplugged while the A3 is away. Failures are logged.
    pub async fn unplug_everywhere(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let pools = self.catalog.pool_uuids().unwrap_or_default();
        let all = futures::future::join_all(pools.iter().map(|p| self.unplug_pool(p)));
        match tokio::time::timeout(SHUTDOWN_BOUND, all).await {
            Err(_) => tracing::error!(
                "Alike_SR: unplugging took more than {SHUTDOWN_BOUND:?}; some PBDs stay plugged"
            ),
            Ok(results) => {
                for (pool, r) in pools.iter().zip(results) {
                    match r {
                        Ok(n) => tracing::info!(pool, unplugged = n, "Alike_SR unplugged"),
                        Err(e) => tracing::error!(pool, "unplugging Alike_SR: {e}"),
                    }
                }
            }
        }
    }

    /// Unplugs the pool's SR on every host, the master last; returns how many were plugged.
    pub async fn unplug_pool(&self, pool_uuid: &str) -> Result<usize, SrError> {
        let lock = self.pool_lock(pool_uuid);
        let _guard = lock.lock().await;
        let session = self.connect(pool_uuid).await?;
        let xapi = |source| SrError::Xapi {
            pool: pool_uuid.to_owned(),
            source,
        };
        let result = async {
            let Some(sr_ref) = self.sr_ref(&session, pool_uuid).await? else {
                return Ok(0);
            };
            let master = ops::the_pool(&session).await.map_err(xapi)?.1.master;
            let mut plugged: Vec<(String, Pbd)> = pbds_of(&session, &sr_ref)
                .await
                .map_err(xapi)?
                .into_iter()
                .filter(|(_, p)| p.attached)
                .collect();
            plugged.sort_by_key(|(_, p)| p.host == master); // the master last
            let hosts = host_names(&session).await.map_err(xapi)?;
            let mut failures = Vec::new();
            if !plugged.is_empty() {
                failures.extend(halt_abds(&session).await.map_err(xapi)?);
            }
            for (pbd, p) in &plugged {
                if let Err(e) = ops::pbd_unplug(&session, pbd).await {
                    failures.push(format!("{}: {e}", describe_host(&hosts, &p.host)));
                }
            }
            if failures.is_empty() {
                Ok(plugged.len())
            } else {
                Err(SrError::Unplug {
                    pool: pool_uuid.to_owned(),
                    failures,
                })
            }
        }
        .await;
        session.logout().await;
        result
    }

    /// Per pool: the SR, and per host whether its PBD is plugged (read live from XAPI).
    pub async fn status(&self) -> Result<Vec<PoolSr>, SrError> {
        let mut out = Vec::new();
        for pool in self.catalog.list_pools()? {
            let failure = self.lock_failures().get(&pool.uuid).cloned();
            let live = async {
                let session = self.connect(&pool.uuid).await?;
                let r = self.read_status(&session, &pool.uuid).await;
                session.logout().await;
                r.map_err(|source| SrError::Xapi {
                    pool: pool.uuid.clone(),
                    source,
                })
            }
            .await;
            let mut status = match live {
                Ok(s) => s,
                Err(e) => PoolSr {
                    pool_uuid: pool.uuid.clone(),
                    pool_name: pool.name.clone(),
                    sr_uuid: self.catalog.alike_sr(&pool.uuid)?,
                    server: None,
                    hosts: Vec::new(),
                    error: Some(e.to_string()),
                },
            };
            status.pool_name = pool.name;
            if status.error.is_none() {
                status.error = failure;
            }
            out.push(status);
        }
        Ok(out)
    }

    async fn read_status(&self, session: &Session, pool_uuid: &str) -> Result<PoolSr, XapiError> {
        let sr_uuid = self.catalog.alike_sr(pool_uuid).ok().flatten();
        let mut status = PoolSr {
            pool_uuid: pool_uuid.to_owned(),
            pool_name: String::new(),
            sr_uuid: sr_uuid.clone(),
            server: None,
            hosts: Vec::new(),
            error: None,
        };
        let sr_ref = match &sr_uuid {
            None => None,
            Some(uuid) => match by_uuid(session, uuid).await {
                Ok(r) => Some(r),
                Err(e) if is_gone(&e) => {
                    status.error = Some(format!(
                        "the recorded Alike_SR {uuid} no longer exists in the pool; \
                         run `a3-server sr plug` to create a new one"
                    ));
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let pbds = match &sr_ref {
            Some(r) => pbds_of(session, r).await?,
            None => Vec::new(),
        };
        if let Some((_, p)) = pbds.first() {
            status.server = Some(format!("{}:{}", p.server, p.serverpath));
        }
        let mut hosts = session.get_all_records::<HostRecord>().await?;
        hosts.sort_by(|a, b| a.1.name_label.cmp(&b.1.name_label));
        for (host_ref, h) in hosts {
            status.hosts.push(HostPbd {
                host_uuid: h.uuid,
                host_name: h.name_label,
                address: h.address,
                plugged: pbds.iter().any(|(_, p)| p.host == host_ref && p.attached),
            });
        }
        Ok(status)
    }

    async fn connect(&self, pool_uuid: &str) -> Result<Session, SrError> {
        self.inventory
            .connect(pool_uuid)
            .await
            .map(|(s, _)| s)
            .map_err(|source| SrError::Pool {
                pool: pool_uuid.to_owned(),
                source,
            })
    }

    /// The address this pool's hosts mount: the configured one, else the A3's own address
    /// on the route to the pool master.
    async fn address_for(&self, session: &Session) -> IpAddr {
        if let Some(ip) = self.address {
            return ip;
        }
        let master = session.endpoint();
        let local = async {
            let peer = tokio::net::lookup_host((master.address.as_str(), master.port))
                .await
                .ok()?
                .next()?;
            let unspecified: IpAddr = if peer.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            let sock = tokio::net::UdpSocket::bind((unspecified, 0)).await.ok()?;
            sock.connect(peer).await.ok()?;
            Some(sock.local_addr().ok()?.ip())
        };
        local.await.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// The SR's (ref, uuid): the recorded one, else one on this A3's export, else a new one.
    async fn find_or_create(
        &self,
        session: &Session,
        pool_uuid: &str,
        address: IpAddr,
    ) -> Result<(String, String), XapiError> {
        if let Some(uuid) = self.catalog.alike_sr(pool_uuid).ok().flatten() {
            match by_uuid(session, &uuid).await {
                Ok(r) => return Ok((r, uuid)),
                Err(e) if is_gone(&e) => tracing::warn!(
                    pool = pool_uuid,
                    sr = uuid,
                    "the recorded Alike_SR no longer exists in the pool; making a new one"
                ),
                Err(e) => return Err(e),
            }
        }
        let server = address.to_string();
        // Adopt an Alike_SR on this export (the catalog was lost, or the pool re-added).
        for (sr_ref, sr) in &ops::all_records(session, "SR").await? {
            let ours = sr.get_str("type") == Some("nfs")
                && sr.get_str("name_label") == Some(SR_NAME)
                && pbds_of(session, sr_ref)
                    .await?
                    .iter()
                    .any(|(_, p)| p.server == server && p.serverpath == EXPORT);
            if ours {
                let uuid = sr.get_str("uuid").unwrap_or_default().to_owned();
                tracing::info!(
                    pool = pool_uuid,
                    sr = uuid,
                    "found Alike_SR on this A3's export"
                );
                self.record(pool_uuid, &uuid);
                return Ok((sr_ref.clone(), uuid));
            }
        }
        let (_, pool) = ops::the_pool(session).await?;
        let (sr_ref, uuid) = ops::sr_create_nfs(
            session,
            &pool.master,
            &server,
            EXPORT,
            SR_NAME,
            SR_DESCRIPTION,
        )
        .await?;
        self.record(pool_uuid, &uuid);
        tracing::info!(pool = pool_uuid, sr = uuid, %server, "Alike_SR created");
        Ok((sr_ref, uuid))
    }

    /// Plugs every unplugged PBD of the SR, the master's first; a failure names its host.
    async fn plug(
        &self,
        session: &Session,
        pool_uuid: &str,
        sr_ref: &str,
        sr_uuid: &str,
        address: IpAddr,
    ) -> Result<(), SrError> {
        let xapi = |source| SrError::Xapi {
            pool: pool_uuid.to_owned(),
            source,
        };
        let master = ops::the_pool(session).await.map_err(xapi)?.1.master;
        let mut unplugged: Vec<(String, Pbd)> = pbds_of(session, sr_ref)
            .await
            .map_err(xapi)?
            .into_iter()
            .filter(|(_, p)| !p.attached)
            .collect();
        unplugged.sort_by_key(|(_, p)| p.host != master); // the master first
        if unplugged.is_empty() {
            return Ok(());
        }
        let hosts = host_names(session).await.map_err(xapi)?;
        let mut failures = Vec::new();
        for (pbd, p) in &unplugged {
            match ops::pbd_plug(session, pbd).await {
                Ok(_) => {
                    tracing::info!(pool = pool_uuid, host = %describe_host(&hosts, &p.host), "Alike_SR plugged")
                }
                Err(e) => failures.push(format!("{}: {e}", describe_host(&hosts, &p.host))),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            let server = unplugged
                .first()
                .map_or_else(|| address.to_string(), |(_, p)| p.server.clone());
            Err(SrError::Plug {
                pool: pool_uuid.to_owned(),
                sr: sr_uuid.to_owned(),
                address: server,
                failures,
            })
        }
    }

    fn record(&self, pool_uuid: &str, sr_uuid: &str) {
        let now = crate::util::clock::unix_now();
        if let Err(e) = self.catalog.set_alike_sr(pool_uuid, sr_uuid, now) {
            // The SR exists in the pool; the next ensure adopts it by its export.
            tracing::error!(
                pool = pool_uuid,
                sr = sr_uuid,
                "cannot record Alike_SR: {e}"
            );
        }
    }

    fn note(&self, pool_uuid: &str, error: Option<&SrError>) {
        let mut failures = self.lock_failures();
        match error {
            Some(e) => failures.insert(pool_uuid.to_owned(), e.to_string()),
            None => failures.remove(pool_uuid),
        };
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pool_lock(&self, pool_uuid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.pool_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(pool_uuid.to_owned())
            .or_default()
            .clone()
    }
}

/// The ref of the pool's `Alike_SR` on `session` (a session on that pool): the SR whose uuid
/// the catalog records; `None` when the A3 has not created it yet, or it is gone.
pub async fn alike_sr(
    session: &Session,
    catalog: &Catalog,
    pool_uuid: &str,
) -> Result<Option<String>, SrError> {
    let Some(uuid) = catalog.alike_sr(pool_uuid)? else {
        return Ok(None);
    };
    match by_uuid(session, &uuid).await {
        Ok(r) => Ok(Some(r)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(SrError::Xapi {
            pool: pool_uuid.to_owned(),
            source: e,
        }),
    }
}

/// Whether an error says the SR does not exist (any more).
fn is_gone(e: &XapiError) -> bool {
    match e {
        XapiError::HandleInvalid { .. } => true,
        XapiError::Api { code, .. } => code == "UUID_INVALID",
        _ => false,
    }
}

async fn by_uuid(session: &Session, uuid: &str) -> Result<String, XapiError> {
    ops::by_uuid(session, "SR", uuid).await
}

/// Halts the pool's running ABD VMs; returns the failures, naming each ABD.
async fn halt_abds(session: &Session) -> Result<Vec<String>, XapiError> {
    let mut failures = Vec::new();
    for (vm, rec) in ops::all_records(session, "VM").await? {
        let Some(abd) = ops::map_key(&rec, "other_config", ops::ABD_KEY) else {
            continue;
        };
        if ops::text(&rec, "power_state") != "Running" {
            continue;
        }
        match ops::vm_hard_shutdown(session, &vm).await {
            Ok(_) => tracing::info!(abd, "ABD halted: its disk is on Alike_SR"),
            Err(e) => failures.push(format!("halting ABD '{abd}': {e}")),
        }
    }
    Ok(failures)
}

/// The SR's PBDs, as (ref, record).
async fn pbds_of(session: &Session, sr_ref: &str) -> Result<Vec<(String, Pbd)>, XapiError> {
    Ok(ops::all_records(session, "PBD")
        .await?
        .iter()
        .map(|(r, v)| (r.clone(), Pbd::from_value(v)))
        .filter(|(_, p)| p.sr == sr_ref)
        .collect())
}

async fn host_names(session: &Session) -> Result<HashMap<String, HostRecord>, XapiError> {
    Ok(session
        .get_all_records::<HostRecord>()
        .await?
        .into_iter()
        .collect())
}

fn describe_host(hosts: &HashMap<String, HostRecord>, host_ref: &str) -> String {
    match hosts.get(host_ref) {
        Some(h) => format!("host {} ({})", h.name_label, h.address),
        None => format!("host {host_ref}"),
    }
}
