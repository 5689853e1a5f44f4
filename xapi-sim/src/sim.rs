//! Starting, running and stopping a simulated pool.
//!
//! [`Sim::start`] loads or builds the state, then opens one HTTPS listener per host on
//! its own loopback address, all on one port. The listeners share [`Shared`]: the state
//! behind one lock, the dispatch table, and the event notifier. A background task saves
//! the state shortly after it changes; [`Sim::shutdown`] saves it a last time.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::abd;
use crate::api::Api;
use crate::disks::{DiskStore, DiskStoreState};
use crate::errors::ApiError;
use crate::inventory::{self, Plan};
use crate::model::{Db, Ref, new_ref};
use crate::persist::{self, PersistError, Saved};
use crate::server;
use crate::state::State;
use crate::tls::{self, TlsError};

/// How often changed state is written out.
const SAVE_INTERVAL: Duration = Duration::from_millis(250);

/// How to start a simulated pool.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where state, VDI content and certificates live; reused across restarts.
    pub state_dir: PathBuf,
    /// Hosts in a new pool (ignored when the state directory has a pool).
    pub hosts: usize,
    /// Demo VMs in a new pool (ignored when the state directory has a pool).
    pub vms: usize,
    /// Host 1's address; host i listens on the i-th next one.
    pub address: Ipv4Addr,
    /// The port every host listens on; 0 lets the OS pick one for host 1.
    pub port: u16,
    /// The root password; `None` keeps the saved one or generates one.
    pub password: Option<String>,
    /// Size of each demo VM's first disk in bytes.
    pub disk_size: u64,
    /// The `abd-agent` binary: with the process backend, ABD VMs run it as a process
    /// ([`crate::abd::process`]); without it they start with no backend.
    pub abd_agent: Option<PathBuf>,
    /// What runs ABD VMs.
    pub abd_backend: AbdBackend,
}

/// What runs ABD VMs (`--abd-backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AbdBackend {
    /// The `abd-agent` binary as a process (with `--abd-agent`).
    #[default]
    Process,
    /// The VM's boot disk (the ABD image) under qemu TCG, disks hot-plugged through QMP.
    Qemu,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            state_dir: PathBuf::from("xapi-sim-state"),
            hosts: 3,
            vms: 10,
            address: Ipv4Addr::new(127, 0, 0, 11),
            port: 443,
            password: None,
            disk_size: 64 << 20,
            abd_agent: None,
            abd_backend: AbdBackend::Process,
        }
    }
}

/// Why the simulator could not start or a control action failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The state directory could not be read or written.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// A host certificate could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A listener could not be opened.
    #[error(
        "host {address}: cannot listen on port {port}: {source}; pick another --port or --address"
    )]
    Bind {
        /// The host address.
        address: String,
        /// The port.
        port: u16,
        /// The cause.
        source: std::io::Error,
    },
    /// The state directory could not be prepared.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Building the initial pool failed.
    #[error("building the initial pool: {0}")]
    Build(ApiError),
    /// A configuration value is unusable.
    #[error("{0}")]
    Config(String),
}

/// One host as clients reach it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostInfo {
    /// Its address.
    pub address: String,
    /// Its XAPI URL, `https://address:port/`.
    pub url: String,
    /// Its uuid.
    pub uuid: String,
    /// Its ref.
    #[serde(rename = "ref")]
    pub r: Ref,
    /// SHA-256 of its TLS certificate, hex.
    pub fingerprint: String,
}

/// Runs blocking work without stalling a multi-threaded runtime's worker: the worker's
/// queued tasks move to another thread while `f` waits.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// What all listeners share.
pub struct Shared {
    /// The dispatch table.
    pub api: Api,
    state: Mutex<State>,
    /// Woken on every change, for `event.from` waiters.
    pub events: Notify,
    dirty: AtomicBool,
    /// Serialises saves: the periodic one and the one at shutdown share a temp file.
    saving: Mutex<()>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The port all hosts listen on.
    pub port: u16,
    listeners: Mutex<HashMap<Ref, JoinHandle<()>>>,
}

