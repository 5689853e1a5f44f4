//! The backends running ABD VMs (CONTRACTS.md C2): an ABD VM started while the simulator
//! has a backend runs for real, handed its boot config and hot-plugged disks the way a
//! hypervisor hands them to a guest.
//!
//! - An ABD is a VM whose `xenstore_data` holds `vm-data/abd/a3` (its boot config).
//! - Per running ABD, `<state-dir>/abd/<vm-uuid>/` holds what the backend needs, and
//!   `dev/xvdX`, the private copies of its plugged VDIs ([`devices`]).
//! - [`process`] (`--abd-agent`, the default) runs the `abd-agent` binary as a process with
//!   a xenstore socket; [`qemu`] (`--abd-backend qemu`) boots the VM's boot disk (the ABD
//!   image) under qemu and hot-plugs disks through QMP.
//!
//! XAPI handlers run under the state lock and must not wait, so they only send an
//! [`Action`] through the [`Hook`] kept in the state; one actor task per running ABD
//! carries the actions out in order (starting, copying disks, stopping), driving its
//! backend's [`Guest`]. A guest process that dies while its VM is Running (a crash, or the
//! `/sim/` kill) is restarted in the same VM with its state, as a guest whose init died
//! reboots (`actions_after_crash=restart`). Processes never outlive the simulator: they are
//! killed at shutdown and on drop, and get SIGKILL from the kernel if the simulator dies
//! (`PR_SET_PDEATHSIG`). A restarted simulator respawns the ABDs its state records as
//! Running.

pub mod devices;
pub mod process;
pub mod qemu;
pub mod xenstore;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
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
/// How long a clean shutdown waits for the guest before SIGKILL.
const CLEAN_STOP: Duration = Duration::from_secs(10);
/// Restart delay after a crash, doubling up to the cap while it keeps crashing.
const RESTART_FIRST: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// Which backend runs ABD VMs.
#[derive(Debug, Clone)]
pub enum Kind {
    /// The `abd-agent` binary as a process ([`process`]).
    Process {
        /// The binary.
        agent: PathBuf,
    },
    /// The VM's boot disk under `qemu-system-x86_64` ([`qemu`]).
    Qemu,
}

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
    /// `VM.clean_shutdown` (a clean stop, then SIGKILL after a while) or `hard_shutdown`.
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
    /// The `/sim/` kill: SIGKILL the guest's process without XAPI knowing; the reply is its
    /// pid.
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

/// Sends `action` when the simulator runs ABDs.
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

/// Pids of running guests, for killing them synchronously on drop.
type Pids = Arc<Mutex<HashMap<Ref, u32>>>;

/// The running backend, owned by the [`crate::Sim`].
pub struct Backend {
    hook: Hook,
    task: JoinHandle<()>,
    pids: Pids,
}

impl Backend {
    /// Starts the backend of `kind`, keeping VM directories under `root`, and respawns the
    /// ABDs the state records as Running.
    pub fn start(shared: Arc<Shared>, kind: Kind, root: PathBuf) -> Backend {
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
            kind,
            root,
            addresses: Arc::default(),
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

    /// Stops every guest (the VMs stay Running in the state) and the backend.
    pub async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        self.hook.send(Action::Shutdown { done });
        let _ = tokio::time::timeout(CLEAN_STOP * 2, wait).await;
        self.kill_all();
        self.task.abort();
    }

    /// SIGKILLs every guest process still known; for `Drop`, which cannot wait.
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

/// Addresses handed to running ABDs, by last octet in a /24 the backend chooses: the
/// process backend's DHCP leases, the qemu backend's host addresses.
#[derive(Debug, Default)]
pub struct Leases(BTreeSet<u8>);

impl Leases {
    /// A free address, `wanted` if it is free, among those `usable` accepts.
    fn take(&mut self, wanted: Option<u8>, usable: impl Fn(u8) -> bool) -> Option<u8> {
        let free = |n: &u8| (2..=254).contains(n) && !self.0.contains(n);
        let pick = wanted
            .filter(|w| free(w) && usable(*w))
            .or_else(|| (2..=254).find(|n| free(n) && usable(*n)))?;
        self.0.insert(pick);
        Some(pick)
    }

