//! Port 2811: the QUIC endpoint ABD agents connect to, and its TLS/TCP fallback
//! (DESIGN.md §4).
//!
//! Who does what:
//! - [`endpoint`]: socket, TLS (from [`crate::pki`]) and transport tuning;
//! - [`tcp`]: the fallback's listener: one TLS connection per stream;
//! - [`conn`]: one task per connection: enrollment, or the control stream plus data
//!   streams; an error ends that connection only;
//! - [`backup`], [`restore`]: the A3's half of each job's data streams;
//! - [`storage`]: the calls into the store, all through `spawn_blocking`;
//! - [`jobs`]: job status for the API and CLI;
//! - [`wire`]: frames on streams;
//! - [`error`]: why a job could not start, a stream or connection ended, or the port
//!   could not open.
//!
//! Jobs are dispatched to the connected agent of an ABD id. A job's version is committed
//! only when the agent reports success *and* the A3's own bookkeeping says every block is
//! accounted for and every needed chunk stored; an agent that disconnects, or an A3 that
//! shuts down, fails its jobs, and dropping the store session aborts them.

pub mod backup;
pub mod conn;
pub mod endpoint;
pub mod error;
pub mod hash;
pub mod jobs;
pub mod restore;
pub mod storage;
pub mod tcp;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use a3_shared::proto::{A3Msg, BackupJob, CbtBitmap, Geometry, RestoreJob};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pki::Pki;
use crate::store::Store;
pub use error::{ConnError, DispatchError, StartError, StreamError};
pub use jobs::{JobState, JobStatus, Jobs};
use storage::StoreHandle;

/// At most this many agent connections at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 256;

/// A connected agent, as the dispatcher sees it.
#[derive(Clone)]
struct AgentLink {
    conn_id: usize,
    ctl: mpsc::UnboundedSender<A3Msg>,
    remote: SocketAddr,
    transport: Transport,
}

/// What carries an agent's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC on UDP 2811, the data path.
    Quic,
    /// The TLS/TCP fallback on TCP 2811.
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quic => "QUIC",
            Transport::Tcp => "TLS/TCP",
        })
    }
}

/// Where a connected agent is, and over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected {
    /// Its address.
    pub remote: SocketAddr,
    /// QUIC, or the fallback.
    pub transport: Transport,
}

/// A job's A3-side work, found by data streams through the job id.
#[derive(Clone)]
enum Active {
    Backup(Arc<backup::BackupWork>),
    Restore(Arc<restore::RestoreWork>),
    Hash(Arc<hash::HashWork>),
}

impl Active {
    fn abd(&self) -> &str {
        match self {
            Active::Backup(w) => &w.abd,
            Active::Restore(w) => &w.abd,
            Active::Hash(w) => &w.abd,
        }
    }
}

struct Inner {
    addr: SocketAddr,
    pki: Pki,
    store: StoreHandle,
    jobs: Jobs,
    agents: Mutex<HashMap<String, AgentLink>>,
    active: Mutex<HashMap<u64, Active>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    conn_ids: std::sync::atomic::AtomicUsize,
    /// The block size of new backups (`backup_block_size`).
    block_size: u32,
}

/// The running data port: dispatch jobs, list agents.
#[derive(Clone)]
pub struct DataPort {
    inner: Arc<Inner>,
}

/// A backup to dispatch.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// The ABD to run it.
    pub abd: String,
    /// The device or file on the ABD.
    pub path: String,
    /// The disk's name in the store.
    pub disk: String,
    /// The CBT bitmap (base64), for an incremental against the last committed version.
    pub cbt: Option<String>,
}

/// One disk of a VM backup: the job stores the chunks and hands the manifest back
/// ([`DiskJob::done`]) instead of committing a version of its own; the caller commits the
/// VM's version with all of its disks.
#[derive(Clone)]
pub struct DiskBackupRequest {
    /// The ABD to run it.
    pub abd: String,
    /// The device on the ABD (`xvdb`).
    pub device: String,
    /// The disk, for messages and the store's lease.
    pub label: String,
    /// The disk's size (the snapshot VDI's `virtual_size`): the agent's device must have
    /// exactly this size.
    pub size: u64,
    /// The last committed version of this disk, for an incremental.
    pub base: Option<BaseRef>,
    /// The CBT bitmap against that version (only with `base`).
    pub cbt: Option<CbtBitmap>,
    /// The VM backup's store session: its one lease covers every disk.
    pub session: Arc<crate::store::BackupSession>,
}

