//! The process backend for ABD VMs (CONTRACTS.md C2): an ABD VM started while the
//! simulator knows the `abd-agent` binary runs that binary as a process, handed its VM's
//! xenstore and hot-plugged disks the way a hypervisor hands them to a guest.
//!
//! - An ABD is a VM whose `xenstore_data` holds `vm-data/abd/a3` (its boot config).
//! - Per running ABD, `<state-dir>/abd/<vm-uuid>/` holds `xenbus.sock` ([`xenstore`]),
//!   `dev/` ([`devices`]), `state/` (the agent's key and certificate), `agent.log` and,
//!   for DHCP, `lease`.
//! - The agent runs as `abd-agent run --xenbus DIR/xenbus.sock --dev-dir DIR/dev
//!   --state-dir DIR/state`, with `ABD_SIM_DHCP=127.0.4.x/24` when its config says
//!   `ip=dhcp`: the simulator's "DHCP server" leases 127.0.4.2..=254, one address per
//!   running ABD, freed at shutdown.
//!
//! XAPI handlers run under the state lock and must not wait, so they only send an
//! [`Action`] through the [`Hook`] kept in the state; one actor task per running ABD
//! carries the actions out in order (spawning, copying disks, stopping). A process that
//! dies while its VM is Running (a crash, or the `/sim/` kill) is restarted in the same
//! VM with its state, as a guest whose init died reboots (`actions_after_crash=restart`).
//! Processes never outlive the simulator: they are killed at shutdown and on drop, and
//! get SIGKILL from the kernel if the simulator dies (`PR_SET_PDEATHSIG`). A restarted
//! simulator respawns the ABDs its state records as Running.

pub mod devices;
pub mod xenstore;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use a3_shared::xapi_wire::{Struct, Value};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::model::Ref;
use crate::sim::Shared;
use crate::state::State;

use devices::Device;

/// The key that marks a VM as an ABD.
pub const ABD_KEY: &str = "vm-data/abd/a3";
/// The boot-config key saying how the ABD gets its address.
const IP_KEY: &str = "vm-data/abd/ip";
/// The environment variable carrying a DHCP lease to the agent.
pub const DHCP_ENV: &str = "ABD_SIM_DHCP";
/// The simulated DHCP network: 127.0.4.0/24, leases .2 to .254.
const LEASE_NET: [u8; 3] = [127, 0, 4];
const LEASE_PREFIX: u8 = 24;
/// How long a clean shutdown waits for the agent after SIGTERM before SIGKILL.
const CLEAN_STOP: Duration = Duration::from_secs(10);
/// Restart delay after a crash, doubling up to the cap while it keeps crashing.
const RESTART_FIRST: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// What the XAPI handlers ask of the backend.
#[derive(Debug)]
pub enum Action {
    /// `VM.start` of an ABD (or a respawn after a simulator restart).
    Start {
        /// The VM.
        vm: Ref,
        /// True when the simulator restarted: keep the VM's directory and devices.
        respawn: bool,
    },
    /// `VM.clean_shutdown` (SIGTERM, then SIGKILL after a while) or `hard_shutdown`.
    Stop {
        /// The VM.
        vm: Ref,
        /// SIGKILL at once.
        hard: bool,
    },
    /// `VBD.plug` on a running VM.
    Plug {
        /// The VM.
        vm: Ref,
        /// The VBD.
        vbd: Ref,
    },
    /// `VBD.unplug` on a running VM.
    Unplug {
        /// The VM.
        vm: Ref,
        /// The VBD.
        vbd: Ref,
    },
    /// The `/sim/` kill: SIGKILL the process without XAPI knowing; the reply is its pid.
    Kill {
        /// The VM.
        vm: Ref,
        /// Where the pid goes (`None`: no process).
        reply: oneshot::Sender<Option<u32>>,
    },
    /// The simulator stops: kill every process, keep the directories for a respawn.
    Shutdown {
        /// Signalled when every process is gone.
        done: oneshot::Sender<()>,
    },
}

