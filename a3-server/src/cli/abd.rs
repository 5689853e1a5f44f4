//! `a3-server abd enroll|revoke|list|destroy|ssh|ips|diag`: ABD credentials for port 2811,
//! the ABD VMs of the pools, commands on an ABD over SSH, each pool's static IP list, and
//! the ABD diag job.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;

use super::client::ApiClient;
use super::host::{print_json, print_table};
use crate::api::dto::{
    AbdIp, AbdView, AbdVmRow, AbdVmView, DiagSpec, EnrollAnswer, IpList, JobDetail, Revoked,
    Started,
};

/// ABD commands.
#[derive(Debug, Subcommand)]
pub enum AbdCommand {
    /// Issue a one-time enrollment token for an ABD and write the agent's config file
    /// (mode 0600). Re-enrolling an id cuts off its previous certificate.
    Enroll {
        /// The ABD id.
        #[arg(long)]
        id: String,
        /// Where to write the agent config (`abd-agent run --config FILE`).
        #[arg(long)]
        out: PathBuf,
        /// The A3 address agents dial, when port 2811 listens on all addresses.
        #[arg(long)]
        address: Option<SocketAddr>,
    },
    /// Revoke an ABD: its certificate stops working at once, its connection is cut.
    Revoke {
        /// The ABD id.
        id: String,
    },
    /// List the ABDs, their credential state and whether they are connected, with the ABD
    /// VMs of the pools (pool, VM, address, state).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// With --json: the ABD VMs instead of the credentials.
        #[arg(long)]
        vms: bool,
    },
    /// Destroy an idle ABD VM (its disks, credential and static address go with it).
    Destroy {
        /// The ABD id.
        id: String,
    },
    /// Run a command on an ABD over SSH: `diag [--json]`, `status [--json]`, `logs` or
    /// `reboot`; prints its output and fails when it exits non-zero.
    Ssh(SshArgs),
    /// A pool's static IP list for ABDs.
    #[command(subcommand)]
    Ips(IpsCommand),
    /// Diagnose an ABD of a pool (an idle one, else a new one): the agent's self-checks and
    /// the A3's (data port, a test disk read and hashed by the ABD), one table per ABD with
    /// a remedy on each line that does not pass. Stored with the job (`job show`).
    Diag {
        /// The pool (uuid or name).
        #[arg(long)]
        pool: String,
        /// Print the job as JSON once it ended, instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// `abd ssh` arguments.
#[derive(Debug, clap::Args)]
pub struct SshArgs {
    /// The ABD id: the server looks up its address and pinned host key.
    pub abd: String,
    /// Reach the ABD at this address (IP:PORT) from this machine, with the A3's key from
    /// the state dir, instead of through the server.
    #[arg(long)]
    pub address: Option<SocketAddr>,
    /// With --address: the host key fingerprint (`SHA256:…`) to insist on.
    #[arg(long, requires = "address")]
    pub host_key: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Ask the command for JSON (`diag --json`, `status --json`).
    #[arg(long)]
    pub json: bool,
    /// The command: `diag`, `status`, `logs` or `reboot`.
    #[arg(required = true)]
    pub command: Vec<String>,
}

impl SshArgs {
    /// The command line sent to the ABD.
    fn remote_command(&self) -> String {
        let mut words = self.command.clone();
        if self.json {
            words.push("--json".into());
        }
        words.join(" ")
    }
}

/// `abd ssh --address`: straight from this machine, without the server.
pub async fn ssh_direct(args: SshArgs, config: &crate::config::Config) -> anyhow::Result<()> {
    let addr = args.address.context("ssh_direct needs --address")?;
    let key = crate::ssh::A3Key::load(&config.state_dir)?;
    let target = crate::ssh::Target {
        abd: args.abd.clone(),
        addr,
        host_key: args.host_key.clone(),
    };
    let command = args.remote_command();
    let timeout = std::time::Duration::from_secs(args.timeout);
    let out = crate::ssh::exec(&key, &target, &command, timeout).await?;
    print_ssh_output(&args.abd, &command, out)
}

fn print_ssh_output(
    abd: &str,
    command: &str,
    out: crate::api::dto::ExecOutput,
) -> anyhow::Result<()> {
    print!("{}", out.stdout);
    if out.status != 0 {
        bail!("ABD {abd}: `{command}` exited with status {}", out.status);
    }
    Ok(())
}

/// `abd ips` commands.
#[derive(Debug, Subcommand)]
pub enum IpsCommand {
    /// Replace the pool's list (addresses held by ABDs must stay).
    Set {
        /// The pool (uuid or name).
        #[arg(long)]
        pool: String,
        /// The network (uuid or name); default: the pool's management network.
        #[arg(long)]
        network: Option<String>,
        /// The gateway.
        #[arg(long)]
        gateway: Option<String>,
        /// Addresses as addr/prefix; none clears the list.
        addresses: Vec<String>,
    },
    /// Show the pool's list and who holds each address.
    Show {
        /// The pool (uuid or name).
        #[arg(long)]
        pool: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The agent config `abd-agent` reads (same fields as its `AgentConfig`).
#[derive(serde::Serialize)]
struct AgentConfigFile<'a> {
    id: &'a str,
    a3_address: String,
    server_name: &'a str,
    ca_pin: &'a str,
    token: &'a str,
}

/// Runs an ABD command against the server's API.
pub async fn run(cmd: AbdCommand, api: &ApiClient) -> anyhow::Result<()> {
    match cmd {
        AbdCommand::Enroll { id, out, address } => {
            let answer: EnrollAnswer = api.post(&format!("/api/abds/{id}/enroll"), &()).await?;
            let bound: SocketAddr = answer
                .a3_address
                .parse()
                .context("the A3 reported a bad port-2811 address")?;
            let addr = match address {
                Some(a) => a,
                None if bound.ip().is_unspecified() => bail!(
                    "port 2811 listens on {bound}: pass --address HOST:PORT with the address \
                     the ABD reaches the A3 at"
                ),
                None => bound,
            };
            let file = AgentConfigFile {
                id: &answer.id,
                a3_address: addr.to_string(),
                server_name: &answer.server_name,
                ca_pin: &answer.ca_pin,
                token: &answer.token,
            };
            let text = toml::to_string(&file)?;
            a3_shared::durable::write_private(&out, text.as_bytes())?;
            println!(
                "ABD '{}' enrolling: agent config written to {} (one-time token inside, \
                 valid until {} UTC; start `abd-agent run --config {}`)",
                answer.id,
                out.display(),
                crate::util::clock::utc_minute(answer.token_expires_at),
                out.display()
            );
            Ok(())
        }
        AbdCommand::Revoke { id } => {
            let r: Revoked = api.post(&format!("/api/abds/{id}/revoke"), &()).await?;
            println!("ABD '{}' revoked", r.id);
            Ok(())
        }
        AbdCommand::List { json, vms } => {
            let fleet: Vec<AbdVmView> = api.get("/api/fleet/abds").await?;
            if json && vms {
                return print_json(&fleet);
            }
            let abds: Vec<AbdView> = api.get("/api/abds").await?;
            if json {
                return print_json(&abds);
            }
            let fleet_rows: Vec<Vec<String>> = fleet
                .into_iter()
                .map(|f| {
                    vec![
                        f.row.id,
                        f.row.pool_uuid,
                        f.row.vm_uuid.unwrap_or_else(|| "-".into()),
                        f.row.ip,
                        f.row.state,
                        connected_from(f.connected_from, f.transport),
                    ]
                })
                .collect();
            if !fleet_rows.is_empty() {
                print_table(
                    &["ABD VM", "POOL", "VM", "ADDRESS", "STATE", "CONNECTED FROM"],
                    fleet_rows,
                );
                println!();
            }
            let rows = abds
                .into_iter()
                .map(|a| {
                    vec![
                        a.id,
                        a.state,
                        a.cert_expires_at
                            .map_or_else(|| "-".into(), crate::util::clock::utc_minute),
                        connected_from(a.connected_from, a.transport),
                    ]
                })
                .collect();
            print_table(&["ID", "STATE", "CERT EXPIRES", "CONNECTED FROM"], rows);
            Ok(())
        }
        AbdCommand::Destroy { id } => {
            let row: AbdVmRow = api
                .post(&format!("/api/fleet/abds/{id}/destroy"), &())
                .await?;
            println!(
                "ABD '{}' destroyed (its VM, disks, credential and address)",
                row.id
            );
            Ok(())
        }
        AbdCommand::Ssh(args) => {
            let command = args.remote_command();
            let out: crate::api::dto::ExecOutput = api
                .post(
                    &format!("/api/fleet/abds/{}/ssh", args.abd),
                    &crate::api::dto::SshCommand {
                        command: command.clone(),
                        timeout_secs: args.timeout,
                    },
                )
                .await?;
            print_ssh_output(&args.abd, &command, out)
        }
        AbdCommand::Ips(IpsCommand::Set {
            pool,
            network,
            gateway,
            addresses,
        }) => {
            let list: Vec<AbdIp> = api
                .post(
                    "/api/fleet/ips",
                    &IpList {
                        pool,
                        network,
                        addresses,
                        gateway,
                    },
                )
                .await?;
            print_ips(list);
            Ok(())
        }
        AbdCommand::Diag { pool, json } => {
            let started: Started = api.post("/api/diags", &DiagSpec { pool }).await?;
            let ended = super::jobs::follow(api, started.clone(), "diag").await;
            let d: JobDetail = api.get(&format!("/api/jobs/{}", started.job)).await?;
            if json {
                print_json(&d)?;
            } else {
                super::jobs::print_checks(&d.checks);
            }
            ended
        }
        AbdCommand::Ips(IpsCommand::Show { pool, json }) => {
            let list: Vec<AbdIp> = api.get(&format!("/api/fleet/ips?pool={pool}")).await?;
            if json {
                return print_json(&list);
            }
            print_ips(list);
            Ok(())
        }
    }
}

fn print_ips(list: Vec<AbdIp>) {
    let rows = list
        .into_iter()
        .map(|ip| {
            vec![
                format!("{}/{}", ip.address, ip.prefix),
                ip.gateway.unwrap_or_else(|| "-".into()),
                ip.network_uuid,
                ip.assigned_to.unwrap_or_else(|| "free".into()),
            ]
        })
        .collect();
    print_table(&["ADDRESS", "GATEWAY", "NETWORK", "HELD BY"], rows);
}

/// `ADDRESS (TRANSPORT)`, or `-` when not connected.
fn connected_from(from: Option<String>, transport: Option<String>) -> String {
    match (from, transport) {
        (Some(from), Some(t)) => format!("{from} ({t})"),
        (Some(from), None) => from,
        (None, _) => "-".into(),
    }
}