impl Shared {
    /// Locks the state. A panic while holding the lock leaves the state as it was at that
    /// point, which is still consistent enough to serve; so poisoning is ignored.
    ///
    /// Disk I/O runs under the lock, and on an NFS SR that I/O waits for the SR's server.
    /// A worker thread that blocked here would strand the tasks queued on it, the SR
    /// server's among them when it shares this runtime (in-process tests), so a contended
    /// lock is waited for through [`blocking`].
    pub fn lock(&self) -> MutexGuard<'_, State> {
        let guard = match self.state.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::Poisoned(e)) => Err(e),
            Err(TryLockError::WouldBlock) => blocking(|| self.state.lock()),
        };
        guard.unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the state changed: wakes event waiters and schedules a save.
    pub fn changed(&self) {
        self.dirty.store(true, Ordering::Release);
        self.events.notify_waiters();
    }

    fn tls_dir(&self) -> PathBuf {
        self.state_dir.join("tls")
    }

    /// The TLS identity of a host.
    pub fn host_tls(&self, host: &str) -> Result<tls::HostTls, SimError> {
        let (uuid, addr) = {
            let st = self.lock();
            let uuid = st.db.str_field("host", host, "uuid").unwrap_or_default();
            (uuid, st.host_address(host).unwrap_or_default())
        };
        Ok(tls::load_or_create(&self.tls_dir(), &uuid, &addr)?)
    }

    /// Whether a host's listener is running.
    pub fn is_up(&self, host: &str) -> bool {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .is_some_and(|h| !h.is_finished())
    }

    /// Opens a host's listener (no-op if it is up).
    pub fn host_up(self: &Arc<Self>, host: &str) -> Result<(), SimError> {
        if self.is_up(host) {
            return Ok(());
        }
        let address = self.lock().host_address(host).map_err(SimError::Build)?;
        let listener = bind(&address, self.port)?;
        self.serve(host, listener)
    }

    /// Serves `host` on an open listener.
    fn serve(self: &Arc<Self>, host: &str, listener: TcpListener) -> Result<(), SimError> {
        let tls = self.host_tls(host)?;
        let task = tokio::spawn(server::accept_loop(
            listener,
            tls.config,
            self.clone(),
            host.to_owned(),
        ));
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host.to_owned(), task);
        self.set_live(host, true);
        Ok(())
    }

    /// Records a host's liveness in its `host_metrics`, as the master does after
    /// missing (or getting back) the host's heartbeats.
    fn set_live(&self, host: &str, live: bool) {
        {
            let mut st = self.lock();
            let Ok(metrics) = st.db.str_field("host", host, "metrics") else {
                return;
            };
            if st
                .db
                .field("host_metrics", &metrics, "live")
                .ok()
                .and_then(|v| v.as_bool())
                == Some(live)
            {
                return;
            }
            let _ = st.db.set("host_metrics", &metrics, "live", live);
        }
        self.changed();
    }

    /// Closes a host's listener and drops its connections: the host refuses connections
    /// once this returns, and its `host_metrics` say it is not live.
    pub async fn host_down(&self, host: &str) {
        self.stop_listener(host).await;
        self.set_live(host, false);
    }

    async fn stop_listener(&self, host: &str) {
        let task = self
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(host);
        if let Some(task) = task {
            task.abort();
            // Wait until the task, and with it the listening socket, is gone.
            let _ = task.await;
        }
    }

    /// Gives a host a new certificate and restarts its listener with it.
    pub async fn new_certificate(self: &Arc<Self>, host: &str) -> Result<(), SimError> {
        let (uuid, addr) = {
            let st = self.lock();
            (
                st.db
                    .str_field("host", host, "uuid")
                    .map_err(SimError::Build)?,
                st.host_address(host).map_err(SimError::Build)?,
            )
        };
        tls::regenerate(&self.tls_dir(), &uuid, &addr)?;
        let was_up = self.is_up(host);
        self.stop_listener(host).await;
        if was_up {
            self.host_up(host)?;
        }
        Ok(())
    }

    /// Writes the state if it changed since the last save.
    pub fn save_if_dirty(&self) -> Result<(), PersistError> {
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let bytes = {
            let st = self.lock();
            persist::serialize(&Saved {
                pool: st.pool.clone(),
                username: st.username.clone(),
                password: st.password.clone(),
                next_domid: st.next_domid,
                next_event: st.db.last_event_id() + 1,
                tables: st.db.tables().clone(),
                disks: st.disks.state(),
            })
        };
        persist::write(&self.state_dir, &bytes).inspect_err(|_| {
            self.dirty.store(true, Ordering::Release);
        })
    }

    /// The hosts as clients reach them, in address order.
    pub fn host_infos(&self) -> Vec<HostInfo> {
        let hosts: Vec<(Ref, String, String)> = {
            let st = self.lock();
            st.hosts()
                .into_iter()
                .map(|h| {
                    let uuid = st.db.str_field("host", &h, "uuid").unwrap_or_default();
                    let addr = st.host_address(&h).unwrap_or_default();
                    (h, uuid, addr)
                })
                .collect()
        };
        hosts
            .into_iter()
            .map(|(r, uuid, address)| HostInfo {
                url: format!("https://{address}:{}/", self.port),
                fingerprint: self.host_tls(&r).map(|t| t.fingerprint).unwrap_or_default(),
                address,
                uuid,
                r,
            })
            .collect()
    }
}

