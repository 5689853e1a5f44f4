//! Recovery at A3 start: runs still marked running were interrupted (the A3 crashed or was
//! killed). In every pool, what they created is found by its `other_config:a3_run` tag (or
//! a snapshot's name, for a crash between `VM.snapshot` and the tag) and removed: VBDs
//! plugged into ABDs, snapshots with their disks, half-restored VMs. The runs are then
//! marked failed with the reason, their ABDs given back, and ABDs a crash left
//! half-provisioned destroyed. No version of such a run exists: a version row is only
//! written at its commit.

use std::collections::HashSet;

use super::Engine;
use super::error::JobResult;
use crate::catalog::run_log::RunLog;
use crate::xapi::ops::{self, RUN_KEY};

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Runs marked failed.
    pub runs: usize,
    /// VBDs removed.
    pub vbds: usize,
    /// VMs removed (snapshots, half-restored VMs, half-provisioned ABDs).
    pub vms: usize,
}

/// Recovers every interrupted run.
pub async fn recover(e: &Engine) -> JobResult<Recovered> {
    let runs = e.catalog().runs_running()?;
    let mut done = Recovered::default();
    let broken_abds: Vec<_> = e
        .catalog()
        .abd_vm_list(None)?
        .into_iter()
        .filter(|a| a.state == "provisioning")
        .collect();
    if runs.is_empty() && broken_abds.is_empty() {
        return Ok(done);
    }
    let ids: HashSet<String> = runs.iter().map(|r| r.id.to_string()).collect();
    let mut problems = Vec::new();
    for pool in e.catalog().pool_uuids()? {
        let (s, _) = match e.inventory().connect(&pool).await {
            Ok(c) => c,
            Err(err) => {
                problems.push(format!(
                    "pool {pool} unreachable ({err}): its leftovers stay"
                ));
                continue;
            }
        };
        let clean = async {
            for (vbd, rec) in ops::all_records(&s, "VBD").await? {
                if ops::map_key(&rec, "other_config", RUN_KEY).is_some_and(|r| ids.contains(r)) {
                    ops::remove_vbd(&s, &vbd).await?;
                    done.vbds += 1;
                }
            }
            for (vm, rec) in ops::all_records(&s, "VM").await? {
                let tagged =
                    ops::map_key(&rec, "other_config", RUN_KEY).is_some_and(|r| ids.contains(r));
                let name = ops::text(&rec, "name_label");
                let named = ops::flag(&rec, "is_a_snapshot")
                    && ids
                        .iter()
                        .any(|id| name.ends_with(&format!(" a3-run-{id}")));
                if tagged || named {
                    ops::destroy_vm(&s, &vm, false).await?;
                    done.vms += 1;
                }
            }
            // Disks of a half-restored VM created before it had a VBD.
            for (vdi, rec) in ops::all_records(&s, "VDI").await? {
                if ops::map_key(&rec, "other_config", RUN_KEY).is_some_and(|r| ids.contains(r))
                    && ops::refs(&rec, "VBDs").is_empty()
                {
                    ops::destroy_vdi(&s, &vdi).await?;
                }
            }
            for row in broken_abds.iter().filter(|a| a.pool_uuid == pool) {
                e.fleet().destroy_row(&s, row).await?;
                done.vms += 1;
            }
            Ok::<_, super::error::JobError>(())
        };
        if let Err(err) = clean.await {
            problems.push(format!("pool {pool}: clean-up failed: {err:#}"));
        }
        s.logout().await;
    }
    for run in &runs {
        let log = RunLog::new(e.catalog().clone(), run.id);
        let mut reason = "interrupted: the A3 stopped while this run was going (crash or kill); \
                          its snapshots and attached disks were removed, no version was \
                          committed by the interrupted VMs; run the job again"
            .to_owned();
        if !problems.is_empty() {
            reason.push_str(&format!(" (clean-up incomplete: {})", problems.join("; ")));
        }
        log.error(&reason);
        e.catalog()
            .run_fail_interrupted(run.id, &reason, crate::util::clock::unix_now())?;
        for abd in e.catalog().abd_vm_list(None)? {
            if abd.busy_run == Some(run.id) && abd.state == "busy" {
                e.fleet().release(&abd.id)?;
            }
        }
        done.runs += 1;
    }
    tracing::info!(?done, "recovery after an interrupted start");
    Ok(done)
}
