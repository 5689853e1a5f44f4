//! `a3-server backup run`, `restore`, `job list|show|log`, `version list`: whole-VM jobs.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::client::{ApiClient, urlencode};
use super::host::{print_json, print_table};
use crate::api::dto::{
    BackupSpec, CheckRow, JobDetail, JobSummary, LogLine, RestoreSpec, Started, VersionView,
};

/// Backup commands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up VMs (by name or uuid), one ABD per VM at once; follows the run with progress
    /// bars and exits non-zero if any VM failed.
    Run {
        /// The VMs.
        #[arg(required = true)]
        vms: Vec<String>,
        /// How many VMs at once (= ABDs).
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Start the run and return at once, printing its job and run ids as JSON.
        #[arg(long)]
        detach: bool,
    },
}

/// Job commands.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// The jobs with their latest run.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job: its latest run, each VM, live progress.
    Show {
        /// The job id.
        id: i64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The log of a job's latest run, with timestamps.
    Log {
        /// The job id.
        id: i64,
    },
}

/// Version commands.
#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// The versions of a VM (name or uuid).
    List {
        /// The VM.
        vm: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `restore VERSION`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The version (`a3-server version list VM`).
    pub version: i64,
    /// The target pool (uuid or name); default: the VM's own.
    #[arg(long)]
    pub pool: Option<String>,
    /// The target SR (uuid or name); default: the pool's default SR.
    #[arg(long)]
    pub sr: Option<String>,
    /// Start the restored VM.
    #[arg(long)]
    pub start: bool,
    /// Write over the original VM's disks (it must be halted) instead of a new VM. The VM is
    /// blocked from starting meanwhile, and a safety snapshot taken first is written back
    /// if the restore fails.
    #[arg(long)]
    pub in_place: bool,
    /// With --in-place: skip the safety snapshot (for an SR without room for it). A failure
    /// part-way then leaves the disks partly overwritten and the VM blocked.
    #[arg(long, requires = "in_place")]
    pub no_safety_snapshot: bool,
    /// Start the run and return at once, printing its job and run ids as JSON.
    #[arg(long)]
    pub detach: bool,
}

/// Runs a backup command.
pub async fn backup(cmd: BackupCommand, api: &ApiClient) -> anyhow::Result<()> {
    let BackupCommand::Run {
        vms,
        concurrency,
        detach,
    } = cmd;
    let started: Started = api
        .post("/api/backups", &BackupSpec { vms, concurrency })
        .await?;
    if detach {
        return print_json(&started);
    }
    follow(api, started, "backup").await
}

/// Runs `restore`.
pub async fn restore(args: RestoreArgs, api: &ApiClient) -> anyhow::Result<()> {
    let spec = RestoreSpec {
        version: args.version,
        pool: args.pool,
        sr: args.sr,
        start: args.start,
        in_place: args.in_place,
        no_safety_snapshot: args.no_safety_snapshot,
    };
    let started: Started = api.post("/api/restores", &spec).await?;
    if args.detach {
        return print_json(&started);
    }
    follow(api, started, "restore").await
}