/// A running simulated pool.
pub struct Sim {
    shared: Arc<Shared>,
    saver: JoinHandle<()>,
    abd: Option<abd::Backend>,
    /// The hosts, in address order.
    pub hosts: Vec<HostInfo>,
    /// The login user.
    pub username: String,
    /// The login password.
    pub password: String,
    /// The port every host listens on.
    pub port: u16,
}

impl Sim {
    /// Loads or builds the pool in `config.state_dir` and opens every host's listener.
    pub async fn start(config: SimConfig) -> Result<Sim, SimError> {
        if config.hosts == 0 {
            return Err(SimError::Config("--hosts must be at least 1".into()));
        }
        let dir = &config.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| SimError::StateDir {
            path: dir.clone(),
            source,
        })?;
        let abd_kind = abd_kind(&config)?;
        let state = load_or_build(&config)?;
        let username = state.username.clone();
        let password = state.password.clone();
        let hosts = state.hosts();
        let addresses = hosts
            .iter()
            .map(|h| state.host_address(h).map_err(SimError::Build))
            .collect::<Result<Vec<_>, _>>()?;
        let (port, listeners) = bind_all(&addresses, config.port)?;
        let shared = Arc::new(Shared {
            api: Api::new(),
            state: Mutex::new(state),
            events: Notify::new(),
            dirty: AtomicBool::new(true),
            saving: Mutex::new(()),
            state_dir: dir.clone(),
            port,
            listeners: Mutex::new(HashMap::new()),
        });
        shared.save_if_dirty()?;
        for (h, listener) in hosts.iter().zip(listeners) {
            shared.serve(h, listener)?;
        }
        let saver = tokio::spawn(save_loop(shared.clone()));
        let abd = abd_kind.map(|kind| abd::Backend::start(shared.clone(), kind, dir.join("abd")));
        Ok(Sim {
            abd,
            hosts: shared.host_infos(),
            shared,
            saver,
            username,
            password,
            port,
        })
    }

    /// The state shared with the listeners (for in-process tests and the control API).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The current master's address.
    pub fn master_address(&self) -> String {
        let st = self.shared.lock();
        st.master()
            .and_then(|m| st.host_address(&m))
            .unwrap_or_default()
    }

    /// The URL of the current master.
    pub fn master_url(&self) -> String {
        format!("https://{}:{}/", self.master_address(), self.port)
    }

    /// The one JSON line `xapi-sim serve` prints when ready.
    pub fn ready_line(&self) -> serde_json::Value {
        serde_json::json!({
            "master": self.master_address(),
            "port": self.port,
            "hosts": self.hosts,
            "username": self.username,
            "password": self.password,
            "state_dir": self.shared.state_dir,
        })
    }

    /// Stops every listener and ABD process, and saves the state.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        self.saver.abort();
        if let Some(abd) = self.abd.take() {
            abd.shutdown().await;
        }
        let hosts: Vec<Ref> = self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for h in hosts {
            self.shared.stop_listener(&h).await;
        }
        self.shared.save_if_dirty()?;
        Ok(())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.saver.abort();
        for (_, task) in self
            .shared
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            task.abort();
        }
    }
}

async fn save_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SAVE_INTERVAL);
    loop {
        tick.tick().await;
        // Writing and fsyncing megabytes of state blocks; keep it off the async workers.
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.save_if_dirty()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("saving the simulator state: {e}"),
            Err(e) => tracing::error!("saving the simulator state: {e}"),
        }
    }
}

