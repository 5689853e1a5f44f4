//! `a3-server pool list`.

use clap::Subcommand;

use super::client::ApiClient;
use super::host::{print_json, print_table};
use crate::catalog::inventory::PoolRow;

/// Pool commands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List the pools the A3 manages and their connection state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a pool command against the server's API.
pub async fn run(cmd: PoolCommand, api: &ApiClient) -> anyhow::Result<()> {
    let PoolCommand::List { json } = cmd;
    let pools: Vec<PoolRow> = api.get("/api/pools").await?;
    if json {
        return print_json(&pools);
    }
    let rows = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.master_address.clone(),
                p.hosts.to_string(),
                p.vms.to_string(),
                if p.status.is_empty() {
                    "ok".to_owned()
                } else {
                    p.status.clone()
                },
                p.uuid.clone(),
            ]
        })
        .collect();
    print_table(&["NAME", "MASTER", "HOSTS", "VMS", "STATUS", "UUID"], rows);
    Ok(())
}
