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
/// installs them): `libnfs-utils`'s `nfs-ls`/`nfs-cp` check the A3 SR's NFS server.
pub const TEST_TOOLS: &[(&str, &str)] = &[("nfs-ls", "libnfs-utils")];

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

/// Installs Debian packages (running `apt-get update` once per process first).
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
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "could not install {}; run as root: {hint}",
            packages.join(" ")
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
