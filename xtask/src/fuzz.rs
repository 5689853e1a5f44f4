//! `cargo xtask fuzz`: runs the `cargo fuzz` targets of `fuzz/`, installing cargo-fuzz when
//! missing. libFuzzer needs nightly compiler flags; `RUSTC_BOOTSTRAP=1` lets the machine's
//! one stable toolchain accept them, since no other toolchain can be fetched here.

use std::process::Command;

use anyhow::{Context, bail};

use crate::setup::{self, workspace_root};

/// Every fuzz target in `fuzz/Cargo.toml`.
const TARGETS: &[&str] = &[
    "xmlrpc",
    "frames",
    "xva",
    "vhd",
    "xenstore",
    "portmap",
    "version_record",
    "plan_pages",
];

/// Fuzzes `target` (or every target in turn) for `seconds` each.
pub fn run(target: Option<&str>, seconds: u32) -> anyhow::Result<()> {
    if !setup::command_exists("cargo-fuzz") {
        eprintln!("xtask: installing cargo-fuzz");
        setup::cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "no fuzz target {t:?}; the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    for t in targets {
        eprintln!("xtask: fuzzing {t} for {seconds} s");
        let status = Command::new("cargo")
            .args([
                "fuzz",
                "run",
                t,
                "--",
                &format!("-max_total_time={seconds}"),
            ])
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(workspace_root().join("fuzz"))
            .status()
            .context("cannot run cargo fuzz")?;
        if !status.success() {
            bail!("fuzz target {t} found a failure; the input is under fuzz/artifacts/{t}/");
        }
    }
    Ok(())
}