/// A disk job of a VM backup, dispatched.
#[derive(Debug)]
pub struct DiskJob {
    /// The data-path job, for its progress.
    pub id: u64,
    /// The disk's geometry and block list once stored, or why it failed.
    pub done: tokio::sync::oneshot::Receiver<Result<backup::DiskList, DispatchError>>,
}

/// The committed version a disk's incremental starts from.
#[derive(Debug, Clone)]
pub struct BaseRef {
    /// The version.
    pub version: crate::store::VersionId,
    /// The disk's name in it.
    pub disk: String,
}

/// A restore to dispatch.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The ABD to run it.
    pub abd: String,
    /// The version.
    pub version: String,
    /// The disk of the version (needed when it has several).
    pub disk: Option<String>,
    /// Where the ABD writes it.
    pub path: String,
}

/// What a dispatched job says about itself at once.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Dispatched {
    /// The job id.
    pub job: u64,
    /// Notes for the user (e.g. why an incremental reads the whole disk).
    pub notes: Vec<String>,
}

/// Binds QUIC on `listen` and TCP on the port QUIC got. With port 0, a port whose TCP side
/// is taken is given back and another one tried.
fn bind_both(
    listen: SocketAddr,
    tls: &Arc<rustls::ServerConfig>,
) -> Result<(quinn::Endpoint, std::net::TcpListener), StartError> {
    let mut attempts = 0;
    loop {
        let endpoint = endpoint::bind(listen, tls.clone())?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| StartError::bind(format!("UDP {listen}"), e))?;
        match tcp::listen(addr) {
            Ok(l) => return Ok((endpoint, l)),
            Err(e) if listen.port() == 0 && attempts < 16 => {
                tracing::debug!(%addr, "TCP side taken ({e}); trying another port");
                attempts += 1;
            }
            Err(e) => {
                return Err(StartError::bind(
                    format!(
                        "TCP {addr} (the TLS/TCP fallback); free that port or pick another \
                         `data_listen`"
                    ),
                    e,
                ));
            }
        }
    }
}

