//! `a3-server vm list`.

use clap::Subcommand;

use super::client::ApiClient;
use super::host::{human_bytes, print_json, print_table};
use crate::api::dto::VmRow;

/// VM commands.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// List the VMs of every pool (not templates, snapshots or control domains).
    List {
        /// Only this pool (uuid).
        #[arg(long)]
        pool: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a VM command against the server's API.
pub async fn run(cmd: VmCommand, api: &ApiClient) -> anyhow::Result<()> {
    let VmCommand::List { pool, json } = cmd;
    let path = match &pool {
        Some(p) => format!("/api/vms?pool={p}"),
        None => "/api/vms".to_owned(),
    };
    let vms: Vec<VmRow> = api.get(&path).await?;
    if json {
        return print_json(&vms);
    }
    let rows = vms
        .iter()
        .map(|v| {
            let disk_bytes: i64 = v.disks.iter().filter_map(|d| d.virtual_size).sum();
            vec![
                v.name.clone(),
                v.power_state.clone(),
                v.pool_name.clone(),
                v.host.clone().unwrap_or_else(|| "-".into()),
                v.vcpus.to_string(),
                human_bytes(v.memory_bytes),
                format!("{} ({})", v.disks.len(), human_bytes(disk_bytes)),
                v.uuid.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME", "POWER", "POOL", "HOST", "VCPUS", "MEMORY", "DISKS", "UUID",
        ],
        rows,
    );
    Ok(())
}
