//! `cargo xtask faults`: the fault sweeps at full size (issue 11). `cargo xtask test` runs
//! the same sweeps, smaller:
//! - the corruption sweep (`tests/tests/faults_corruption.rs`): 12,000 faults (bit flips,
//!   truncations, zeroed ranges, deletions) in chunks, manifests, version records and
//!   catalog rows, each of which a whole-store verify must name exactly;
//! - the kill sweep (`tests/tests/faults_kill.rs`): the A3 aborted at every crash point of
//!   a backup (its `failpoints` build), then restarted: nothing half-visible, nothing lost,
//!   nothing left in the pool;
//! - the full-disk sweep (`tests/tests/faults_enospc.rs`): 200 backups into a state dir
//!   filled to leave less room than each needs, each failing cleanly, the store verifying
//!   and GC reclaiming the failed run's chunks while the disk is still full;
//! - the big disk (`tests/tests/datapath_big_disk.rs`): 2.3 M non-zero blocks backed up,
//!   incrementally too, and restored bit-exact, with the agent's and the A3's peak memory.
//!
//! The last line printed is JSON.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::setup::{self, workspace_root};

/// Faults injected by the full corruption sweep.
const CORRUPTION_FAULTS: u32 = 12_000;
/// Backups the full-disk sweep runs.
const ENOSPC_RUNS: u32 = 200;

pub fn run() -> anyhow::Result<()> {
    // The pool tests start the shipped binaries; the kill sweep its failpoints build.
    setup::ensure_python_module("XenAPI", "XenAPI")?;
    setup::cargo(&["build", "--workspace", "--bins"])?;
    build_failpoints_server()?;
    eprintln!("xtask: corruption sweep, {CORRUPTION_FAULTS} faults");
    let faults = CORRUPTION_FAULTS.to_string();
    let corruption = sweep("faults_corruption", "FAULTS", ("A3_FAULTS", &faults))?;
    eprintln!("xtask: kill sweep, every crash point");
    let kills = sweep("faults_kill", "KILLS", ("A3_KILL_POINTS", "all"))?;
    eprintln!("xtask: full-disk sweep, {ENOSPC_RUNS} runs");
    let runs = ENOSPC_RUNS.to_string();
    let enospc = sweep("faults_enospc", "ENOSPC", ("A3_ENOSPC_RUNS", &runs))?;
    eprintln!("xtask: big disk, 2.3 M blocks");
    let big = sweep("datapath_big_disk", "BIGDISK", ("A3_BIG_DISK", "full"))?;
    let lost = |v: &serde_json::Value| v["bytes_lost"].as_u64().unwrap_or(u64::MAX);
    let bytes_lost = lost(&kills).saturating_add(lost(&enospc));
    println!(
        "faults injected {}, detected {}, harmless {} (the block still decodes), false \
         positives {}; kills survived {}, bytes lost {}; disk full {} times, failed cleanly \
         {} (the rest fit), verified and GC'd {}; big disk: {} non-zero blocks, agent peak {} \
         KiB, A3 peak {} KiB",
        corruption["faults_injected"],
        corruption["detected"],
        corruption["harmless"],
        corruption["false_positives"],
        kills["kills_survived"],
        bytes_lost,
        enospc["runs"],
        enospc["failed_cleanly"],
        enospc["gc_ran"],
        big["nonzero_blocks"],
        big["agent_hwm_kib"],
        big["a3_hwm_kib"],
    );
    let summary = serde_json::json!({
        "faults_injected": corruption["faults_injected"],
        "detected": corruption["detected"],
        "harmless": corruption["harmless"],
        "false_positives": corruption["false_positives"],
        "kills_survived": kills["kills_survived"],
        "bytes_lost": bytes_lost,
        "enospc_runs": enospc["runs"],
        "enospc_failed_cleanly": enospc["failed_cleanly"],
        "enospc_failed_writing": enospc["failed_writing"],
        "enospc_gc_ran": enospc["gc_ran"],
        "big_disk_blocks": big["nonzero_blocks"],
        "agent_hwm_kib": big["agent_hwm_kib"],
        "a3_hwm_kib": big["a3_hwm_kib"],
    });
    println!("{summary}");
    Ok(())
}

/// Builds `a3-server` with its crash points (`util::crashpoint`) as
/// `target/debug/a3-server-failpoints`, for the kill sweep, then puts the shipped build
/// back under `a3-server` (cargo keeps both, so that second step only copies it).
pub fn build_failpoints_server() -> anyhow::Result<()> {
    let build = |features: &[&str]| {
        let mut args = vec!["build", "-p", "a3-server", "--bin", "a3-server"];
        args.extend_from_slice(features);
        setup::cargo(&args)
    };
    build(&["--features", "failpoints"])?;
    let dir = setup::target_dir().join("debug");
    std::fs::copy(dir.join("a3-server"), dir.join("a3-server-failpoints"))
        .context("copying the failpoints build of a3-server")?;
    build(&[])
}

/// Runs the e2e test `test` with `env` set; returns the JSON of its `PREFIX {json}` line.
fn sweep(test: &str, prefix: &str, env: (&str, &str)) -> anyhow::Result<serde_json::Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "-p", "a3-e2e", "--test", test, "--", "--nocapture"])
        .env(env.0, env.1)
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        bail!("the sweep {test} failed ({})", out.status);
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
        .with_context(|| format!("the sweep {test} printed no {prefix} line"))?;
    serde_json::from_str(line).with_context(|| format!("the {prefix} line of {test}"))
}