/// The handlers' end of the backend, kept in [`State`].
#[derive(Clone)]
pub struct Hook(mpsc::UnboundedSender<Action>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("abd::Hook")
    }
}

impl Hook {
    /// Queues an action (never blocks; dropped when the backend is gone).
    pub fn send(&self, action: Action) {
        let _ = self.0.send(action);
    }
}

/// Sends `action` when the simulator runs ABDs as processes.
pub fn notify(st: &State, action: Action) {
    if let Some(hook) = &st.abd {
        hook.send(action);
    }
}

/// Whether a VM record is an ABD.
pub fn is_abd(rec: &Struct) -> bool {
    rec.get("xenstore_data")
        .and_then(Value::as_struct)
        .is_some_and(|m| m.contains_key(ABD_KEY))
}

/// Pids of running agents, for killing them synchronously on drop.
type Pids = Arc<Mutex<HashMap<Ref, u32>>>;

/// The running backend, owned by the [`crate::Sim`].
pub struct Backend {
    hook: Hook,
    task: JoinHandle<()>,
    pids: Pids,
}

impl Backend {
    /// Starts the backend for `agent`, keeping VM directories under `root`, and respawns
    /// the ABDs the state records as Running.
    pub fn start(shared: Arc<Shared>, agent: PathBuf, root: PathBuf) -> Backend {
        let (tx, rx) = mpsc::unbounded_channel();
        let hook = Hook(tx);
        let pids = Pids::default();
        let running: Vec<Ref> = {
            let mut st = shared.lock();
            st.abd = Some(hook.clone());
            st.db
                .table("VM")
                .filter(|(_, rec)| {
                    is_abd(rec) && rec.get("power_state").and_then(Value::as_str) == Some("Running")
                })
                .map(|(r, _)| r.clone())
                .collect()
        };
        for vm in running {
            hook.send(Action::Start { vm, respawn: true });
        }
        let dispatcher = Dispatcher {
            shared,
            agent,
            root,
            leases: Arc::default(),
            pids: pids.clone(),
            actors: HashMap::new(),
            stopping: HashMap::new(),
        };
        Backend {
            hook,
            task: tokio::spawn(dispatcher.run(rx)),
            pids,
        }
    }

    /// The handlers' end.
    pub fn hook(&self) -> &Hook {
        &self.hook
    }