/// The ABD backend the config asks for, checked.
fn abd_kind(config: &SimConfig) -> Result<Option<abd::Kind>, SimError> {
    match (config.abd_backend, &config.abd_agent) {
        (AbdBackend::Process, None) => Ok(None),
        (AbdBackend::Process, Some(agent)) if !agent.is_file() => Err(SimError::Config(format!(
            "--abd-agent {}: no such file; build it with `cargo build -p abd-agent`",
            agent.display()
        ))),
        (AbdBackend::Process, Some(agent)) => Ok(Some(abd::Kind::Process {
            agent: agent.clone(),
        })),
        (AbdBackend::Qemu, Some(_)) => Err(SimError::Config(
            "--abd-agent is for the process backend; the qemu backend boots the ABD's disk, \
             whose /init is the agent"
                .into(),
        )),
        (AbdBackend::Qemu, None) => {
            abd::qemu::check_installed().map_err(SimError::Config)?;
            Ok(Some(abd::Kind::Qemu))
        }
    }
}

fn load_or_build(config: &SimConfig) -> Result<State, SimError> {
    let dir = &config.state_dir;
    let vdi_dir = dir.join("vdis");
    let state_dir_err = |source| SimError::StateDir {
        path: vdi_dir.clone(),
        source,
    };
    if let Some(saved) = persist::load(dir)? {
        let mut db = Db::new(saved.next_event);
        db.load_tables(saved.tables);
        let mut st = State {
            db,
            disks: DiskStore::open(&vdi_dir, saved.disks).map_err(state_dir_err)?,
            sessions: HashMap::new(),
            pool: saved.pool,
            username: saved.username,
            password: saved.password,
            next_domid: saved.next_domid,
            abd: None,
            faults: Vec::new(),
            detaching: Default::default(),
            knobs: Default::default(),
        };
        if let Some(pw) = &config.password {
            st.password = pw.clone();
        }
        return Ok(st);
    }
    let mut st = State {
        db: Db::new(1),
        disks: DiskStore::open(&vdi_dir, DiskStoreState::default()).map_err(state_dir_err)?,
        sessions: HashMap::new(),
        pool: new_ref(),
        username: "root".into(),
        password: config
            .password
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        next_domid: 1,
        abd: None,
        faults: Vec::new(),
        detaching: Default::default(),
        knobs: Default::default(),
    };
    let plan = Plan {
        hosts: config.hosts,
        vms: config.vms,
        first_address: config.address,
        disk_size: config.disk_size,
    };
    st.db.set_quiet(true);
    inventory::build(&mut st, &plan).map_err(SimError::Build)?;
    st.db.set_quiet(false);
    Ok(st)
}

/// How many ports to try when the OS-picked port of host 1 is taken on another host's
/// address.
const PORT_ATTEMPTS: usize = 8;

/// Binds every host address on one port. With port 0 the OS picks host 1's port and the
/// others use the same one; if that port is taken on another address, a new one is tried.
fn bind_all(addresses: &[String], port: u16) -> Result<(u16, Vec<TcpListener>), SimError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let first = bind(&addresses[0], port)?;
        let chosen = first
            .local_addr()
            .map_err(|source| SimError::Bind {
                address: addresses[0].clone(),
                port,
                source,
            })?
            .port();
        let mut listeners = vec![first];
        let mut taken = None;
        for a in &addresses[1..] {
            match bind(a, chosen) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    taken = Some(e);
                    break;
                }
            }
        }
        match taken {
            None => return Ok((chosen, listeners)),
            Some(e) if port != 0 || attempt == PORT_ATTEMPTS => return Err(e),
            Some(_) => continue,
        }
    }
}

/// Binds `address:port` with SO_REUSEADDR, so a host brought back up can rebind at once.
fn bind(address: &str, port: u16) -> Result<TcpListener, SimError> {
    let err = |source| SimError::Bind {
        address: address.to_owned(),
        port,
        source,
    };
    let ip: Ipv4Addr = address
        .parse()
        .map_err(|_| SimError::Config(format!("host address {address:?} is not IPv4")))?;
    let socket = TcpSocket::new_v4().map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(SocketAddr::from((ip, port))).map_err(err)?;
    socket.listen(1024).map_err(err)
}