    fn free(&mut self, octet: u8) {
        self.0.remove(&octet);
    }
}

/// Shared between a backend's actors.
pub type SharedLeases = Arc<Mutex<Leases>>;

/// Takes an address from `leases`, reusing the one recorded in `file` (a respawn) when
/// free, and records the pick there.
fn take_lease(
    leases: &SharedLeases,
    file: &Path,
    usable: impl Fn(u8) -> bool,
) -> std::io::Result<Option<u8>> {
    let wanted = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let pick = leases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(wanted, usable);
    if let Some(octet) = pick {
        std::fs::write(file, octet.to_string())?;
    }
    Ok(pick)
}

fn free_lease(leases: &SharedLeases, octet: u8) {
    leases.lock().unwrap_or_else(|e| e.into_inner()).free(octet);
}

/// What an actor knows of its VM.
pub struct Ctx {
    /// The simulator's state.
    pub shared: Arc<Shared>,
    /// The VM.
    pub vm: Ref,
    /// `<state-dir>/abd/<vm-uuid>`.
    pub dir: PathBuf,
}

impl Ctx {
    /// Where plugged disks' device files live.
    pub fn dev_dir(&self) -> PathBuf {
        self.dir.join("dev")
    }

    /// The VM's `xenstore_data`, as strings.
    pub fn xenstore_data(&self) -> Vec<(String, String)> {
        match self.shared.lock().db.field("VM", &self.vm, "xenstore_data") {
            Ok(Value::Struct(m)) => m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// What a backend does for one running ABD; the [`Actor`] drives it. Calls come in this
/// order: [`prepare`](Guest::prepare) once, then per (re)start of the guest's process
/// [`command`](Guest::command) and [`started`](Guest::started), with
/// [`attach`](Guest::attach) and [`detach`](Guest::detach) as disks come and go, and
/// [`release`](Guest::release) once at the end.
pub trait Guest: Send + 'static {
    /// Readies the VM for its first start: config, addresses, boot disk. `respawn`: the
    /// simulator restarted and the VM's directory holds its state.
    fn prepare(
        &mut self,
        ctx: &Ctx,
        respawn: bool,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
    /// The command running the guest.
    fn command(&self, ctx: &Ctx) -> std::io::Result<Command>;
    /// The guest's process started: show it the disks already plugged (their device files
    /// exist).
    fn started(&mut self, ctx: &Ctx, plugged: Vec<Device>) -> impl Future<Output = ()> + Send;
    /// Shows a newly plugged disk (its device file exists) to the running guest.
    fn attach(
        &mut self,
        ctx: &Ctx,
        dev: &Device,
    ) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Takes a disk away, before its device file is written back and removed.
    fn detach(&mut self, ctx: &Ctx, dev: &Device) -> impl Future<Output = ()> + Send;
    /// Asks the guest's process (`pid`) to end; it is killed if still there after
    /// [`CLEAN_STOP`].
    fn request_stop(&mut self, ctx: &Ctx, pid: u32) -> impl Future<Output = ()> + Send;
    /// Lets go of what `prepare` took, the process being gone; `for_good`: the VM stopped
    /// (else the simulator stops and the directory stays for a respawn).
    fn release(&mut self, ctx: &Ctx, for_good: bool) -> impl Future<Output = ()> + Send;
}

type ActorRun = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Routes actions to one actor per running ABD.
struct Dispatcher {
    shared: Arc<Shared>,
    kind: Kind,
    root: PathBuf,
    /// The process backend's leases, or the qemu backend's host addresses.
    addresses: SharedLeases,
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
                let actor = match self.actor(&vm, *respawn, actor_rx) {
                    Ok(actor) => actor,
                    Err(e) => {
                        tracing::error!(%vm, "ABD backend: cannot start: {e}");
                        continue;
                    }
                };
                // A quick stop-then-start (a reboot) waits for the old guest to be gone.
                let previous = self.stopping.remove(&vm);
                let task = tokio::spawn(async move {
                    if let Some(previous) = previous {
                        let _ = previous.await;
                    }
                    actor.await;
                });
                self.actors.insert(vm.clone(), (tx, task));
                continue;
            }
            let stop = matches!(action, Action::Stop { .. });
            match self.actors.get(&vm) {
                Some((tx, _)) => {
                    let _ = tx.send(action);
                }
                None => match action {
                    Action::Kill { reply, .. } => {
                        let _ = reply.send(None);
                    }
                    Action::Unplug { vbd, .. } => released(&self.shared, &vbd),
                    _ => {}
                },
            }
            if stop && let Some((_, task)) = self.actors.remove(&vm) {
                self.stopping.insert(vm, task);
            }
        }
    }

