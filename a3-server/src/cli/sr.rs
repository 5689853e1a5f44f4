//! `a3-server sr status|plug`: each pool's `Alike_SR` and its PBDs.

use clap::Subcommand;

use super::client::ApiClient;
use super::host::{print_json, print_table};
use crate::api::dto::PoolSr;

/// SR commands.
#[derive(Debug, Subcommand)]
pub enum SrCommand {
    /// Show each pool's Alike_SR and, per host, whether its PBD is plugged.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create any missing Alike_SR and plug every PBD now (after fixing what stopped it).
    Plug {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an SR command against the server's API.
pub async fn run(cmd: SrCommand, api: &ApiClient) -> anyhow::Result<()> {
    let (pools, json): (Vec<PoolSr>, bool) = match cmd {
        SrCommand::Status { json } => (api.get("/api/sr").await?, json),
        SrCommand::Plug { json } => (api.post("/api/sr/plug", &()).await?, json),
    };
    if json {
        return print_json(&pools);
    }
    let mut rows = Vec::new();
    for p in &pools {
        let sr = p.sr_uuid.clone().unwrap_or_else(|| "(none)".into());
        if p.hosts.is_empty() {
            rows.push(vec![
                p.pool_name.clone(),
                sr.clone(),
                "-".into(),
                "-".into(),
            ]);
        }
        for h in &p.hosts {
            let state = if h.plugged { "plugged" } else { "unplugged" };
            rows.push(vec![
                p.pool_name.clone(),
                sr.clone(),
                format!("{} ({})", h.host_name, h.address),
                state.into(),
            ]);
        }
    }
    print_table(&["POOL", "ALIKE_SR", "HOST", "PBD"], rows);
    for p in &pools {
        if let Some(e) = &p.error {
            eprintln!("pool {}: {e}", p.pool_name);
        }
    }
    Ok(())
}