    /// Stops every agent (the VMs stay Running in the state) and the backend.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        self.hook.send(Action::Shutdown { done });
        let _ = tokio::time::timeout(CLEAN_STOP * 2, wait).await;
        self.kill_all();
        self.task.abort();
    }

    /// SIGKILLs every agent still known; for `Drop`, which cannot wait.
    pub fn kill_all(&self) {
        for (_, pid) in self.pids.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            signal(pid, libc::SIGKILL);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill_all();
        self.task.abort();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid this simulator spawned; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The simulated DHCP server's leases: the last octet of each address in use.
#[derive(Debug, Default)]
struct Leases(BTreeSet<u8>);

impl Leases {
    /// A free address, `wanted` if it is free.
    fn take(&mut self, wanted: Option<u8>) -> Option<u8> {
        let pick = wanted
            .filter(|w| (2..=254).contains(w) && !self.0.contains(w))
            .or_else(|| (2..=254).find(|n| !self.0.contains(n)))?;
        self.0.insert(pick);
        Some(pick)
    }

    fn free(&mut self, octet: u8) {
        self.0.remove(&octet);
    }
}

fn lease_addr(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(LEASE_NET[0], LEASE_NET[1], LEASE_NET[2], octet)
}

/// Routes actions to one actor per running ABD.
struct Dispatcher {
    shared: Arc<Shared>,
    agent: PathBuf,
    root: PathBuf,
    leases: Arc<Mutex<Leases>>,
    pids: Pids,
    actors: HashMap<Ref, (mpsc::UnboundedSender<Action>, JoinHandle<()>)>,
    /// Actors carrying out a Stop, until they finish.
    stopping: HashMap<Ref, JoinHandle<()>>,
}

impl Dispatcher {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Action>) {
        while let Some(action) = rx.recv().await {
            self.actors.retain(|_, (_, task)| !task.is_finished());
            self.stopping.retain(|_, task| !task.is_finished());
            let vm = match &action {
                Action::Start { vm, .. }
                | Action::Stop { vm, .. }
                | Action::Plug { vm, .. }
                | Action::Unplug { vm, .. }
                | Action::Kill { vm, .. } => vm.clone(),
                Action::Shutdown { .. } => {
                    if let Action::Shutdown { done } = action {
                        self.shutdown(done).await;
                    }
                    return;
                }
            };
            if let Action::Start { respawn, .. } = &action
                && !self.actors.contains_key(&vm)
            {
                let (tx, actor_rx) = mpsc::unbounded_channel();
                let actor = match self.actor(&vm, *respawn) {
                    Ok(actor) => actor,
                    Err(e) => {
                        tracing::error!(%vm, "ABD process backend: cannot start: {e}");
                        continue;
                    }
                };
                // A quick stop-then-start (a reboot) waits for the old process to be gone.
                let previous = self.stopping.remove(&vm);
                let task = tokio::spawn(async move {
                    if let Some(previous) = previous {
                        let _ = previous.await;
                    }
                    actor.run(actor_rx).await;
                });
                self.actors.insert(vm.clone(), (tx, task));
                continue;
            }
            let stop = matches!(action, Action::Stop { .. });
            match self.actors.get(&vm) {
                Some((tx, _)) => {
                    let _ = tx.send(action);
                }
                None => {
                    if let Action::Kill { reply, .. } = action {
                        let _ = reply.send(None);
                    }
                }
            }
            if stop && let Some((_, task)) = self.actors.remove(&vm) {
                self.stopping.insert(vm, task);
            }
        }
    }

    /// Stops every actor's process, keeping the VM directories for a respawn.
    async fn shutdown(&mut self, done: oneshot::Sender<()>) {
        for (tx, task) in std::mem::take(&mut self.actors).into_values() {
            let (actor_done, wait) = oneshot::channel();
            let _ = tx.send(Action::Shutdown { done: actor_done });
            let _ = wait.await;
            let _ = task.await;
        }
        for task in std::mem::take(&mut self.stopping).into_values() {
            let _ = task.await;
        }
        let _ = done.send(());
    }

    fn actor(&self, vm: &str, respawn: bool) -> std::io::Result<Actor> {
        let uuid = self
            .shared
            .lock()
            .db
            .str_field("VM", vm, "uuid")
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let dir = self.root.join(&uuid);
        if !respawn && dir.exists() {
            std::fs::remove_dir_all(&dir)?; // left by a simulator that died
        }
        std::fs::create_dir_all(dir.join("dev"))?;
        Ok(Actor {
            shared: self.shared.clone(),
            agent: self.agent.clone(),
            vm: vm.to_owned(),
            dir,
            leases: self.leases.clone(),
            pids: self.pids.clone(),
            lease: None,
            child: None,
            devices: HashMap::new(),
            xenstore: None,
            respawn,
        })
    }
}

/// One running ABD.
struct Actor {
    shared: Arc<Shared>,
    agent: PathBuf,
    vm: Ref,
    dir: PathBuf,
    leases: Arc<Mutex<Leases>>,
    pids: Pids,
    lease: Option<u8>,
    child: Option<Child>,
    devices: HashMap<Ref, Device>,
    xenstore: Option<JoinHandle<()>>,
    respawn: bool,
}