    /// Stops every actor's guest, keeping the VM directories for a respawn.
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

    /// The actor of a starting VM, as a future to spawn.
    fn actor(
        &self,
        vm: &str,
        respawn: bool,
        rx: mpsc::UnboundedReceiver<Action>,
    ) -> std::io::Result<ActorRun> {
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
        let ctx = Ctx {
            shared: self.shared.clone(),
            vm: vm.to_owned(),
            dir,
        };
        let pids = self.pids.clone();
        Ok(match &self.kind {
            Kind::Process { agent } => {
                let guest = process::Agent::new(agent.clone(), self.addresses.clone());
                Box::pin(Actor::new(ctx, guest, pids, respawn).run(rx))
            }
            Kind::Qemu => {
                let guest = qemu::Qemu::new(self.addresses.clone());
                Box::pin(Actor::new(ctx, guest, pids, respawn).run(rx))
            }
        })
    }
}

/// One running ABD.
struct Actor<G> {
    ctx: Ctx,
    guest: G,
    pids: Pids,
    child: Option<Child>,
    devices: HashMap<Ref, Device>,
    respawn: bool,
}

/// What woke the actor.
enum Wake {
    Action(Option<Action>),
    Exited(std::io::Result<std::process::ExitStatus>),
    Restart,
}

impl<G: Guest> Actor<G> {
    fn new(ctx: Ctx, guest: G, pids: Pids, respawn: bool) -> Self {
        Actor {
            ctx,
            guest,
            pids,
            child: None,
            devices: HashMap::new(),
            respawn,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Action>) {
        let vm = self.ctx.vm.clone();
        if let Err(e) = self.boot().await {
            tracing::error!(%vm, "ABD backend: cannot start the guest: {e}");
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
                        %vm,
                        "ABD guest exited ({status:?}) while its VM runs; restarting it in {:?}",
                        backoff
                    );
                    restart_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(RESTART_MAX);
                }
                Wake::Restart => {
                    restart_at = None;
                    if let Err(e) = self.spawn().await {
                        tracing::error!(%vm, "ABD guest restart failed: {e}");
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

    /// Readies the guest, starts it, and plugs the disks already attached (the boot disk
    /// is the guest's own business).
    async fn boot(&mut self) -> std::io::Result<()> {
        self.guest.prepare(&self.ctx, self.respawn).await?;
        let attached: Vec<Ref> = {
            let st = self.ctx.shared.lock();
            st.db
                .refs_field("VM", &self.ctx.vm, "VBDs")
                .unwrap_or_default()
                .into_iter()
                .filter(|b| {
                    let rec = st.db.get("VBD", b).ok();
                    let flag = |f: &str| rec.and_then(|r| r.get(f)).and_then(Value::as_bool);
                    flag("currently_attached") == Some(true) && flag("bootable") != Some(true)
                })
                .collect()
        };
        self.spawn().await?;
        for vbd in attached {
            self.plug(&vbd).await;
        }
        Ok(())
    }

    async fn spawn(&mut self) -> std::io::Result<()> {
        let mut cmd = self.guest.command(&self.ctx)?;
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it makes the kernel SIGKILL the guest when
        // the thread that spawned it (a runtime worker, alive as long as the simulator)
        // dies, so a simulator killed with -9 leaves no guest behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let program = cmd.as_std().get_program().to_owned();
        let child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot run the ABD guest {}: {e}", program.display()),
            )
        })?;
        if let Some(pid) = child.id() {
            self.pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.ctx.vm.clone(), pid);
            tracing::info!(vm = %self.ctx.vm, pid, "ABD guest started");
        }
        self.child = Some(child);
        let plugged = self.devices.values().cloned().collect();
        self.guest.started(&self.ctx, plugged).await;
        Ok(())
    }

