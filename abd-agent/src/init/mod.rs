//! PID 1 duties inside the appliance: the console, the pseudo file systems, the kernel
//! modules, zombie reaping, and never exiting.
//!
//! When PID 1 exits or panics the kernel panics (and reboots after `panic=5`), so every
//! step here logs its error, counts it, and carries on; what cannot go on parks PID 1
//! ([`park`]) so the console stays readable.
//!
//! [`appliance`] is what PID 1 runs after these steps: boot config, network, the agent.

pub mod appliance;

use std::fs::{File, OpenOptions};
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Where the image keeps its modules and their load order (`abd-image::recipe`).
const MODULES_DIR: &str = "/lib/modules";
const MODULES_LOAD_LIST: &str = "/etc/abd/modules.load";

/// Errors met while booting; `status` reports them and nothing stops on them.
static BOOT_ERRORS: AtomicU32 = AtomicU32::new(0);

/// True when this process is the appliance's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// How many boot steps failed (each was logged when it happened).
pub fn boot_errors() -> u32 {
    BOOT_ERRORS.load(Ordering::Relaxed)
}

fn failed(what: &str, err: impl std::fmt::Display) {
    BOOT_ERRORS.fetch_add(1, Ordering::Relaxed);
    tracing::error!("boot: {what}: {err}");
}

/// Performs the PID 1 boot steps. Call first thing in `main`, before any thread starts:
/// SIGCHLD is blocked here so that every later thread inherits the mask and only the
/// reaper thread receives it.
fn boot() {
    mount_all();
    attach_console();
    install_panic_hook();
    load_modules();
    start_reaper();
}

/// Mounts the pseudo file systems; the initramfs ships the empty mount points.
fn mount_all() {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, MsFlags, Option<&str>); 5] = [
        ("/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755")),
        ("/proc", "proc", nodev, None),
        ("/sys", "sysfs", nodev, None),
        (
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        ("/run", "tmpfs", nodev, Some("mode=0755")),
    ];
    for (target, fstype, flags, data) in table {
        if let Err(e) = mount(Some(fstype), target, Some(fstype), flags, data) {
            failed(&format!("mount {fstype} on {target}"), e);
        }
    }
}

/// Points stdin, stdout and stderr at `/dev/console`: the initramfs has no device nodes, so
/// the kernel could not open a console for us before devtmpfs was mounted.
fn attach_console() {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        Ok(console) => {
            let fd = console.into_raw_fd();
            for target in 0..=2 {
                // SAFETY: dup2 onto the standard descriptors, which nothing else owns yet.
                if target != fd && unsafe { libc::dup2(fd, target) } < 0 {
                    failed("dup2 /dev/console", std::io::Error::last_os_error());
                }
            }
            if fd > 2 {
                // SAFETY: fd came from into_raw_fd above and is not used after this.
                unsafe { libc::close(fd) };
            }
        }
        Err(e) => failed("open /dev/console", e),
    }
}

/// Logs a panic before the default hook runs: the console line is all one sees of a PID 1
/// panic, since the kernel panics right after.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("abd-agent (PID 1) panicked: {info}");
        default(info);
    }));
}

/// Loads the modules listed in the image's load order; already loaded (built in, or a
/// dependency loaded twice) is fine.
fn load_modules() {
    let list = match std::fs::read_to_string(MODULES_LOAD_LIST) {
        Ok(list) => list,
        Err(e) => return failed(&format!("read {MODULES_LOAD_LIST}"), e),
    };
    let mut loaded = 0;
    let mut skipped: Vec<&str> = Vec::new();
    for name in module_names(&list) {
        let path = Path::new(MODULES_DIR).join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                failed(&format!("open module {}", path.display()), e);
                continue;
            }
        };
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => loaded += 1,
            // The hardware is not there (Xen front-ends under qemu, virtio under Xen), or a
            // module needs one that was skipped so (ENOENT: unknown symbols).
            Err(nix::Error::ENODEV) => skipped.push(name),
            Err(nix::Error::ENOENT) if !skipped.is_empty() => skipped.push(name),
            Err(e) => failed(&format!("load module {}", path.display()), e),
        }
    }
    tracing::info!(
        "boot: {loaded} kernel modules loaded; no device for {}",
        if skipped.is_empty() {
            "none".to_owned()
        } else {
            skipped.join(", ")
        }
    );
}

/// The module file names in a load list: one per line, blank lines and `#` comments
/// skipped.
fn module_names(list: &str) -> impl Iterator<Item = &str> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Reaps every child that exits, whoever started it: orphans are reparented to PID 1.
/// Code in this process must therefore not wait on its own children by pid.
fn start_reaper() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    if let Err(e) = set.thread_block() {
        return failed("block SIGCHLD", e);
    }
    let spawned = std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            loop {
                if let Err(e) = set.wait() {
                    failed("wait for SIGCHLD", e);
                    continue;
                }
                reap_all();
            }
        });
    if let Err(e) = spawned {
        failed("start the reaper thread", e);
    }
}

fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return,
            Ok(status) => tracing::debug!("reaped {status:?}"),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return failed("waitpid", e),
        }
    }
}

/// Parks PID 1 for good: what runs after boot returned, which it must never do.
pub fn park(why: &str) -> ! {
    failed("the agent stopped; PID 1 stays up for diagnosis", why);
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_list_skips_blanks_and_comments() {
        let list = "# order from modules.dep\nvirtio.ko\n\n  virtio_ring.ko \nvirtio_net.ko\n";
        assert_eq!(
            module_names(list).collect::<Vec<_>>(),
            ["virtio.ko", "virtio_ring.ko", "virtio_net.ko"]
        );
    }

    #[test]
    fn reaper_collects_exited_children() {
        // Not PID 1 here, but reap_all must still collect this process's own zombie.
        #[allow(clippy::zombie_processes)] // reap_all is what waits for it
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            reap_all();
            // Once reaped, the pid is gone: kill(pid, 0) fails with ESRCH.
            if nix::sys::signal::kill(pid, None) == Err(nix::Error::ESRCH) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "child never reaped");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
