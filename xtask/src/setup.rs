//! Installing what tasks need: Debian packages, pip packages, and running cargo.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Once;

use anyhow::{Context, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR`, else the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Warns when the file system of the build output has less than `gib` GiB free: a linker
/// that runs out of space mid-write dies of SIGBUS ("ld terminated with signal 7"), which
/// names nothing.
pub fn warn_if_low_on_space(gib: u64) {
    let mut dir = target_dir();
    while !dir.exists() && dir.pop() {}
    let Ok(out) = Command::new("df").args(["-Pk"]).arg(&dir).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let free_kib = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(kib) = free_kib.filter(|kib| *kib < gib << 20) {
        eprintln!(
            "xtask: warning: only {:.1} GiB free under {}; a cold `cargo xtask test` needs \
             about {gib} GiB (free space, or point CARGO_TARGET_DIR elsewhere)",
            kib as f64 / (1 << 20) as f64,
            dir.display()
        );
    }
}

/// Runs `cargo ARGS` in the workspace root, failing if it fails.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Makes sure `python3 -c 'import MODULE'` works, installing `package` with pip if not.
pub fn ensure_python_module(module: &str, package: &str) -> anyhow::Result<()> {
    let present = |m: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {m}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if present(module) {
        return Ok(());
    }
    eprintln!("xtask: installing the Python package {package} with pip");
    let ok = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", package])
        .status()
        .is_ok_and(|s| s.success());
    if !ok || !present(module) {
        bail!(
            "the Python package {package} is missing and pip could not install it; run: python3 -m pip install {package}"
        );
    }
    Ok(())
}

/// The Debian packages the tests use, each with a command it provides (`cargo xtask test`
/// installs them). They check the A3 SR's NFS server (`tests/tests/sr_nfs.rs`):
/// `libnfs-utils`'s `nfs-ls`/`nfs-cp`; `rpcbind`'s `rpcinfo` and `nfs-common`'s `showmount`,
/// which XCP-ng's SM runs; `ip` and `nft` to run those in a network namespace without UDP 111.
/// No service starts as they install (see [`apt_install`]): rpcbind would take port 111.
pub const TEST_TOOLS: &[(&str, &str)] = &[
    ("nfs-ls", "libnfs-utils"),
    ("rpcinfo", "rpcbind"),
    ("showmount", "nfs-common"),
    ("ip", "iproute2"),
    ("nft", "nftables"),
];

/// Makes sure each command exists, installing the Debian package that provides it.
/// `tools` pairs a command name with its Debian package.
pub fn ensure_debian_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| !command_exists(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)?;
    let still: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| !command_exists(cmd))
        .map(|(cmd, _)| *cmd)
        .collect();
    if !still.is_empty() {
        bail!(
            "{} still missing after installing {}; run as root: apt-get install -y {}",
            still.join(" "),
            missing.join(" "),
            missing.join(" ")
        );
    }
    Ok(())
}

/// Makes sure qemu is there for the ABD image's end-to-end tests (`tests/tests/abd_qemu.rs`).
pub fn ensure_qemu() -> anyhow::Result<()> {
    ensure_debian_tools(&[("qemu-system-x86_64", "qemu-system-x86")])
}

/// Debian's maintainer scripts start services through invoke-rc.d or deb-systemd-invoke,
/// and both ask this script first; its exit status 101 forbids the action.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// Forbids service starts while it lives, with a policy-rc.d of its own when the machine has
/// none (container images often ship one that already says 101; that one is left alone).
struct NoServiceStarts {
    installed: bool,
}

impl NoServiceStarts {
    fn new() -> anyhow::Result<NoServiceStarts> {
        use std::os::unix::fs::PermissionsExt;
        if std::path::Path::new(POLICY_RC_D).exists() {
            return Ok(NoServiceStarts { installed: false });
        }
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# cargo xtask: no service starts while it installs packages\nexit 101\n",
        )
        .and_then(|()| {
            std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
        })
        .with_context(|| format!("cannot write {POLICY_RC_D}; run as root"))?;
        Ok(NoServiceStarts { installed: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.installed {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

/// Whether a process named `rpcbind` runs on this machine.
fn rpcbind_running() -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        std::fs::read_to_string(p.path().join("comm")).is_ok_and(|comm| comm.trim() == "rpcbind")
    })
}

/// Installs Debian packages (running `apt-get update` once per process first) without
/// starting any service they bring: rpcbind's would take port 111, which the tests' A3 binds.
/// On a systemd machine rpcbind's units are also masked, so that neither socket activation nor
/// a reboot starts it later.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    static UPDATE: Once = Once::new();
    let hint = format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    UPDATE.call_once(|| {
        eprintln!("xtask: apt-get update");
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    });
    eprintln!("xtask: installing Debian packages: {}", packages.join(" "));
    let no_starts = NoServiceStarts::new()?;
    let rpcbind = packages
        .iter()
        .any(|p| matches!(*p, "rpcbind" | "nfs-common"));
    if rpcbind && std::path::Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl")
            .args(["mask", "rpcbind.service", "rpcbind.socket"])
            .status();
    }
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    drop(no_starts);
    if !ok {
        bail!(
            "could not install {}; run as root: {hint}",
            packages.join(" ")
        );
    }
    if rpcbind && rpcbind_running() {
        bail!(
            "rpcbind is running and holds port 111, which the A3 under test binds; stop it: systemctl mask --now rpcbind.service rpcbind.socket (or kill it)"
        );
    }
    Ok(())
}

/// Whether `cmd` is on PATH.
pub fn command_exists(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}
