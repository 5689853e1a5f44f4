//! `a3-server abd enroll|revoke|list`: ABD credentials for port 2811.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;

use super::client::ApiClient;
use super::host::{print_json, print_table};
use crate::api::abds::{AbdView, EnrollAnswer, Revoked};

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
    /// List the ABDs, their credential state and whether they are connected.
    List {
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
            crate::server::write_private(&out, text.as_bytes())?;
            println!(
                "ABD '{}' enrolling: agent config written to {} (one-time token inside; \
                 start `abd-agent run --config {}`)",
                answer.id,
                out.display(),
                out.display()
            );
            Ok(())
        }
        AbdCommand::Revoke { id } => {
            let r: Revoked = api.post(&format!("/api/abds/{id}/revoke"), &()).await?;
            println!("ABD '{}' revoked", r.id);
            Ok(())
        }
        AbdCommand::List { json } => {
            let abds: Vec<AbdView> = api.get("/api/abds").await?;
            if json {
                return print_json(&abds);
            }
            let rows = abds
                .into_iter()
                .map(|a| {
                    vec![
                        a.id,
                        a.state,
                        a.connected_from.unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print_table(&["ID", "STATE", "CONNECTED FROM"], rows);
            Ok(())
        }
    }
}
