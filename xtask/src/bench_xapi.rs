//! `cargo xtask bench xapi`: how long the A3 takes for a full inventory sync of a large
//! pool (3 hosts, 1,000 VMs with 2,000 VDIs), served by `xapi-sim`. The goal is < 1 s.
//!
//! Both programs run as release builds, as in production. The A3 adds the pool (login,
//! certificate pins, first sync), then `a3-server pool sync` re-reads the whole inventory
//! several times; each run reports its XAPI read time (8 `get_all_records` calls over
//! HTTPS, decoded) and its catalog write time (one SQLite transaction).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::setup;

const HOSTS: usize = 3;
const VMS: usize = 1000;
const RUNS: usize = 5;
const GOAL: Duration = Duration::from_secs(1);
const PASSWORD: &str = "bench-password";

/// A child process killed when the bench ends, even on error.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the bench's scratch directory at the end.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the bench and prints the result.
pub fn run() -> anyhow::Result<()> {
    setup::cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "xapi-sim",
        "-p",
        "a3-server",
        "--bins",
    ])?;
    let bins = setup::target_dir().join("release");
    let scratch = Scratch(
        setup::target_dir()
            .join("bench-xapi")
            .join(std::process::id().to_string()),
    );
    std::fs::create_dir_all(&scratch.0)
        .with_context(|| format!("{}: cannot create", scratch.0.display()))?;

    eprintln!("xtask: starting xapi-sim with {HOSTS} hosts and {VMS} VMs");
    let started = Instant::now();
    let (_sim, master) = start_sim(&bins, &scratch.0.join("sim"))?;
    eprintln!(
        "xtask: pool ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let a3_dir = scratch.0.join("a3");
    let _a3 = start_a3(&bins, &a3_dir)?;
    let password_file = scratch.0.join("password");
    std::fs::write(&password_file, PASSWORD)?;

    let started = Instant::now();
    let added = a3_json(
        &bins,
        &a3_dir,
        &[
            "host",
            "add",
            &master,
            "--user",
            "root",
            "--password-file",
            path_str(&password_file)?,
        ],
    )?;
    let add_time = started.elapsed();
    let pool = added["pool"]["uuid"]
        .as_str()
        .context("host add did not return the pool")?
        .to_owned();

    println!("xapi bench: full inventory sync by the A3 of a simulated pool (release builds)");
    println!(
        "host add (login, pins of {} hosts, first sync): {:.3} s",
        added["hosts"].as_array().map_or(0, Vec::len),
        add_time.as_secs_f64()
    );
    let mut totals = Vec::new();
    for run in 1..=RUNS {
        let r = a3_json(&bins, &a3_dir, &["pool", "sync", &pool])?;
        let fetch = r["fetch_seconds"].as_f64().unwrap_or(f64::NAN);
        let store = r["store_seconds"].as_f64().unwrap_or(f64::NAN);
        println!(
            "run {run}: {} objects ({} VMs, {} VDIs): {:.3} s (XAPI read {:.3} s, catalog write {:.3} s)",
            r["objects"],
            r["vms"],
            r["vdis"],
            fetch + store,
            fetch,
            store
        );
        totals.push(fetch + store);
    }
    totals.sort_by(f64::total_cmp);
    let median = totals[totals.len() / 2];
    let verdict = if median < GOAL.as_secs_f64() {
        "met"
    } else {
        "MISSED"
    };
    println!(
        "median full sync: {median:.3} s; goal < {:.0} s: {verdict} ({:.2}x the goal)",
        GOAL.as_secs_f64(),
        median / GOAL.as_secs_f64()
    );
    Ok(())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Starts the pool; returns the process and the master as `address:port`.
fn start_sim(bins: &Path, dir: &Path) -> anyhow::Result<(Killed, String)> {
    let mut child = Command::new(bins.join("xapi-sim"))
        .args([
            "serve",
            "--hosts",
            &HOSTS.to_string(),
            "--vms",
            &VMS.to_string(),
        ])
        .args([
            "--port",
            "0",
            "--address",
            "127.0.5.11",
            "--password",
            PASSWORD,
        ])
        .args(["--disk-size", "1MiB", "--state-dir", path_str(dir)?])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start xapi-sim")?;
    let stdout = child.stdout.take().context("xapi-sim stdout")?;
    let sim = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let ready: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("xapi-sim did not print its ready line: {line:?}"))?;
    let master = format!(
        "{}:{}",
        ready["master"].as_str().context("ready line: master")?,
        ready["port"].as_u64().context("ready line: port")?
    );
    Ok((sim, master))
}

/// Starts `a3-server serve` with its own state dir and waits for its API.
fn start_a3(bins: &Path, dir: &Path) -> anyhow::Result<Killed> {
    let a3 = Killed(
        Command::new(bins.join("a3-server"))
            .args([
                "serve",
                "--http-listen",
                "127.0.0.1:0",
                "--data-listen",
                "127.0.0.1:0",
            ])
            .env("A3_STATE_DIR", dir)
            .env("RUST_LOG", "warn")
            .env_remove("A3_CONFIG")
            .env_remove("A3_API")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a3-server")?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("api.url").exists() {
        if Instant::now() > deadline {
            bail!("a3-server did not publish its API within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(a3)
}

/// Runs an `a3-server` CLI command with `--json`.
fn a3_json(bins: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(bins.join("a3-server"))
        .args(args)
        .arg("--json")
        .env("A3_STATE_DIR", dir)
        .env_remove("A3_CONFIG")
        .env_remove("A3_API")
        .output()
        .context("cannot run a3-server")?;
    if !out.status.success() {
        bail!(
            "a3-server {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("a3-server {}: not JSON", args.join(" ")))
}
