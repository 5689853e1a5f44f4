//! The qemu backend (`--abd-backend qemu`): an ABD VM boots its own boot disk (the clone
//! of the imported ABD template, so the real image: BIOS, syslinux, kernel, the agent as
//! `/init`) under `qemu-system-x86_64 -accel tcg`, with its VBDs hot-plugged through QMP.
//!
//! Per running ABD, the VM's directory holds:
//! - `dev/xvdX`: private raw copies of the boot disk and the plugged VDIs, made and written
//!   back as in the process backend ([`super::devices`]);
//! - `config.img`: the config disk, the VM's `vm-data/abd/*` keys ([`config_disk`]),
//!   attached read-only as a virtio disk with serial `abd-config`;
//! - `qmp.sock` ([`qmp`]), `console.log` (the serial console, appended across restarts),
//!   `qemu.log` (qemu's stderr), `hostaddr` (see below).
//!
//! The boot disk is IDE (as the qemu e2e tests boot it). `VBD.plug` is QMP `blockdev-add`
//! (raw over the device file, read-only for an RO VBD) and `device_add virtio-blk-pci`
//! with `serial=xvdX`, the device id the A3 names; the guest sees `/dev/vdX` and the agent
//! finds it by serial. `VBD.unplug` is `device_del`, the guest's `DEVICE_DELETED`, then
//! `blockdev-del`. A clean shutdown is QMP `quit`, a hard one SIGKILL; the actor's
//! guarantees (restart after a crash, no qemu outliving the simulator) hold as for agents.
//!
//! Network simulation: qemu's user network, where the guest is 10.0.2.15 (qemu's DHCP) and
//! reaches the host only through 10.0.2.2, qemu's alias for 127.0.0.1. So an A3 serving
//! qemu ABDs runs its data port (and the DNS server its ABDs use) on 127.0.0.1; the config
//! disk moves those addresses to 10.0.2.2 and turns static loopback addresses into DHCP
//! ([`config_disk`]). qemu's DNS forwarder 10.0.2.3 is never given to the guest. Each ABD
//! gets a host address 127.0.5.N of its own, whose port 22 qemu forwards to the guest's 22
//! (`hostfwd`), and that is the `vm-data/abd/assigned-ip` recorded when the guest reports
//! its address on the console ([`console`]): the A3 reaches the ABD back there.

pub mod config_disk;
pub mod console;
pub mod qmp;

use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;
use tokio::task::JoinHandle;

use super::devices::{self, Device};
use super::{Ctx, Guest, SharedLeases, free_lease, signal, take_lease};
use crate::model::Ref;
use qmp::Qmp;

/// The qemu binary (Debian package `qemu-system-x86`).
pub const QEMU: &str = "qemu-system-x86_64";
/// The host addresses of qemu ABDs: 127.0.5.2..=254.
const HOST_NET: [u8; 3] = [127, 0, 5];
/// The guest port forwarded from each ABD's host address.
const SSH_PORT: u16 = 22;
/// How long qemu may take to open its QMP socket.
const QMP_DEADLINE: Duration = Duration::from_secs(30);
/// How long the guest may take to release a disk on `device_del` (ACPI eject under TCG).
const EJECT_DEADLINE: Duration = Duration::from_secs(120);
/// Memory when the VM record names none usable.
const DEFAULT_MIB: i64 = 128;

fn host_addr(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(HOST_NET[0], HOST_NET[1], HOST_NET[2], octet)
}

/// Whether qemu can forward `addr`'s port 22 (another simulator may hold it).
fn forwardable(addr: Ipv4Addr) -> bool {
    TcpListener::bind((addr, SSH_PORT)).is_ok()
}

/// Checks that qemu can be run, for a clear error at start rather than per VM.
pub fn check_installed() -> Result<(), String> {
    match std::process::Command::new(QEMU).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{QEMU} --version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!(
            "--abd-backend qemu needs {QEMU} ({e}); install the Debian package qemu-system-x86"
        )),
    }
}

/// An ABD booted under qemu.
pub struct Qemu {
    addresses: SharedLeases,
    host: Option<u8>,
    memory_mib: i64,
    boot: Option<Device>,
    qmp: Option<Qmp>,
    console: Option<JoinHandle<()>>,
    /// The QMP id (device and node name) of each attached disk, by VBD.
    attached: HashMap<Ref, String>,
    next_id: u64,
}

impl Qemu {
    /// An ABD whose host address comes from `addresses`.
    pub fn new(addresses: SharedLeases) -> Qemu {
        Qemu {
            addresses,
            host: None,
            memory_mib: DEFAULT_MIB,
            boot: None,
            qmp: None,
            console: None,
            attached: HashMap::new(),
            next_id: 1,
        }
    }

    fn host(&self) -> std::io::Result<Ipv4Addr> {
        self.host
            .map(host_addr)
            .ok_or_else(|| std::io::Error::other("no host address taken"))
    }

