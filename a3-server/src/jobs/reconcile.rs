//! The reconciler: what this A3's runs left in a pool, removed once no live run owns it.
//!
//! A run removes what it made when it ends; a crash, a kill, or a clean-up call the pool
//! refused can leave some of it. The reconciler finds those objects by their owner tag
//! ([`RunTag`], or a snapshot's name for a crash between `VM.snapshot` and the tag) and
//! acts only on objects that carry this A3's instance, of a run that is not going, and of
//! a kind a run creates:
//! - a VBD into an ABD: unplugged and destroyed;
//! - a snapshot: destroyed; a disk that is the CBT base of the VM's latest version keeps
//!   its CBT metadata (`VDI.data_destroy`), any other disk of it goes;
//! - a VM of a restore that never finished (a restore takes its tag off the VM and disks
//!   once they are written): destroyed, with the disks the restore made;
//! - a disk a run made that nothing uses (a restore's disk before its VBD, the diag test
//!   disk, a snapshot's disk, an ABD's disk whose VM is gone): destroyed, except that the CBT base of a VM's latest
//!   version keeps its CBT metadata; the metadata of an older version's snapshot disk is
//!   superseded and goes (a backup removes its previous version's itself, after the
//!   commit; this catches a failure there);
//! - an in-place restore's block and safety snapshot ([`super::inplace::reconcile`]):
//!   removed when the run succeeded; otherwise the snapshot is kept, as it may be the only
//!   copy of the disks from before the restore, and the VM stays blocked, its block naming
//!   the snapshot to revert to. A safety snapshot is never taken for a backup's.
//!
//! It runs at start, once recovery has marked the interrupted runs failed, for a pool as
//! soon as its connection is back, and every `reconcile_interval_secs` for every pool.
//! Each removal is a line in the log of the run that left the object.

use std::collections::{HashMap, HashSet};

use super::Engine;
use super::error::{Context, JobResult};
use crate::catalog::run_log::RunLog;
use crate::jobs::metadata::VmMetadata;
use crate::xapi::Session;
use crate::xapi::ops::{self, ABD_KEY, NULL_REF, Record};
use crate::xapi::owner::{RunTag, SAFETY_KEY};

/// What one pass removed in one pool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// VBDs unplugged from ABDs and destroyed.
    pub vbds: usize,
    /// Snapshots removed.
    pub snapshots: usize,
    /// Half-restored VMs removed.
    pub vms: usize,
    /// Unused disks removed.
    pub vdis: usize,
    /// In-place restores' blocks and safety snapshots dealt with.
    pub in_place: usize,
}

impl Reconciled {
    /// Whether the pass removed anything.
    pub fn is_empty(&self) -> bool {
        *self == Reconciled::default()
    }
}

/// Reconciles every pool the A3 manages; an unreachable pool is skipped until next time.
pub async fn reconcile_all(e: &Engine) -> JobResult<()> {
    for pool in e.catalog().pool_uuids()? {
        reconcile_one(e, &pool).await;
    }
    Ok(())
}

/// Reconciles the pool `pool` (a uuid), logging the outcome; an unreachable pool is left
/// for the next pass.
pub async fn reconcile_one(e: &Engine, pool: &str) {
    let (s, _) = match e.inventory().connect(pool).await {
        Ok(c) => c,
        Err(err) => {
            tracing::info!(%pool, "reconciler: pool unreachable ({err}); next pass");
            return;
        }
    };
    let done = reconcile_pool(e, &s).await;
    s.logout().await;
    match done {
        Ok(d) if !d.is_empty() => tracing::info!(%pool, ?d, "reconciler: leftovers removed"),
        Ok(_) => {}
        Err(err) => tracing::warn!(%pool, "reconciler: {err:#}"),
    }
}

