//! `a3-server pool list|sync`.

use clap::Subcommand;

use super::client::ApiClient;
use super::host::{print_json, print_table};
use crate::api::dto::{PoolRow, SyncReport};

/// Pool commands.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List the pools the A3 manages and their connection state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-read a pool's whole inventory now, and say how long it took.
    Sync {
        /// The pool's uuid.
        uuid: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a pool command against the server's API.
pub async fn run(cmd: PoolCommand, api: &ApiClient) -> anyhow::Result<()> {
    let json = match cmd {
        PoolCommand::List { json } => json,
        PoolCommand::Sync { uuid, json } => {
            let report: SyncReport = api.post(&format!("/api/pools/{uuid}/sync"), &()).await?;
            if json {
                return print_json(&report);
            }
            println!(
                "pool {}: {} objects ({} VMs, {} VDIs) read in {:.3} s, stored in {:.3} s",
                report.pool_uuid,
                report.objects,
                report.vms,
                report.vdis,
                report.fetch_seconds,
                report.store_seconds
            );
            return Ok(());
        }
    };
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
