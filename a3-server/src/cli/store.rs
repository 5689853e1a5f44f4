//! `a3-server store verify|gc|stats|rebuild-catalog`.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use super::client::ApiClient;
use super::host::print_json;
use crate::api::dto::{
    GcReport, StoreStats, VerifyBody, VerifyReport, VerifyState, VerifyStatus, VersionId,
};
use crate::config::Config;
use crate::server::RebuildReport;

/// Store commands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Re-read and re-hash every chunk of a version, or of the whole store. Names each bad
    /// block by version, disk and offset, and quarantines bad chunks so that the next
    /// backup stores them again. Exits non-zero when anything is bad.
    Verify {
        /// Only this version (as `a3-server disk versions` lists it).
        #[arg(long)]
        version: Option<VersionId>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove chunks no version uses. Chunks a running backup may still use are kept.
    Gc {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Logical bytes, stored bytes and the dedup ratio.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recreate the catalog's versions (ids kept) from the version records in the store,
    /// and its job history from the store's catalog snapshot, after the catalog was lost
    /// or replaced. Works on the state dir directly, with the A3 stopped; running it again
    /// changes nothing. Exits non-zero when a committed version could not be put back.
    RebuildCatalog {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `store rebuild-catalog`, on the state dir of `config` (not through the API: the A3
/// must be stopped).
fn rebuild_catalog(config: &Config, json: bool) -> anyhow::Result<()> {
    let report = crate::server::rebuild_catalog(config)?;
    if json {
        print_json(&report)?;
    } else {
        print_rebuild(&report);
    }
    let lost: Vec<String> = report
        .skipped
        .iter()
        .filter(|s| !s.pending)
        .map(|s| s.version.to_string())
        .collect();
    if !lost.is_empty() {
        bail!(
            "{} committed version(s) could not be put back ({}); their records or manifests \
             are damaged or missing, see above; GC refuses to run while they stay in {}",
            lost.len(),
            lost.join(", "),
            config.store_dir().join("versions").display()
        );
    }
    Ok(())
}

fn print_rebuild(r: &RebuildReport) {
    for v in &r.added {
        println!(
            "rebuilt version {} of '{}', committed {} (disks {}){}",
            v.id,
            v.subject,
            crate::util::clock::utc_minute(v.created_at),
            v.disks.join(", "),
            if v.from_pending {
                "; from a pending record: its commit crashed, its data is complete"
            } else {
                ""
            }
        );
    }
    for s in &r.skipped {
        let kind = if s.pending {
            "pending record of an uncommitted backup"
        } else {
            "NOT REBUILT"
        };
        println!("{kind}: version {}: {}", s.version, s.reason);
    }
    println!(
        "{} version(s) rebuilt, {} already in the catalog, {} record(s) skipped",
        r.added.len(),
        r.present,
        r.skipped.len()
    );
    match (&r.snapshot, &r.job_history) {
        (None, _) => println!("job history: no catalog snapshot in the store"),
        (Some(path), None) => {
            println!("job history: the catalog already has jobs; {path} was not read")
        }
        (Some(path), Some(h)) => println!(
            "job history from {path}: {} job(s), {} run(s), {} log line(s); {} run(s) whose \
             end was never recorded marked failed",
            h.jobs, h.runs, h.log_lines, h.runs_unfinished
        ),
    }
}

/// Runs a store command: against the server's API (at `api`, else the state dir's
/// `api.url`), or on the state dir for `rebuild-catalog`.
pub async fn run(cmd: StoreCommand, config: &Config, api: Option<&str>) -> anyhow::Result<()> {
    let connect = || ApiClient::connect(config, api);
    match cmd {
        StoreCommand::RebuildCatalog { json } => rebuild_catalog(config, json),
        StoreCommand::Verify { version, json } => {
            let api = &connect()?;
            let started: VerifyStatus = api
                .post("/api/store/verify", &VerifyBody { version })
                .await?;
            let report = follow(api, started, json).await?;
            if json {
                print_json(&report)?;
            } else {
                print_verify(&report);
            }
            if !report.is_ok() {
                bail!(
                    "verify found {} bad block(s), {} unreadable manifest(s), {} bad \
                     version record(s) and {} bad unused chunk(s); bad chunks were \
                     quarantined: the next backup of each disk named above stores them \
                     again, and until then those blocks cannot be restored",
                    report.bad_blocks.len(),
                    report.bad_manifests.len(),
                    report.bad_records.len(),
                    report.bad_unreferenced.len()
                );
            }
            Ok(())
        }
        StoreCommand::Gc { json } => {
            let api = connect()?;
            let r: GcReport = api.post("/api/store/gc", &()).await?;
            if json {
                return print_json(&r);
            }
            println!(
                "GC: {} version(s) use {} chunks; removed {} unused chunk(s) ({}), {} \
                 unused manifest(s) and {} record(s) of backups that never committed; kept \
                 {} recent unused chunk(s) a running backup may use",
                r.versions,
                r.chunks_in_use,
                r.chunks_removed,
                HumanBytes(r.bytes_removed),
                r.manifests_removed,
                r.records_removed,
                r.chunks_kept_recent
            );
            for subject in &r.leases_revoked {
                println!(
                    "revoked the lease of an idle backup of '{subject}': it will fail; run it again"
                );
            }
            Ok(())
        }
        StoreCommand::Stats { json } => {
            let api = connect()?;
            let s: StoreStats = api.get("/api/store/stats").await?;
            if json {
                return print_json(&s);
            }
            println!("versions      {} ({} disk versions)", s.versions, s.disks);
            println!("logical       {}", HumanBytes(s.logical_bytes));
            println!(
                "stored        {} in {} chunks (+ {} of manifests)",
                HumanBytes(s.stored_bytes),
                s.chunks,
                HumanBytes(s.manifest_bytes)
            );
            match s.dedup_ratio {
                Some(r) => println!("dedup ratio   {r:.2}x"),
                None => println!("dedup ratio   - (nothing stored yet)"),
            }
            println!("quarantined   {} chunk(s)", s.quarantined_chunks);
            Ok(())
        }
    }
}

/// Polls a verify run to its end, with a progress bar on stderr unless `quiet`.
async fn follow(
    api: &ApiClient,
    mut status: VerifyStatus,
    quiet: bool,
) -> anyhow::Result<VerifyReport> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} chunks {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(format!("verify {}", status.scope));
    let path = format!("/api/store/verify/{}", status.id);
    loop {
        bar.set_length(status.progress.total);
        bar.set_position(status.progress.done);
        bar.set_message(format!("{} read", HumanBytes(status.progress.bytes)));
        match status.state {
            VerifyState::Done { report } => {
                bar.finish_and_clear();
                return Ok(report);
            }
            VerifyState::Failed { reason } => {
                bar.abandon();
                bail!("verify {} failed: {reason}", status.scope);
            }
            VerifyState::Running => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = match api.get(&path).await {
            Ok(s) => s,
            Err(e) => {
                bar.abandon();
                bail!(
                    "verify {}: lost track of it ({e:#}); if the A3 restarted, run it again",
                    status.scope
                );
            }
        };
    }
}

fn print_verify(r: &VerifyReport) {
    println!(
        "verified {} version(s), {} disk version(s): {} chunks, {} read ({} not used by any version)",
        r.versions,
        r.disks,
        r.chunks,
        HumanBytes(r.bytes),
        r.unreferenced
    );
    for m in &r.bad_manifests {
        println!(
            "BAD  version {} disk '{}': manifest unreadable: {}",
            m.version, m.disk, m.problem
        );
    }
    for b in &r.bad_records {
        println!("BAD  version {}: {}", b.version, b.problem);
    }
    for b in &r.bad_blocks {
        println!(
            "BAD  version {} ({}) disk '{}' block at offset {} ({}): {}",
            b.version,
            b.subject,
            b.disk,
            b.offset,
            HumanBytes(b.offset),
            b.problem
        );
    }
    for o in &r.bad_unreferenced {
        println!("BAD  unused chunk {}: {}", o.chunk, o.problem);
    }
    for q in &r.quarantined {
        println!("quarantined {q}");
    }
    if r.is_ok() {
        println!("all good");
    }
}
