//! The `a3-server` command line. `serve` runs the server; every other command is a client of
//! the running server's HTTP API (see [`client`]), one file per command group, except two
//! that work without the server: `store rebuild-catalog` (on the state dir, with the A3
//! stopped) and `abd ssh --address`.

pub mod abd;
pub mod client;
pub mod disk;
pub mod host;
pub mod jobs;
pub mod pool;
pub mod sr;
pub mod store;
pub mod vm;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// The A3: agentless backup for XCP-ng / XenServer pools.
#[derive(Debug, Parser)]
#[command(name = "a3-server", version)]
pub struct Cli {
    /// The TOML config file (optional: defaults work without one).
    #[arg(long, global = true, env = "A3_CONFIG")]
    pub config: Option<PathBuf>,
    /// The state dir (catalog, store, keys); overrides the config file.
    #[arg(long, global = true, env = "A3_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The running server's API URL; by default read from `<state-dir>/api.url`.
    #[arg(long, global = true, env = "A3_API")]
    pub api: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the A3 server until SIGINT or SIGTERM.
    Serve {
        /// Where the HTTP API listens (overrides the config file).
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// Where port 2811 (the ABDs' data path) listens (overrides the config file).
        #[arg(long)]
        data_listen: Option<std::net::SocketAddr>,
    },
    /// Add, list, remove and re-trust XCP-ng / XenServer hosts.
    #[command(subcommand)]
    Host(host::HostCommand),
    /// List the pools the A3 manages.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Each pool's Alike_SR (the A3's own NFS SR) and its PBDs.
    #[command(subcommand)]
    Sr(sr::SrCommand),
    /// List the VMs of the managed pools.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Enroll, revoke and list ABDs (port-2811 credentials).
    #[command(subcommand)]
    Abd(abd::AbdCommand),
    /// Back up, restore and list disks through an ABD, without XAPI.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Verify the backup store, collect its garbage, show its figures, rebuild the catalog
    /// from it.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Back up whole VMs through ABDs.
    #[command(subcommand)]
    Backup(jobs::BackupCommand),
    /// Restore a VM version as a new VM (or over the original).
    Restore(jobs::RestoreArgs),
    /// Backup and restore jobs: list, show, log.
    #[command(subcommand)]
    Job(jobs::JobCommand),
    /// The versions of a VM.
    #[command(subcommand)]
    Version(jobs::VersionCommand),
}

impl Cli {
    /// The effective config: the file (or defaults), then the command-line overrides.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        Ok(config)
    }
}

/// Runs one command to completion.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::util::install_crypto_provider();
    let mut config = cli.load_config()?;
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Serve {
            http_listen,
            data_listen,
        } => {
            if let Some(addr) = http_listen {
                config.http_listen = addr;
            }
            if let Some(addr) = data_listen {
                config.data_listen = addr;
            }
            init_logging(config.log_json);
            Ok(runtime.block_on(crate::server::serve(config))?)
        }
        Command::Host(cmd) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(host::run(cmd, &api))
        }
        Command::Pool(cmd) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(pool::run(cmd, &api))
        }
        Command::Sr(cmd) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(sr::run(cmd, &api))
        }
        Command::Vm(cmd) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(vm::run(cmd, &api))
        }
        Command::Abd(abd::AbdCommand::Ssh(args)) if args.address.is_some() => {
            runtime.block_on(abd::ssh_direct(args, &config))
        }
        Command::Abd(cmd) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(abd::run(cmd, &api))
        }
        Command::Disk(cmd) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(disk::run(cmd, &api))
        }
        Command::Store(cmd) => runtime.block_on(store::run(cmd, &config, cli.api.as_deref())),
        Command::Backup(cmd) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(jobs::backup(cmd, &api))
        }
        Command::Restore(args) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(jobs::restore(args, &api))
        }
        Command::Job(cmd) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(jobs::job(cmd, &api))
        }
        Command::Version(cmd) => {
            let api = client::ApiClient::connect(&config, cli.api.as_deref())?;
            runtime.block_on(jobs::version(cmd, &api))
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