    fn forget_child(&mut self) {
        self.child = None;
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.ctx.vm);
    }

    async fn plug(&mut self, vbd: &str) {
        if self.devices.contains_key(vbd) {
            return;
        }
        let Some(dev) = devices::describe(&self.ctx.shared, &self.ctx.dev_dir(), vbd) else {
            return;
        };
        // After a simulator restart the device file is still there, with its writes.
        if !(self.respawn && dev.path.exists()) {
            let shared = self.ctx.shared.clone();
            let d = dev.clone();
            let made = tokio::task::spawn_blocking(move || devices::create(&shared, &d)).await;
            if let Err(e) = made.map_err(std::io::Error::other).and_then(|r| r) {
                tracing::error!(vm = %self.ctx.vm, %vbd, "cannot show the disk at {}: {e}", dev.path.display());
                return;
            }
        }
        if let Err(e) = self.guest.attach(&self.ctx, &dev).await {
            tracing::error!(vm = %self.ctx.vm, %vbd, "cannot attach {}: {e}", dev.path.display());
        }
        self.devices.insert(vbd.to_owned(), dev);
    }

    async fn unplug(&mut self, vbd: &str) {
        if let Some(dev) = self.devices.remove(vbd) {
            self.guest.detach(&self.ctx, &dev).await;
            remove_device(&self.ctx, dev).await;
        }
        released(&self.ctx.shared, vbd);
    }

    /// Ends the guest's process: SIGKILL, or a clean stop and a grace period.
    async fn end_process(&mut self, hard: bool) {
        if let Some(mut child) = self.child.take() {
            match (hard, child.id()) {
                (false, Some(pid)) => {
                    self.guest.request_stop(&self.ctx, pid).await;
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
        self.guest.release(&self.ctx, false).await;
    }

    /// The VM shuts down: process, disks (written back), addresses and directory go.
    async fn stop(mut self, hard: bool) {
        self.end_process(hard).await;
        self.guest.release(&self.ctx, true).await;
        for (_, dev) in std::mem::take(&mut self.devices) {
            remove_device(&self.ctx, dev).await;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.ctx.dir) {
            tracing::warn!(vm = %self.ctx.vm, "removing {}: {e}", self.ctx.dir.display());
        }
        tracing::info!(vm = %self.ctx.vm, hard, "ABD stopped");
    }
}

/// The guest no longer sees `vbd`'s disk: its `VBD.unplug` may reply.
fn released(shared: &Shared, vbd: &str) {
    if shared.lock().detaching.remove(vbd) {
        shared.changed();
    }
}

/// Writes a device file back to its VDI (read-write VBDs) and removes it.
async fn remove_device(ctx: &Ctx, dev: Device) {
    let shared = ctx.shared.clone();
    let path = dev.path.clone();
    let done = tokio::task::spawn_blocking(move || devices::remove(&shared, &dev)).await;
    match done.map_err(std::io::Error::other).and_then(|r| r) {
        Ok(0) => {}
        Ok(n) => tracing::info!(vm = %ctx.vm, "{}: {n} bytes written back", path.display()),
        Err(e) => tracing::error!(vm = %ctx.vm, "removing {}: {e}", path.display()),
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
        let any = |_| true;
        assert_eq!(l.take(None, any), Some(2));
        assert_eq!(l.take(Some(9), any), Some(9));
        assert_eq!(l.take(Some(9), any), Some(3), "taken: the next free one");
        l.free(2);
        assert_eq!(l.take(None, any), Some(2));
        assert_eq!(l.take(Some(1), any), Some(4), ".1 is the network's own");
        assert_eq!(l.take(None, |n| n > 10), Some(11), "only usable ones");
        let rest = std::iter::from_fn(|| l.take(None, any)).count();
        assert_eq!(rest, 253 - 5, "2..=254, less the five taken");
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