/// Removes, in the pool `s` is logged in to, what this A3's ended runs left there.
pub async fn reconcile_pool(e: &Engine, s: &Session) -> JobResult<Reconciled> {
    // The records first, then the live runs: a run is in the catalog before it makes
    // anything, so an object listed here whose run is not live now was left behind.
    let vms: HashMap<String, Record> = ops::all_records(s, "VM").await?.into_iter().collect();
    let vbds = ops::all_records(s, "VBD").await?;
    let live: HashSet<i64> = e.catalog().runs_running()?.iter().map(|r| r.id).collect();
    let left = |tag: &Option<RunTag>| -> Option<RunTag> {
        tag.clone().filter(|t| e.owns(t) && !live.contains(&t.run))
    };
    let mut done = Reconciled::default();

    for (vbd, rec) in &vbds {
        let Some(tag) = left(&RunTag::of(rec)) else {
            continue;
        };
        let into_abd = vms
            .get(ops::text(rec, "VM"))
            .is_some_and(|vm| ops::map_key(vm, "other_config", ABD_KEY).is_some());
        if into_abd {
            let what = format!("the VBD {vbd} it plugged into an ABD");
            note(
                e,
                &tag,
                &what,
                ops::remove_vbd(s, vbd).await.map_err(Into::into),
            );
            done.vbds += 1;
        }
    }
    done.in_place = super::inplace::reconcile(e, s, &vms, &live).await?;
    for (vm, rec) in &vms {
        let snapshot = ops::flag(rec, "is_a_snapshot");
        // A safety snapshot copies its VM's other_config, which may hold a tag.
        let safety = ops::map_key(rec, "other_config", SAFETY_KEY).is_some();
        let Some(tag) = left(&RunTag::of_vm(rec)).filter(|_| !safety) else {
            continue;
        };
        let name = ops::text(rec, "name_label");
        if snapshot {
            let what = format!("its snapshot '{name}'");
            note(e, &tag, &what, drop_snapshot(e, s, vm, rec).await);
            done.snapshots += 1;
        } else if !ops::flag(rec, "is_a_template")
            && ops::map_key(rec, "other_config", ABD_KEY).is_none()
        {
            let what = format!("the half-restored VM '{name}'");
            note(
                e,
                &tag,
                &what,
                ops::destroy_vm(s, vm, true).await.map_err(Into::into),
            );
            done.vms += 1;
        }
    }
    // Disks last: a half-restored VM's disks, and a snapshot's, are free once the VM is
    // gone. A snapshot disk that is the CBT base of its VM's latest version keeps its CBT
    // metadata; an older version's base is superseded and goes.
    let bases = latest_cbt_bases(e)?;
    for (vdi, rec) in ops::all_records(s, "VDI").await? {
        let Some(tag) = left(&RunTag::of(&rec)) else {
            continue;
        };
        if !ops::refs(&rec, "VBDs").is_empty() {
            continue;
        }
        let name = ops::text(&rec, "name_label");
        let metadata_only = ops::text(&rec, "type") == "cbt_metadata";
        if bases.contains(ops::text(&rec, "uuid")) {
            if !metadata_only {
                let what = format!("the data of snapshot disk '{name}' (its CBT metadata stays)");
                note(
                    e,
                    &tag,
                    &what,
                    ops::vdi_data_destroy(s, &vdi).await.map_err(Into::into),
                );
                done.vdis += 1;
            }
            continue;
        }
        let what = if metadata_only {
            format!("the CBT metadata of '{name}', superseded by a newer version")
        } else {
            format!("the disk '{name}'")
        };
        note(
            e,
            &tag,
            &what,
            ops::destroy_vdi(s, &vdi).await.map_err(Into::into),
        );
        done.vdis += 1;
    }
    Ok(done)
}

/// The uuids of the snapshot disks the latest version of each VM takes as CBT bases.
fn latest_cbt_bases(e: &Engine) -> JobResult<HashSet<String>> {
    Ok(e.catalog()
        .versions_latest()?
        .into_iter()
        .filter_map(|v| serde_json::from_str::<VmMetadata>(&v.metadata).ok())
        .flat_map(|m| m.disks.into_iter().filter_map(|d| d.cbt_base_uuid))
        .collect())
}

