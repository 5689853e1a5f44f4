//! `a3-server host add|list|remove|trust`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::client::ApiClient;
use crate::api::dto::{AddHost, AddedPool, HostRow, RemovedPool, Trusted};

/// Host commands.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Add a pool by any of its hosts: the A3 finds the master and records every host,
    /// pinning each host's TLS certificate on first contact.
    Add {
        /// The host: `HOST`, `HOST:PORT` or `https://HOST[:PORT]/`.
        address: String,
        /// The XAPI user.
        #[arg(long, default_value = "root")]
        user: String,
        /// A file holding the password (one line), so it stays out of the shell history.
        #[arg(long)]
        password_file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List every recorded host.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget the pool of a host (by uuid or address), with its inventory and password.
    Remove {
        /// The host's uuid or address.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Trust the certificate a host presents now, after it was replaced on purpose.
    Trust {
        /// The host's address (or uuid).
        address: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a host command against the server's API.
pub async fn run(cmd: HostCommand, api: &ApiClient) -> anyhow::Result<()> {
    match cmd {
        HostCommand::Add {
            address,
            user,
            password_file,
            json,
        } => {
            let password = std::fs::read_to_string(&password_file).with_context(|| {
                format!("--password-file {}: cannot read", password_file.display())
            })?;
            // Only the line ending is not part of the password.
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            let body = AddHost {
                address,
                username: user,
                password,
            };
            let added: AddedPool = api.post("/api/hosts", &body).await?;
            if json {
                return print_json(&added);
            }
            println!(
                "added pool {} ({}) with {} hosts and {} VMs",
                added.pool.name,
                added.pool.uuid,
                added.hosts.len(),
                added.pool.vms
            );
            print_hosts(&added.hosts);
        }
        HostCommand::List { json } => {
            let hosts: Vec<HostRow> = api.get("/api/hosts").await?;
            if json {
                return print_json(&hosts);
            }
            print_hosts(&hosts);
        }
        HostCommand::Remove { id, json } => {
            let removed: RemovedPool = api.delete(&format!("/api/hosts/{}", encode(&id))).await?;
            if json {
                return print_json(&removed);
            }
            println!(
                "removed pool {} ({}) and its {} hosts",
                removed.pool_name, removed.pool_uuid, removed.hosts
            );
        }
        HostCommand::Trust { address, json } => {
            let path = format!("/api/hosts/{}/trust", encode(&address));
            let trusted: Trusted = api.post(&path, &()).await?;
            if json {
                return print_json(&trusted);
            }
            println!(
                "host {}: now trusting certificate SHA-256 {} (was {})",
                trusted.address,
                trusted.current,
                trusted.previous.as_deref().unwrap_or("not pinned")
            );
        }
    }
    Ok(())
}

fn print_hosts(hosts: &[HostRow]) {
    let rows = hosts
        .iter()
        .map(|h| {
            vec![
                h.endpoint().to_string(),
                h.name.clone(),
                h.pool_name.clone(),
                if h.is_master { "master" } else { "supporter" }.to_owned(),
                h.cert_sha256
                    .as_deref()
                    .map(short_fingerprint)
                    .unwrap_or_else(|| "(not yet pinned)".into()),
                h.uuid.clone(),
            ]
        })
        .collect();
    print_table(
        &["ADDRESS", "NAME", "POOL", "ROLE", "CERT SHA-256", "UUID"],
        rows,
    );
}

fn short_fingerprint(fp: &str) -> String {
    match fp.get(..23) {
        Some(head) => format!("{head}…"),
        None => fp.to_owned(),
    }
}

/// Percent-encodes a path segment (addresses may hold `:` and `[]`).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints a value as pretty JSON.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints left-aligned columns under a header; an empty list says so.
pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Bytes in binary units, for tables.
pub(crate) fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(encode("127.0.0.12:4443"), "127.0.0.12%3A4443");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2 << 30), "2.0 GiB");
        assert_eq!(short_fingerprint("AB:CD"), "AB:CD");
    }
}
