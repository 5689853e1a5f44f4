//! Recovery at A3 start: runs still marked running were interrupted (the A3 crashed or was
//! killed). They are marked failed with the reason and their ABDs given back; then the
//! reconciler ([`super::reconcile`]) removes what they left in every reachable pool
//! (and, later, in the pools unreachable now), and ABDs a crash left half-provisioned
//! are destroyed. A VM of such a run whose commit finished before the stop keeps its
//! version; no other version of it exists, since a version row is only written at its
//! commit.

use super::Engine;
use super::error::JobResult;
use super::reconcile;
use crate::catalog::run_log::RunLog;

/// Runs marked failed by recovery.
pub async fn recover(e: &Engine) -> JobResult<usize> {
    let runs = e.catalog().runs_running()?;
    for run in &runs {
        let reason = "interrupted: the A3 stopped while this run was going (crash or kill); \
                      versions committed before that stand, the rest were not committed, \
                      and the reconciler removes the snapshots and attached disks the run \
                      left (a VM restored in place stays blocked, its safety snapshot kept: \
                      see this log); run the job again";
        RunLog::new(e.catalog().clone(), run.id).error(reason);
        e.catalog()
            .run_fail_interrupted(run.id, reason, crate::util::clock::unix_now())?;
        for abd in e.catalog().abd_vm_list(None)? {
            if abd.busy_run == Some(run.id) && abd.state == "busy" {
                e.fleet().release(&abd.id)?;
            }
        }
    }
    reconcile::reconcile_all(e).await?;
    for row in e.catalog().abd_vm_list(None)? {
        if row.state != "provisioning" {
            continue;
        }
        let destroyed = async {
            let (s, _) = e.inventory().connect(&row.pool_uuid).await?;
            let r = e.fleet().destroy_row(&s, &row).await;
            s.logout().await;
            Ok::<_, super::JobError>(r?)
        };
        if let Err(err) = destroyed.await {
            tracing::warn!(abd = %row.id, "destroying the half-provisioned ABD: {err:#}");
        }
    }
    if !runs.is_empty() {
        tracing::info!(runs = runs.len(), "recovery after an interrupted start");
    }
    Ok(runs.len())
}
