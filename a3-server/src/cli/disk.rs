//! `a3-server disk backup|restore|versions`: the data path without XAPI, for tests, the
//! benchmark and power users. Backup and restore run on an ABD's agent; the CLI follows the
//! job with a progress bar on stderr and prints the result on stdout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::client::{ApiClient, urlencode};
use super::host::{print_json, print_table};
use crate::api::dto::{BackupBody, Dispatched, JobState, JobStatus, RestoreBody, VersionInfo};

/// Disk commands.
#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Back up a device or file on an ABD as the named disk; prints the version id.
    Backup {
        /// The ABD whose agent reads the device.
        #[arg(long)]
        abd: String,
        /// The device or file, as the agent sees it.
        #[arg(long)]
        path: String,
        /// The disk's name in the store.
        #[arg(long)]
        disk: String,
        /// A CBT bitmap file (base64, as `VDI.list_changed_blocks` returns): read only the
        /// changed 64 KiB ranges and take the rest from the last committed version.
        #[arg(long)]
        cbt: Option<PathBuf>,
    },
    /// Restore a version onto a device or file on an ABD.
    Restore {
        /// The version id.
        version: String,
        /// The ABD whose agent writes the target.
        #[arg(long)]
        abd: String,
        /// The target device or file, as the agent sees it.
        #[arg(long)]
        path: String,
        /// The disk of the version, when it has several.
        #[arg(long)]
        disk: Option<String>,
    },
    /// List this A3's data-path jobs (since it started), newest first.
    Jobs {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List committed versions.
    Versions {
        /// Only this disk's versions.
        #[arg(long)]
        disk: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a disk command against the server's API.
pub async fn run(cmd: DiskCommand, api: &ApiClient) -> anyhow::Result<()> {
    match cmd {
        DiskCommand::Backup {
            abd,
            path,
            disk,
            cbt,
        } => {
            let cbt = match cbt {
                Some(file) => Some(std::fs::read_to_string(&file).with_context(|| {
                    format!("--cbt {}: cannot read the bitmap file", file.display())
                })?),
                None => None,
            };
            let body = BackupBody {
                abd,
                path,
                disk,
                cbt,
            };
            let d: Dispatched = api.post("/api/disks/backup", &body).await?;
            let version = follow(api, d, "backup").await?;
            println!("{version}");
            Ok(())
        }
        DiskCommand::Restore {
            version,
            abd,
            path,
            disk,
        } => {
            let body = RestoreBody {
                abd,
                version,
                disk,
                path: path.clone(),
            };
            let d: Dispatched = api.post("/api/disks/restore", &body).await?;
            let version = follow(api, d, "restore").await?;
            println!("restored version {version} to {path}");
            Ok(())
        }
        DiskCommand::Jobs { json } => {
            let jobs: Vec<JobStatus> = api.get("/api/disks/jobs").await?;
            if json {
                return print_json(&jobs);
            }
            let rows = jobs
                .into_iter()
                .map(|j| {
                    let state = match j.state {
                        JobState::Running => format!("running {}/{} bytes", j.done, j.total),
                        JobState::Finishing => "finishing".into(),
                        JobState::Succeeded { version } => format!("succeeded: {version}"),
                        JobState::Failed { reason } => format!("failed: {reason}"),
                    };
                    vec![j.id.to_string(), j.kind, j.abd, j.disk, state]
                })
                .collect();
            print_table(&["JOB", "KIND", "ABD", "DISK", "STATE"], rows);
            Ok(())
        }
        DiskCommand::Versions { disk, json } => {
            let path = match &disk {
                Some(d) => format!("/api/disks/versions?disk={}", urlencode(d)),
                None => "/api/disks/versions".to_owned(),
            };
            let versions: Vec<VersionInfo> = api.get(&path).await?;
            if json {
                return print_json(&versions);
            }
            let rows = versions
                .iter()
                .map(|v| {
                    let disks = v
                        .disks
                        .iter()
                        .map(|d| format!("{} ({} bytes)", d.name, d.size))
                        .collect::<Vec<_>>()
                        .join(", ");
                    vec![
                        v.id.to_string(),
                        v.subject.clone(),
                        v.created_at.to_string(),
                        disks,
                    ]
                })
                .collect();
            print_table(&["VERSION", "SUBJECT", "CREATED (UNIX)", "DISKS"], rows);
            Ok(())
        }
    }
}

/// Polls the job until it ends, drawing a progress bar on stderr; returns the version.
async fn follow(api: &ApiClient, d: Dispatched, what: &str) -> anyhow::Result<String> {
    for note in &d.notes {
        eprintln!("note: {note}");
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(format!("{what} job {}", d.job));
    let path = format!("/api/disks/jobs/{}", d.job);
    loop {
        let status: JobStatus = match api.get(&path).await {
            Ok(s) => s,
            Err(e) => {
                bar.abandon();
                bail!(
                    "{what} job {}: lost track of it ({e:#}); if the A3 stopped or restarted, \
                     the job failed and committed nothing: run it again",
                    d.job
                );
            }
        };
        bar.set_length(status.total);
        bar.set_position(status.done);
        match status.state {
            JobState::Succeeded { version } => {
                bar.finish_and_clear();
                return Ok(version);
            }
            JobState::Failed { reason } => {
                bar.abandon();
                bail!("{what} job {} failed: {reason}", d.job);
            }
            JobState::Finishing => bar.set_message("committing"),
            JobState::Running => {}
        }
        // A status read costs the server microseconds; polling often keeps a short job
        // (a CBT incremental takes a few tenths of a second) from waiting on the CLI.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