/// Runs a job command.
pub async fn job(cmd: JobCommand, api: &ApiClient) -> anyhow::Result<()> {
    match cmd {
        JobCommand::List { json } => {
            let jobs: Vec<JobSummary> = api.get("/api/jobs").await?;
            if json {
                return print_json(&jobs);
            }
            let rows = jobs
                .into_iter()
                .map(|j| {
                    let (state, reason) = j
                        .run
                        .map(|r| (r.state, r.reason.unwrap_or_default()))
                        .unwrap_or_default();
                    vec![
                        j.job.id.to_string(),
                        j.job.kind,
                        crate::util::clock::utc_minute(j.job.created_at),
                        state,
                        reason,
                    ]
                })
                .collect();
            print_table(&["JOB", "KIND", "CREATED (UTC)", "STATE", "REASON"], rows);
            Ok(())
        }
        JobCommand::Show { id, json } => {
            let d: JobDetail = api.get(&format!("/api/jobs/{id}")).await?;
            if json {
                return print_json(&d);
            }
            println!("job {} ({}): {}", d.job.id, d.job.kind, d.job.spec);
            if let Some(r) = &d.run {
                println!(
                    "run {}: {}{}",
                    r.id,
                    r.state,
                    r.reason
                        .as_deref()
                        .map(|x| format!(": {x}"))
                        .unwrap_or_default()
                );
            }
            let rows = d
                .items
                .into_iter()
                .map(|i| {
                    let p = d.progress.get(&i.subject);
                    vec![
                        i.label,
                        i.state,
                        i.abd.unwrap_or_else(|| "-".into()),
                        i.version.map_or("-".into(), |v| v.to_string()),
                        p.map_or("-".into(), |p| format!("{}/{}", p.done, p.total)),
                        i.reason.unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &["VM", "STATE", "ABD", "VERSION", "PROGRESS", "REASON"],
                rows,
            );
            print_checks(&d.checks);
            Ok(())
        }
        JobCommand::Log { id } => {
            let lines: Vec<LogLine> = api.get(&format!("/api/jobs/{id}/log")).await?;
            for l in lines {
                println!(
                    "{}.{:03} {:5} {}",
                    crate::util::clock::utc_minute(l.at_ms / 1000),
                    l.at_ms % 1000,
                    l.level,
                    l.message
                );
            }
            Ok(())
        }
    }
}

/// Runs a version command.
pub async fn version(cmd: VersionCommand, api: &ApiClient) -> anyhow::Result<()> {
    let VersionCommand::List { vm, json } = cmd;
    let versions: Vec<VersionView> = api
        .get(&format!("/api/versions?vm={}", urlencode(&vm)))
        .await?;
    if json {
        return print_json(&versions);
    }
    let rows = versions
        .into_iter()
        .map(|v| {
            vec![
                v.id.to_string(),
                v.vm_name,
                crate::util::clock::utc_minute(v.created_at),
                v.disks
                    .iter()
                    .map(|(n, s)| format!("{n}:{s}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    print_table(&["VERSION", "VM", "CREATED (UTC)", "DISKS (BYTES)"], rows);
    Ok(())
}

/// Follows a run with one progress bar per VM until it ends.
pub(super) async fn follow(api: &ApiClient, started: Started, what: &str) -> anyhow::Result<()> {
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:20} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
    )
    .expect("valid template");
    let mut shown: HashMap<String, ProgressBar> = HashMap::new();
    let path = format!("/api/jobs/{}", started.job);
    loop {
        let d: JobDetail = api.get(&path).await?;
        for item in &d.items {
            let bar = shown.entry(item.subject.clone()).or_insert_with(|| {
                let b = bars.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(item.label.clone());
                b
            });
            if let Some(p) = d.progress.get(&item.subject) {
                bar.set_length(p.total);
                bar.set_position(p.done);
            }
            match item.state.as_str() {
                "succeeded" if !bar.is_finished() => bar.finish_with_message(format!(
                    "done{}",
                    item.version
                        .map(|v| format!(", version {v}"))
                        .unwrap_or_default()
                )),
                "failed" if !bar.is_finished() => bar.abandon_with_message("failed"),
                "running" => bar.set_message(item.abd.clone().unwrap_or_default()),
                _ => {}
            }
        }
        if let Some(run) = d.run.filter(|r| r.state != "running") {
            for b in shown.values() {
                if !b.is_finished() {
                    b.abandon();
                }
            }
            if run.state == "succeeded" {
                println!(
                    "{what} job {} succeeded (see `a3-server job log {}`)",
                    started.job, started.job
                );
                return Ok(());
            }
            bail!(
                "{what} job {} failed: {}; see `a3-server job log {}`",
                started.job,
                run.reason.unwrap_or_default(),
                started.job
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A diag run's results: one table per ABD, a remedy on each line that is not a pass.
pub fn print_checks(checks: &[CheckRow]) {
    let mut abds: Vec<&str> = checks.iter().map(|c| c.abd.as_str()).collect();
    abds.dedup();
    for abd in abds {
        println!("\nABD {abd}");
        let rows = checks
            .iter()
            .filter(|c| c.abd == abd)
            .map(|c| {
                vec![
                    c.source.clone(),
                    c.check.clone(),
                    c.status.to_uppercase(),
                    c.detail.clone(),
                    c.remedy.clone(),
                ]
            })
            .collect();
        print_table(&["BY", "CHECK", "STATUS", "DETAIL", "REMEDY"], rows);
    }
}