    /// Connects to the QMP socket qemu is opening.
    async fn connect(&mut self, ctx: &Ctx) {
        let sock = ctx.dir.join("qmp.sock");
        let give_up = tokio::time::Instant::now() + QMP_DEADLINE;
        loop {
            let tried = if sock.exists() {
                Some(Qmp::connect(&sock).await)
            } else {
                None
            };
            match tried {
                Some(Ok(qmp)) => {
                    self.qmp = Some(qmp);
                    return;
                }
                Some(Err(e)) if tokio::time::Instant::now() >= give_up => {
                    tracing::error!(vm = %ctx.vm, "qemu's QMP socket {}: {e}", sock.display());
                    return;
                }
                None if tokio::time::Instant::now() >= give_up => {
                    tracing::error!(
                        vm = %ctx.vm,
                        "qemu opened no QMP socket at {} within {QMP_DEADLINE:?}; see {}",
                        sock.display(),
                        ctx.dir.join("qemu.log").display()
                    );
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn qmp(&mut self) -> std::io::Result<&mut Qmp> {
        self.qmp
            .as_mut()
            .ok_or_else(|| std::io::Error::other("qemu's QMP socket is not connected"))
    }
}

/// The bootable VBD of a VM.
fn boot_vbd(ctx: &Ctx) -> std::io::Result<Ref> {
    let st = ctx.shared.lock();
    st.db
        .refs_field("VM", &ctx.vm, "VBDs")
        .unwrap_or_default()
        .into_iter()
        .find(|b| {
            st.db
                .field("VBD", b, "bootable")
                .ok()
                .and_then(|v| v.as_bool())
                == Some(true)
        })
        .ok_or_else(|| {
            std::io::Error::other(
                "the ABD VM has no bootable VBD; it must be a clone of the ABD template",
            )
        })
}

impl Guest for Qemu {
    /// Copies the boot disk out, writes the config disk, takes a host address, and follows
    /// the console.
    async fn prepare(&mut self, ctx: &Ctx, respawn: bool) -> std::io::Result<()> {
        self.memory_mib = ctx
            .shared
            .lock()
            .db
            .field("VM", &ctx.vm, "memory_static_max")
            .ok()
            .and_then(|v| v.as_i64())
            .map_or(DEFAULT_MIB, |bytes| (bytes >> 20).max(64));
        let vbd = boot_vbd(ctx)?;
        let boot = devices::describe(&ctx.shared, &ctx.dev_dir(), &vbd)
            .ok_or_else(|| std::io::Error::other(format!("the boot VBD {vbd} has no disk")))?;
        if !(respawn && boot.path.exists()) {
            let (shared, d) = (ctx.shared.clone(), boot.clone());
            tokio::task::spawn_blocking(move || devices::create(&shared, &d))
                .await
                .map_err(std::io::Error::other)??;
        }
        self.boot = Some(boot);

        let (text, warnings) = config_disk::contents(&ctx.xenstore_data());
        for w in warnings {
            tracing::warn!(vm = %ctx.vm, "qemu ABD config: {w}");
        }
        std::fs::write(ctx.dir.join("config.img"), config_disk::image(&text)?)?;

        let host = take_lease(&self.addresses, &ctx.dir.join("hostaddr"), |n| {
            forwardable(host_addr(n))
        })?
        .ok_or_else(|| {
            std::io::Error::other("no free host address in 127.0.5.0/24 with port 22 free")
        })?;
        self.host = Some(host);
        self.console = Some(console::watch(
            ctx.shared.clone(),
            ctx.vm.clone(),
            ctx.dir.join("console.log"),
            host_addr(host),
        ));
        Ok(())
    }

    fn command(&self, ctx: &Ctx) -> std::io::Result<Command> {
        let boot = self
            .boot
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no boot disk prepared"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ctx.dir.join("qemu.log"))?;
        let mut cmd = Command::new(QEMU);
        cmd.args(qemu_args(
            &ctx.dir,
            &boot.path,
            self.memory_mib,
            self.host()?,
        ))
        .stdout(std::process::Stdio::null())
        .stderr(log);
        Ok(cmd)
    }

    /// Connects QMP and attaches the disks plugged before a restart.
    async fn started(&mut self, ctx: &Ctx, plugged: Vec<Device>) {
        self.qmp = None;
        self.attached.clear();
        self.connect(ctx).await;
        for dev in plugged {
            if let Err(e) = self.attach(ctx, &dev).await {
                tracing::error!(vm = %ctx.vm, "re-attaching {}: {e}", dev.path.display());
            }
        }
    }

    async fn attach(&mut self, _ctx: &Ctx, dev: &Device) -> std::io::Result<()> {
        let id = format!("disk{}", self.next_id);
        self.next_id += 1;
        let serial = dev
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let qmp = self.qmp()?;
        qmp.execute("blockdev-add", blockdev(&id, &dev.path, dev.read_only))
            .await
            .map_err(std::io::Error::other)?;
        let added = qmp
            .execute(
                "device_add",
                json!({ "driver": "virtio-blk-pci", "id": id, "drive": id, "serial": serial }),
            )
            .await;
        if let Err(e) = added {
            let _ = qmp
                .execute("blockdev-del", json!({ "node-name": id }))
                .await;
            return Err(std::io::Error::other(e));
        }
        self.attached.insert(dev.vbd.clone(), id);
        Ok(())
    }

    async fn detach(&mut self, ctx: &Ctx, dev: &Device) {
        let Some(id) = self.attached.remove(&dev.vbd) else {
            return;
        };
        let Ok(qmp) = self.qmp() else { return };
        let deleted = async {
            qmp.execute("device_del", json!({ "id": id })).await?;
            qmp.wait_event("DEVICE_DELETED", |d| d["device"] == id, EJECT_DEADLINE)
                .await?;
            qmp.execute("blockdev-del", json!({ "node-name": id }))
                .await
        };
        if let Err(e) = deleted.await {
            tracing::error!(
                vm = %ctx.vm,
                "unplugging {} ({id}) from qemu: {e}; its copy is written back regardless",
                dev.path.display()
            );
        }
    }

    async fn request_stop(&mut self, _ctx: &Ctx, pid: u32) {
        match self.qmp.as_mut() {
            // qemu may close the socket before answering: either way it is leaving.
            Some(qmp) => {
                let _ = qmp.execute("quit", json!({})).await;
            }
            None => signal(pid, libc::SIGTERM),
        }
        self.qmp = None;
    }

    async fn release(&mut self, ctx: &Ctx, for_good: bool) {
        self.qmp = None;
        if let Some(c) = self.console.take() {
            c.abort();
        }
        if !for_good {
            return;
        }
        if let Some(octet) = self.host.take() {
            free_lease(&self.addresses, octet);
        }
        if let Some(boot) = self.boot.take() {
            super::remove_device(ctx, boot).await;
        }
    }
}

/// The `blockdev-add` arguments of a raw disk over `path`.
fn blockdev(id: &str, path: &Path, read_only: bool) -> serde_json::Value {
    json!({
        "driver": "raw",
        "node-name": id,
        "read-only": read_only,
        "file": { "driver": "file", "filename": path, "read-only": read_only },
    })
}

/// qemu's command line: TCG, the VM's memory, one vCPU, no display, the console appended
/// to `console.log`, QMP, the boot disk on IDE, the config disk, user networking with the
/// host address's port 22 forwarded.
fn qemu_args(dir: &Path, boot: &Path, memory_mib: i64, host: Ipv4Addr) -> Vec<String> {
    let p = |name: &str| dir.join(name).display().to_string();
    let vm_uuid = dir.file_name().unwrap_or_default().to_string_lossy();
    [
        "-name".into(),
        format!("abd-{vm_uuid}"),
        "-accel".into(),
        "tcg".into(),
        "-m".into(),
        memory_mib.to_string(),
        "-smp".into(),
        "1".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-chardev".into(),
        format!("file,id=console,path={},append=on", p("console.log")),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", p("qmp.sock")),
        "-drive".into(),
        format!("file={},format=raw,if=ide,index=0", boot.display()),
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=config,readonly=on",
            p("config.img")
        ),
        "-device".into(),
        format!("virtio-blk-pci,drive=config,serial={}", config_disk::SERIAL),
        "-netdev".into(),
        format!("user,id=net0,hostfwd=tcp:{host}:{SSH_PORT}-:{SSH_PORT}"),
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
    ]
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_command_line_boots_the_disk_with_config_qmp_console_and_forwarding() {
        let dir = PathBuf::from("/s/abd/u1");
        let args = qemu_args(&dir, &dir.join("dev/xvda"), 128, host_addr(7)).join(" ");
        for want in [
            "-name abd-u1 -accel tcg -m 128 -smp 1",
            "-chardev file,id=console,path=/s/abd/u1/console.log,append=on",
            "-qmp unix:/s/abd/u1/qmp.sock,server=on,wait=off",
            "-drive file=/s/abd/u1/dev/xvda,format=raw,if=ide,index=0",
            "file=/s/abd/u1/config.img,format=raw,if=none,id=config,readonly=on",
            "virtio-blk-pci,drive=config,serial=abd-config",
            "user,id=net0,hostfwd=tcp:127.0.5.7:22-:22",
        ] {
            assert!(args.contains(want), "{want:?} in {args}");
        }
        assert!(!args.contains("10.0.2.3"), "never qemu's DNS forwarder");
    }

    #[test]
    fn read_only_vbds_are_read_only_nodes() {
        let b = blockdev("disk3", Path::new("/d/xvdb"), true);
        assert_eq!(b["node-name"], "disk3");
        assert_eq!(b["read-only"], true);
        assert_eq!(b["file"]["read-only"], true);
        assert_eq!(b["file"]["filename"], "/d/xvdb");
    }
}
