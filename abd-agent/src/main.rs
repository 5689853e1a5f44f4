//! `abd-agent`: the ABD's agent. As a plain process (tests, power users) it reads a config
//! file; inside the appliance it is `/init` (see the appliance issue).
//!
//! Who does what:
//! - [`config`]: the config file `a3-server abd enroll` writes;
//! - [`identity`], [`tls`]: the agent's key and certificate, and trust in the pinned CA;
//! - [`conn`]: enrollment, the control stream, reconnect with backoff;
//! - [`jobs`]: running jobs and reporting progress;
//! - [`backup`], [`restore`]: the data pipelines; [`device`]: opening what a job names;
//! - [`wire`]: frames on QUIC streams;
//! - [`bootcfg`], [`xenbus`]: the boot config from xenstore, the kernel command line, a
//!   config disk or a file, and the address reported back in `vm-data/abd/assigned-ip`;
//! - [`ssh`]: the SSH server the A3 runs `diag`, `status`, `logs` and `reboot` through;
//!   [`status`] and [`logring`] keep what `status` and `logs` show.
//!
//! As PID 1 (the appliance's `/init`), [`init`] boots the VM, reads the boot config
//! ([`bootcfg`]), configures the network ([`net`]), prints [`diag`]'s checks and runs the
//! agent forever.
//!
//! Exit codes: 0 success; 1 the command failed (message on stderr); 2 bad usage (clap).
//! `run` only returns on a startup error: connection failures are retried forever.

mod backup;
mod blocks;
mod bootcfg;
mod config;
mod conn;
mod device;
mod diag;
mod hash;
mod identity;
mod init;
mod jobs;
mod link;
mod logring;
mod net;
mod restore;
mod ssh;
mod status;
mod tls;
mod wire;
mod xenbus;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The ABD agent: backs up and restores disks for its A3 over port 2811.
#[derive(Debug, Parser)]
#[command(name = "abd-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to the A3 (enrolling on first start), take jobs, reconnect when cut off.
    ///
    /// The config comes from xenstore `vm-data/abd/*` (through `--xenbus`, or
    /// /dev/xen/xenbus when it exists), then the kernel command line `abd.*=`, then a
    /// config disk (serial `abd-config`), then `--config`, the first source winning per key.
    Run {
        /// The agent config file (`a3-server abd enroll --out FILE` writes it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The xenstore device or socket (xapi-sim's process backend gives a socket).
        #[arg(long)]
        xenbus: Option<PathBuf>,
        /// Where device ids such as `xvdb` resolve.
        #[arg(long, default_value = "/dev")]
        dev_dir: PathBuf,
        /// Where the key and certificate are kept (default: next to `--config`, else
        /// /run/abd/state).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Where the SSH server listens (default: the ABD's address, port 22); port 0 picks
        /// a free port, which the log names.
        #[arg(long)]
        ssh_listen: Option<SocketAddr>,
    },
    /// Check the network, DNS, the paths to and from the A3, the disks and memory; each
    /// line passes, warns or fails with a remedy. Exits 1 when a line fails.
    Diag {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// A disk whose unbuffered read speed to measure (default: every visible disk).
        #[arg(long)]
        disk: Vec<PathBuf>,
        /// An agent config file, when not in the appliance (whose boot config is used).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Connect once (enrolling if needed), check the A3 accepts this ABD, and exit.
    Probe {
        /// The agent config file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    status::mark_start();
    if init::is_pid1() {
        // The appliance's /init: the kernel passes no subcommand, and this never returns.
        init_logging();
        init::appliance::run();
    }
    let cli = Cli::parse();
    init_logging();
    match main_exec(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps the agent's memory what its buffers need (the ABD has 128 MiB). glibc raises its
/// mmap threshold each time a large block is freed, after which megabyte block buffers come
/// from per-thread arenas that keep their pages: measured, peak RSS of a 1 GiB backup went
/// from 72 MB to within the budget with a fixed threshold and two arenas. musl's allocator
/// returns large blocks to the system already.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main_exec(cli: Cli) -> anyhow::Result<()> {
    tune_allocator();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Two cores in the appliance: two async workers, and at most three blocking threads
    // (the device reader plus two for hashing and compression).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(3)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run {
            config,
            xenbus,
            dev_dir,
            state_dir,
            ssh_listen,
        } => {
            device::set_dev_dir(dev_dir);
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            let (mut boot, mut xs) =
                bootcfg::gather(xenbus.as_deref(), &cmdline, config.as_deref())?;
            if state_dir.is_some() {
                boot.agent.state_dir = state_dir;
            }
            if let Some(xs) = xs.as_mut() {
                xenbus::report_pv_features(Some(xs));
            }
            // As a process the agent leaves the NICs alone: its address is the one it binds.
            let lease = std::env::var(bootcfg::SIM_DHCP_ENV).ok();
            let mut ssh_ip = Ipv4Addr::UNSPECIFIED;
            if let Some((addr, prefix)) = boot.net.addressing.process_address(lease.as_deref())? {
                boot.agent.bind = Some((addr, 0).into());
                ssh_ip = addr;
                if let Some(xs) = xs.as_mut() {
                    xs.write(xenbus::ASSIGNED_IP, &format!("{addr}/{prefix}"))?;
                }
                let gateway = match boot.net.addressing {
                    bootcfg::Addressing::Static { gateway, .. } => gateway,
                    bootcfg::Addressing::Dhcp => None,
                };
                tracing::info!(
                    %addr, prefix, ?gateway, dns = ?boot.net.dns,
                    "process mode: binding the assigned address; NICs and resolvers untouched"
                );
            }
            let ssh_listen = ssh_listen.unwrap_or((ssh_ip, ssh::PORT).into());
            runtime.block_on(async {
                ssh::start_for(&boot, ssh_listen, false, xs.as_mut()).await;
                conn::run(boot.agent).await
            })
        }
        Command::Diag { json, disk, config } => {
            let (cfg, _) = init::appliance::read_boot_config(config.as_deref())?;
            let checks = runtime.block_on(diag::run(&cfg, &disk, None));
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                print!("{}", diag::table(&checks));
            }
            if diag::any_failed(&checks) {
                anyhow::bail!("some checks failed: see the remedies");
            }
            Ok(())
        }
        Command::Probe { config } => {
            let cfg = config::AgentConfig::load(&config)?;
            let transport = runtime.block_on(conn::probe(cfg))?;
            println!("accepted by the A3 over {transport}");
            Ok(())
        }
    }
}

/// Logs at the level `RUST_LOG` names (`error`, `warn`, `info`, `debug`, `trace`; default
/// `info`). A level only, not per-module directives: those need tracing-subscriber's
/// `env-filter`, whose regex engine cost the static agent about half a megabyte.
fn init_logging() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(logring::Tee)
        // The appliance's console is a serial port read by people and tests: plain text.
        .with_ansi(!init::is_pid1())
        .init();
}