impl DataPort {
    /// Binds port 2811, UDP (QUIC) and TCP (the fallback) on the same port, and starts
    /// accepting; writes the bound address to `<state-dir>/data.addr`. Stops when
    /// `shutdown` is cancelled; the returned task ends once every connection is closed.
    pub async fn start(
        listen: SocketAddr,
        state_dir: &std::path::Path,
        pki: Pki,
        store: Store,
        block_size: u32,
        shutdown: CancellationToken,
    ) -> Result<(DataPort, JoinHandle<()>), StartError> {
        let tls = Arc::new(pki.server_config(&endpoint::server_names(listen))?);
        let (endpoint, tcp) = bind_both(listen, &tls)?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| StartError::bind(format!("UDP {listen}"), e))?;
        a3_shared::durable::write_private(
            &state_dir.join("data.addr"),
            format!("{addr}\n").as_bytes(),
        )?;
        let port = DataPort {
            inner: Arc::new(Inner {
                addr,
                pki,
                store: StoreHandle::new(store),
                jobs: Jobs::default(),
                agents: Mutex::new(HashMap::new()),
                active: Mutex::new(HashMap::new()),
                shutdown: shutdown.clone(),
                tasks: TaskTracker::new(),
                conn_ids: Default::default(),
                block_size,
            }),
        };
        tracing::info!(%addr, "port 2811 (QUIC, and TLS/TCP fallback) listening");
        let tcp = tokio::net::TcpListener::from_std(tcp)
            .map_err(|e| StartError::bind(format!("TCP {addr}"), e))?;
        let tcp = tokio::spawn(tcp::accept_loop(port.clone(), tcp, tls));
        let accept = tokio::spawn(port.clone().accept_loop(endpoint, tcp));
        Ok((port, accept))
    }

    /// A number for a new connection.
    fn next_conn_id(&self) -> usize {
        self.inner
            .conn_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    async fn accept_loop(self, endpoint: quinn::Endpoint, tcp: JoinHandle<()>) {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                p = limit.clone().acquire_owned() => p.expect("never closed"),
            };
            let incoming = tokio::select! {
                _ = self.inner.shutdown.cancelled() => break,
                i = endpoint.accept() => match i { Some(i) => i, None => break },
            };
            let port = self.clone();
            let conn_id = self.next_conn_id();
            self.inner.tasks.spawn(async move {
                let remote = incoming.remote_address();
                if let Err(e) = conn::handle_quic(port, incoming, conn_id).await {
                    tracing::info!(%remote, "port 2811 connection ended: {e}");
                }
                drop(permit);
            });
        }
        endpoint.close(0u32.into(), b"A3 shutting down");
        let _ = tcp.await;
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        endpoint.wait_idle().await;
        tracing::info!("port 2811 stopped");
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The PKI (enrollment, revocation).
    pub fn pki(&self) -> &Pki {
        &self.inner.pki
    }

    /// The job registry.
    pub fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    /// Connected ABD ids, with where they are and over what.
    pub fn connected(&self) -> HashMap<String, Connected> {
        self.lock_agents()
            .iter()
            .map(|(id, l)| {
                let c = Connected {
                    remote: l.remote,
                    transport: l.transport,
                };
                (id.clone(), c)
            })
            .collect()
    }

    fn lock_agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentLink>> {
        self.inner.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Active>> {
        self.inner.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn link(&self, abd: &str) -> Result<AgentLink, DispatchError> {
        self.lock_agents()
            .get(abd)
            .cloned()
            .ok_or_else(|| DispatchError::NotConnected(abd.to_owned()))
    }

    /// Starts a backup on the ABD's agent.
    pub async fn start_backup(&self, req: BackupRequest) -> Result<Dispatched, DispatchError> {
        let link = self.link(&req.abd)?;
        let mut notes = Vec::new();
        let cbt = match &req.cbt {
            Some(text) => Some(
                CbtBitmap::from_base64(text)
                    .map_err(|e| DispatchError::BadRequest(format!("--cbt: {e}")))?,
            ),
            None => None,
        };
        let block_size = self.inner.block_size;
        let base = match &cbt {
            Some(_) => {
                let base = self.inner.store.last_version(&req.disk).await?;
                if base.is_none() {
                    notes.push(format!(
                        "disk '{}' has no committed version yet: the CBT bitmap is ignored and \
                         the whole disk is read",
                        req.disk
                    ));
                }
                base.map(|version| BaseRef {
                    version,
                    disk: req.disk.clone(),
                })
            }
            None => None,
        };
        let session = self.inner.store.begin_backup(&req.disk).await?;
        let (list, lost) = start_list(&session, base, cbt, block_size).await?;
        if lost > 0 {
            notes.push(format!(
                "{lost} block(s) of the base version are no longer in the store \
                 (quarantined as bad): they are read again"
            ));
        }
        let id = self.assign_backup(
            &link, &req.abd, req.disk, req.path, None, block_size, list, session, None,
        );
        Ok(Dispatched { job: id, notes })
    }

    /// Starts one disk of a VM backup on the ABD's agent, under the VM backup's store
    /// session; see [`DiskBackupRequest`]. The job hands its manifest back through
    /// [`DiskJob::done`] instead of committing.
    pub async fn start_disk_backup(
        &self,
        req: DiskBackupRequest,
    ) -> Result<DiskJob, DispatchError> {
        let link = self.link(&req.abd)?;
        let block_size = self.inner.block_size;
        let session = storage::BackupSession::shared(req.session);
        let (list, _) = start_list(&session, req.base, req.cbt, block_size).await?;
        let (tx, done) = tokio::sync::oneshot::channel();
        let id = self.assign_backup(
            &link,
            &req.abd,
            req.label,
            req.device,
            Some(req.size),
            block_size,
            list,
            session,
            Some(tx),
        );
        Ok(DiskJob { id, done })
    }

    /// Registers a backup job and sends its assignment to the ABD's agent; a job whose ABD
    /// is already gone fails at once.
    #[allow(clippy::too_many_arguments)]
    fn assign_backup(
        &self,
        link: &AgentLink,
        abd: &str,
        disk: String,
        device: String,
        expected_size: Option<u64>,
        block_size: u32,
        list: StartList,
        session: storage::BackupSession,
        handoff: Option<backup::Handoff>,
    ) -> u64 {
        let id = self.inner.jobs.create("backup", abd, &disk, &device);
        let work = Arc::new(backup::BackupWork::new(
            id,
            abd.to_owned(),
            disk.clone(),
            expected_size,
            block_size,
            list.base,
            list.cbt,
            list.spool,
            session,
            handoff,
        ));
        self.lock_active().insert(id, Active::Backup(work));
        let msg = A3Msg::Backup(BackupJob {
            job: id,
            device,
            disk,
            block_size,
        });
        if link.ctl.send(msg).is_err() {
            self.fail(id, &format!("ABD '{abd}' disconnected as the job started"));
        }
        id
    }

    /// Starts a restore on the ABD's agent.
    pub async fn start_restore(&self, req: RestoreRequest) -> Result<Dispatched, DispatchError> {
        let link = self.link(&req.abd)?;
        let (version, disk, geometry) = self
            .inner
            .store
            .restore_disk(&req.version, req.disk.as_deref())
            .await?;
        let label = format!("version {} disk '{}'", req.version, disk);
        let id = self
            .inner
            .jobs
            .create("restore", &req.abd, &disk, &req.path);
        let work = Arc::new(restore::RestoreWork::new(
            id,
            req.abd.clone(),
            label.clone(),
            version,
            disk,
            geometry,
            self.inner.store.clone(),
        ));
        self.lock_active().insert(id, Active::Restore(work));
        let msg = A3Msg::Restore(RestoreJob {
            job: id,
            target: req.path,
            geometry,
            label,
        });
        if link.ctl.send(msg).is_err() {
            self.fail(
                id,
                &format!("ABD '{}' disconnected as the job started", req.abd),
            );
        }
        Ok(Dispatched {
            job: id,
            notes: vec![],
        })
    }

    /// Has the ABD's agent read the whole `device` and hash it; waits for the answer (the
    /// caller bounds the wait).
    pub async fn hash_device(
        &self,
        abd: &str,
        device: &str,
    ) -> Result<hash::DeviceHash, DispatchError> {
        let link = self.link(abd)?;
        let id = self.inner.jobs.create("hash", abd, device, device);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work = Arc::new(hash::HashWork::new(abd.to_owned(), tx));
        self.lock_active().insert(id, Active::Hash(work));
        let msg = A3Msg::Hash(a3_shared::proto::HashJob {
            job: id,
            device: device.to_owned(),
        });
        if link.ctl.send(msg).is_err() {
            self.fail(id, &format!("ABD '{abd}' disconnected as the job started"));
        }
        match rx.await {
            Ok(outcome) => outcome,
            Err(_) => Err(DispatchError::Failed(format!(
                "hash job {id} on ABD '{abd}' ended without an answer"
            ))),
        }
    }

    /// Fails a job: its store session is dropped (aborted), nothing is committed. Only the
    /// caller that takes the job out of the active set says why: a lost connection fails
    /// a job from its data stream and its control stream at once, and the job's reason
    /// must be the one whose caller also handed the job its outcome.
    pub fn fail(&self, job: u64, reason: &str) {
        let was = self.lock_active().remove(&job);
        let reason = match was {
            Some(Active::Backup(w)) => {
                w.finish(Err(DispatchError::Failed(reason.to_owned())));
                format!("{reason}; no version was committed")
            }
            Some(Active::Hash(w)) => {
                w.finish(Err(DispatchError::Failed(reason.to_owned())));
                reason.to_owned()
            }
            Some(Active::Restore(_)) => reason.to_owned(),
            None => return,
        };
        if self.inner.jobs.set(
            job,
            JobState::Failed {
                reason: reason.clone(),
            },
        ) {
            tracing::warn!(job, "job failed: {reason}");
        }
    }

    fn active(&self, job: u64) -> Option<Active> {
        self.lock_active().get(&job).cloned()
    }

    /// Revokes an ABD and cuts its live connection.
    pub fn revoke(&self, abd: &str) -> Result<bool, crate::pki::PkiError> {
        let known = self.inner.pki.revoke(abd)?;
        if let Some(link) = self.lock_agents().remove(abd) {
            let _ = link.ctl.send(A3Msg::Refused {
                reason: format!("ABD '{abd}' was revoked"),
            });
        }
        Ok(known)
    }
}

/// The block list a backup starts from.
struct StartList {
    /// The base's geometry, for an incremental.
    base: Option<Geometry>,
    /// The CBT bitmap against the base, lost base blocks marked changed.
    cbt: Option<CbtBitmap>,
    /// The base's block list (lost blocks cleared), or an empty one.
    spool: crate::store::DiskSpool,
}

/// Starts a backup's block list: for a CBT incremental, the base's, streamed from its
/// manifest, whose every chunk is checked present (and so touched: GC keeps it while the
/// job runs). A base chunk quarantined since (found bad) is cleared from the list and its
/// block marked changed, so that the agent reads and sends it again and nobody takes it for
/// "same as base". Returns how many blocks that was. A base of another block size is of
/// no use: the whole disk is read.
async fn start_list(
    session: &storage::BackupSession,
    base: Option<BaseRef>,
    cbt: Option<CbtBitmap>,
    block_size: u32,
) -> Result<(StartList, u64), DispatchError> {
    if let (Some(base), Some(cbt)) = (base, cbt) {
        let (b, cbt) = session.base_spool(base.version, &base.disk, cbt).await?;
        if b.geometry.block_size == block_size {
            let list = StartList {
                base: Some(b.geometry),
                cbt: Some(cbt),
                spool: b.spool,
            };
            return Ok((list, b.lost));
        }
    }
    let list = StartList {
        base: None,
        cbt: None,
        spool: session.spool().await?,
    };
    Ok((list, 0))
}