/// What woke the actor.
enum Wake {
    Action(Option<Action>),
    Exited(std::io::Result<std::process::ExitStatus>),
    Restart,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Action>) {
        if let Err(e) = self.boot().await {
            tracing::error!(vm = %self.vm, "ABD process backend: cannot start the agent: {e}");
        }
        let mut backoff = RESTART_FIRST;
        let mut restart_at: Option<tokio::time::Instant> = None;
        loop {
            let wake = tokio::select! {
                a = rx.recv() => Wake::Action(a),
                status = wait_child(&mut self.child) => Wake::Exited(status),
                () = sleep_until(restart_at) => Wake::Restart,
            };
            match wake {
                Wake::Exited(status) => {
                    self.forget_child();
                    tracing::warn!(
                        vm = %self.vm,
                        "ABD agent exited ({status:?}) while its VM runs; restarting it in {:?}",
                        backoff
                    );
                    restart_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(RESTART_MAX);
                }
                Wake::Restart => {
                    restart_at = None;
                    if let Err(e) = self.spawn() {
                        tracing::error!(vm = %self.vm, "ABD agent restart failed: {e}");
                        restart_at = Some(tokio::time::Instant::now() + backoff);
                    }
                }
                Wake::Action(None) => return self.kill().await,
                Wake::Action(Some(action)) => match action {
                    Action::Start { .. } => {}
                    Action::Plug { vbd, .. } => self.plug(&vbd).await,
                    Action::Unplug { vbd, .. } => self.unplug(&vbd).await,
                    Action::Kill { reply, .. } => {
                        let pid = self.child.as_ref().and_then(Child::id);
                        if let Some(child) = &mut self.child {
                            let _ = child.start_kill();
                        }
                        backoff = RESTART_FIRST;
                        let _ = reply.send(pid);
                    }
                    Action::Stop { hard, .. } => return self.stop(hard).await,
                    Action::Shutdown { done } => {
                        self.kill().await;
                        let _ = done.send(());
                        return;
                    }
                },
            }
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("xenbus.sock")
    }

    fn dev_dir(&self) -> PathBuf {
        self.dir.join("dev")
    }

    /// Serves xenstore, takes a lease when the config asks for DHCP, starts the agent,
    /// and shows the disks already attached (the boot disk aside: the process does not
    /// boot from it).
    async fn boot(&mut self) -> std::io::Result<()> {
        self.xenstore = Some(xenstore::serve(
            self.shared.clone(),
            self.vm.clone(),
            &self.sock(),
        )?);
        let (dhcp, attached) = {
            let st = self.shared.lock();
            let ip = st
                .db
                .field("VM", &self.vm, "xenstore_data")
                .ok()
                .and_then(|d| d.get_str(IP_KEY).map(str::to_owned));
            let attached: Vec<Ref> = st
                .db
                .refs_field("VM", &self.vm, "VBDs")
                .unwrap_or_default()
                .into_iter()
                .filter(|b| {
                    let rec = st.db.get("VBD", b).ok();
                    let flag = |f: &str| rec.and_then(|r| r.get(f)).and_then(Value::as_bool);
                    flag("currently_attached") == Some(true) && flag("bootable") != Some(true)
                })
                .collect();
            (ip.is_none_or(|ip| ip == "dhcp"), attached)
        };
        if dhcp {
            let lease_file = self.dir.join("lease");
            let wanted = std::fs::read_to_string(&lease_file)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            let lease = self
                .leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(wanted)
                .ok_or_else(|| {
                    std::io::Error::other("the simulated DHCP pool 127.0.4.0/24 is exhausted")
                })?;
            self.lease = Some(lease);
            std::fs::write(&lease_file, lease.to_string())?;
        }
        self.spawn()?;
        for vbd in attached {
            self.plug(&vbd).await;
        }
        Ok(())
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let mut cmd = Command::new(&self.agent);
        cmd.arg("run")
            .arg("--xenbus")
            .arg(self.sock())
            .arg("--dev-dir")
            .arg(self.dev_dir())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(octet) = self.lease {
            cmd.env(DHCP_ENV, format!("{}/{LEASE_PREFIX}", lease_addr(octet)));
        }
        // SAFETY: prctl is async-signal-safe; it makes the kernel SIGKILL the agent when
        // the thread that spawned it (a runtime worker, alive as long as the simulator)
        // dies, so a simulator killed with -9 leaves no agent behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot run the ABD agent {}: {e}", self.agent.display()),
            )
        })?;
        if let Some(pid) = child.id() {
            self.pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.vm.clone(), pid);
            tracing::info!(vm = %self.vm, pid, "ABD agent started");
        }
        self.child = Some(child);
        Ok(())
    }

    fn forget_child(&mut self) {
        self.child = None;
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.vm);
    }

    async fn plug(&mut self, vbd: &str) {
        if self.devices.contains_key(vbd) {
            return;
        }
        let Some(dev) = devices::describe(&self.shared, &self.dev_dir(), vbd) else {
            return;
        };
        // After a simulator restart the device file is still there, with its writes.
        if !(self.respawn && dev.path.exists()) {
            let shared = self.shared.clone();
            let d = dev.clone();
            let made = tokio::task::spawn_blocking(move || devices::create(&shared, &d)).await;
            if let Err(e) = made.map_err(std::io::Error::other).and_then(|r| r) {
                tracing::error!(vm = %self.vm, %vbd, "cannot show the disk at {}: {e}", dev.path.display());
                return;
            }
        }
        self.devices.insert(vbd.to_owned(), dev);
    }

    async fn unplug(&mut self, vbd: &str) {
        if let Some(dev) = self.devices.remove(vbd) {
            self.remove_device(dev).await;
        }
    }

    async fn remove_device(&self, dev: Device) {
        let shared = self.shared.clone();
        let path = dev.path.clone();
        let done = tokio::task::spawn_blocking(move || devices::remove(&shared, &dev)).await;
        match done.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(0) => {}
            Ok(n) => tracing::info!(vm = %self.vm, "{}: {n} bytes written back", path.display()),
            Err(e) => tracing::error!(vm = %self.vm, "removing {}: {e}", path.display()),
        }
    }

    /// Ends the process: SIGKILL, or SIGTERM and a grace period.
    async fn end_process(&mut self, hard: bool) {
        if let Some(mut child) = self.child.take() {
            match (hard, child.id()) {
                (false, Some(pid)) => {
                    signal(pid, libc::SIGTERM);
                    if tokio::time::timeout(CLEAN_STOP, child.wait())
                        .await
                        .is_err()
                    {
                        let _ = child.kill().await;
                    }
                }
                _ => {
                    let _ = child.kill().await;
                }
            }
        }
        self.forget_child();
    }

    /// The simulator stops: the process goes, the VM directory stays for a respawn.
    async fn kill(&mut self) {
        self.end_process(false).await;
        if let Some(x) = self.xenstore.take() {
            x.abort();
        }
    }

    /// The VM shuts down: process, disks (written back), lease and directory go.
    async fn stop(mut self, hard: bool) {
        self.end_process(hard).await;
        if let Some(x) = self.xenstore.take() {
            x.abort();
        }
        for (_, dev) in std::mem::take(&mut self.devices) {
            self.remove_device(dev).await;
        }
        if let Some(octet) = self.lease.take() {
            self.leases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .free(octet);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(vm = %self.vm, "removing {}: {e}", self.dir.display());
        }
        tracing::info!(vm = %self.vm, hard, "ABD stopped");
    }
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_unique_reuse_the_wanted_one_and_free() {
        let mut l = Leases::default();
        assert_eq!(l.take(None), Some(2));
        assert_eq!(l.take(Some(9)), Some(9));
        assert_eq!(l.take(Some(9)), Some(3), "taken: the next free one");
        l.free(2);
        assert_eq!(l.take(None), Some(2));
        assert_eq!(l.take(Some(1)), Some(4), ".1 is the network's own");
        let rest = std::iter::from_fn(|| l.take(None)).count();
        assert_eq!(rest, 253 - 4, "2..=254, less the four taken");
        assert_eq!(lease_addr(7), Ipv4Addr::new(127, 0, 4, 7));
    }

    #[test]
    fn an_abd_is_a_vm_with_a_boot_config() {
        let mut rec = Struct::new();
        assert!(!is_abd(&rec));
        let data: Struct = [(ABD_KEY.to_owned(), Value::from("127.0.1.1:2811"))]
            .into_iter()
            .collect();
        rec.insert("xenstore_data".into(), Value::Struct(data));
        assert!(is_abd(&rec));
    }
}
