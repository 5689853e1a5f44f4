//! `xapi-sim serve`: runs a simulated XCP-ng pool until interrupted.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use xapi_sim::{AbdBackend, Sim, SimConfig};

#[derive(Parser)]
#[command(
    version,
    about = "A simulated XCP-ng pool speaking XAPI, for tests and demos"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a pool; prints one JSON line on stdout when ready.
    Serve {
        /// Hosts in a new pool (a saved pool keeps its own).
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Demo VMs in a new pool (a saved pool keeps its own).
        #[arg(long, default_value_t = 10)]
        vms: usize,
        /// Directory holding the pool's state across restarts.
        #[arg(long)]
        state_dir: PathBuf,
        /// Port every host listens on; 0 picks a free one.
        #[arg(long, default_value_t = 443)]
        port: u16,
        /// Address of host 1; host i gets the i-th next address.
        #[arg(long, default_value = "127.0.0.11")]
        address: Ipv4Addr,
        /// The root password (default: the saved one, or a generated one).
        #[arg(long)]
        password: Option<String>,
        /// Size of each demo VM's first disk, e.g. 64MiB, 1GiB or bytes.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        disk_size: u64,
        /// The abd-agent binary: ABD VMs (xenstore_data vm-data/abd/a3) then run it as a
        /// process; without it (and with the process backend) they start with no backend.
        #[arg(long)]
        abd_agent: Option<PathBuf>,
        /// What runs ABD VMs: `process` (the agent binary, with --abd-agent) or `qemu`
        /// (their boot disk, the ABD image, under qemu-system-x86_64 TCG).
        #[arg(long, value_enum, default_value_t = AbdBackend::Process)]
        abd_backend: AbdBackend,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "xapi_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve {
        hosts,
        vms,
        state_dir,
        port,
        address,
        password,
        disk_size,
        abd_agent,
        abd_backend,
    } = Cli::parse().command;
    let config = SimConfig {
        state_dir,
        hosts,
        vms,
        address,
        port,
        password,
        disk_size,
        abd_agent,
        abd_backend,
    };
    let sim = Sim::start(config)
        .await
        .context("starting the simulated pool")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", sim.ready_line())?;
    out.flush()?;
    drop(out);
    tracing::info!(
        "serving {} hosts on port {}; master {}",
        sim.hosts.len(),
        sim.port,
        sim.master_url()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sim.shutdown().await.context("saving the pool state")?;
    Ok(())
}