/// Removes the CBT metadata of the VM's disks that `current` (the version just
/// committed) no longer takes as bases: the next incremental starts from `current`'s.
/// Metadata counts as this A3's when it carries this A3's tag, or when `previous` (the
/// version before) named it, as versions from before the tag did. Failures are logged;
/// the reconciler removes a tagged one later.
pub async fn drop_superseded_bases(
    e: &Engine,
    s: &Session,
    previous: Option<&VmMetadata>,
    current: &VmMetadata,
    log: &RunLog,
) {
    let keep: HashSet<&str> = current
        .disks
        .iter()
        .filter_map(|d| d.cbt_base_uuid.as_deref())
        .collect();
    let named: HashSet<&str> = previous
        .iter()
        .flat_map(|p| p.disks.iter().filter_map(|d| d.cbt_base_uuid.as_deref()))
        .collect();
    for d in &current.disks {
        let removed = async {
            let vdi = ops::by_uuid(s, "VDI", &d.vdi_uuid).await?;
            let mut removed = Vec::new();
            for snap in ops::refs(&ops::record(s, "VDI", &vdi).await?, "snapshots") {
                let rec = ops::record(s, "VDI", &snap).await?;
                let uuid = ops::text(&rec, "uuid");
                let ours = named.contains(uuid) || RunTag::of(&rec).is_some_and(|t| e.owns(&t));
                if ours
                    && !keep.contains(uuid)
                    && ops::text(&rec, "type") == "cbt_metadata"
                    && ops::refs(&rec, "VBDs").is_empty()
                {
                    ops::destroy_vdi(s, &snap).await?;
                    removed.push(uuid.to_owned());
                }
            }
            Ok::<_, crate::xapi::XapiError>(removed)
        };
        match removed.await {
            Ok(uuids) => {
                for uuid in uuids {
                    log.info(&format!(
                        "disk {}: removed the CBT metadata {uuid} of an older version",
                        d.name
                    ));
                }
            }
            Err(err) => log.warn(&format!(
                "disk {}: removing the CBT metadata of older versions: {err}; the reconciler \
                 tries again",
                d.name
            )),
        }
    }
}

/// Logs a removal (or its failure) in the log of the run that left the object.
pub(super) fn note(e: &Engine, tag: &RunTag, what: &str, outcome: JobResult<()>) {
    let log = RunLog::new(e.catalog().clone(), tag.run);
    match outcome {
        Ok(()) => log.info(&format!("reconciler: removed {what}, left by this run")),
        Err(err) => log.warn(&format!(
            "reconciler: removing {what}, left by this run: {err:#}; it tries again later"
        )),
    }
}

/// Removes a snapshot once its version is committed, or when a run left it: the snapshot
/// VM (keeping its disks), then each disk, except the CBT metadata of a disk the VM's
/// latest version names as its next incremental's base. In this order because xapi's
/// `VDI.data_destroy` waits for every VBD of the VDI to go and fails with `VDI_IN_USE`
/// while the snapshot VM still has them (xen-api `ocaml/xapi/xapi_vdi.ml`);
/// xs-cbt-backup does the same.
pub async fn drop_snapshot(e: &Engine, s: &Session, snap: &str, rec: &Record) -> JobResult<()> {
    let bases = cbt_bases(e, s, rec).await?;
    let vdis = super::backup::snapshot_vdis(s, rec).await?;
    ops::destroy_vm(s, snap, true).await?;
    for vdi in vdis.into_values() {
        let r = ops::record(s, "VDI", &vdi).await?;
        if !bases.contains(ops::text(&r, "uuid")) {
            ops::destroy_vdi(s, &vdi).await?;
        } else if ops::text(&r, "type") != "cbt_metadata" {
            ops::vdi_data_destroy(s, &vdi)
                .await
                .with_context(|| format!("data_destroy of snapshot disk {vdi}"))?;
        }
    }
    Ok(())
}

/// The uuids of the snapshot disks the latest version of the snapshot's VM takes as CBT
/// bases.
async fn cbt_bases(e: &Engine, s: &Session, snap: &Record) -> JobResult<HashSet<String>> {
    let of = ops::text(snap, "snapshot_of");
    if of == NULL_REF || of.is_empty() {
        return Ok(HashSet::new());
    }
    let vm_uuid = match ops::record(s, "VM", of).await {
        Ok(vm) => ops::text(&vm, "uuid").to_owned(),
        Err(crate::xapi::XapiError::HandleInvalid { .. }) => return Ok(HashSet::new()),
        Err(err) => return Err(err.into()),
    };
    let latest = e.catalog().version_latest(&vm_uuid)?;
    let meta = latest.and_then(|v| serde_json::from_str::<VmMetadata>(&v.metadata).ok());
    Ok(meta
        .map(|m| {
            m.disks
                .into_iter()
                .filter_map(|d| d.cbt_base_uuid)
                .collect()
        })
        .unwrap_or_default())
}
