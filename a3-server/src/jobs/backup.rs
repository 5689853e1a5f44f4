//! The backup of one VM through one ABD (DESIGN.md §1.7):
//! 1. CBT on for each disk;
//! 2. a snapshot, tagged with the run;
//! 3. each snapshot disk plugged into the ABD ([`attach`]) and streamed: only CBT-changed
//!    blocks when the last *committed* version left CBT metadata, else the whole disk, the
//!    log saying why;
//! 4. the version committed with the VM's metadata;
//! 5. the snapshot VM destroyed, then each snapshot disk's data (its CBT metadata is kept:
//!    the next incremental's base). A failure there is logged, and the next backup of the
//!    VM finishes the job: the committed version stands.
//!
//! On failure everything the run created is removed (VBDs, the snapshot VM and its disks)
//! and nothing is committed; the last committed version's CBT base stays as it was.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::error::{Context, JobResult, bail};
use a3_shared::proto::CbtBitmap;

use super::metadata::{self, VmMetadata};
use super::{Engine, attach};
use crate::catalog::run_log::RunLog;
use crate::dataport::backup::DiskList;
use crate::dataport::{BaseRef, DiskBackupRequest, DiskJob};
use crate::fleet::Held;
use crate::store::{DiskBlocks, VersionId};
use crate::xapi::ops::{self, NULL_REF};
use crate::xapi::owner::{RUN_KEY, RunTag};
use crate::xapi::{Session, XapiError};

/// How often a disk's progress is published while it streams.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// A VM to back up.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its uuid.
    pub uuid: String,
    /// Its name.
    pub name: String,
    /// Its pool.
    pub pool_uuid: String,
}

/// What the run created in the pool, for the clean-up.
#[derive(Default)]
struct Created {
    snapshot: Option<String>,
    vbds: Vec<String>,
    /// Once committed: the previous version's metadata, if any, and the new one's, whose
    /// CBT bases tell which metadata disks are superseded.
    committed: Option<(Option<VmMetadata>, VmMetadata)>,
}

/// Backs up `t` through `held`; returns the committed version.
pub async fn backup_vm(
    e: &Engine,
    s: &Session,
    run: i64,
    t: &Target,
    held: &Held,
    log: &RunLog,
) -> JobResult<i64> {
    let mut created = Created::default();
    let result = snapshot_and_stream(e, s, run, t, held, log, &mut created).await;
    for vbd in created.vbds.drain(..) {
        if let Err(err) = ops::remove_vbd(s, &vbd).await {
            log.warn(&format!(
                "{}: removing VBD {vbd} from the ABD: {err}",
                t.name
            ));
        }
    }
    let Some(snap) = created.snapshot else {
        return result;
    };
    match &result {
        Ok(_) => {
            // The version is committed: a clean-up failure is logged, never the run's.
            let dropped = async {
                let rec = ops::record(s, "VM", &snap).await?;
                super::reconcile::drop_snapshot(e, s, &snap, &rec).await
            };
            if let Err(err) = dropped.await {
                log.warn(&format!(
                    "{}: removing the snapshot after the commit: {err:#}; the next backup of \
                     the VM tries again",
                    t.name
                ));
            } else {
                log.info(&format!(
                    "{}: snapshot removed, CBT metadata kept for the next incremental",
                    t.name
                ));
            }
            if let Some((previous, current)) = &created.committed {
                super::reconcile::drop_superseded_bases(e, s, previous.as_ref(), current, log)
                    .await;
            }
        }
        Err(_) => {
            if let Err(err) = ops::destroy_vm(s, &snap, false).await {
                log.warn(&format!("{}: removing the snapshot: {err}", t.name));
            } else {
                log.info(&format!("{}: snapshot and its disks removed", t.name));
            }
        }
    }
    result
}

/// Removes the snapshots of the VM that an earlier, ended run of this A3 left, as the
/// reconciler would ([`super::reconcile`]), so that this backup starts clean. A failure is
/// logged and the backup goes on.
async fn sweep_leftover_snapshots(
    e: &Engine,
    s: &Session,
    t: &Target,
    vm: &ops::Record,
    log: &RunLog,
) {
    for snap in ops::refs(vm, "snapshots") {
        let Ok(rec) = ops::record(s, "VM", &snap).await else {
            continue;
        };
        let Some(run) = RunTag::of_vm(&rec).filter(|t| e.owns(t)).map(|t| t.run) else {
            continue;
        };
        let ended = matches!(e.catalog().run_get(run), Ok(Some(r)) if r.state != "running");
        if !ended {
            continue;
        }
        match super::reconcile::drop_snapshot(e, s, &snap, &rec).await {
            Ok(()) => log.info(&format!(
                "{}: removed the snapshot run {run} left behind",
                t.name
            )),
            Err(err) => log.warn(&format!(
                "{}: removing the snapshot run {run} left behind: {err:#}",
                t.name
            )),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn snapshot_and_stream(
    e: &Engine,
    s: &Session,
    run: i64,
    t: &Target,
    held: &Held,
    log: &RunLog,
    created: &mut Created,
) -> JobResult<i64> {
    let vm = ops::by_uuid(s, "VM", &t.uuid).await?;
    let rec = ops::record(s, "VM", &vm).await?;
    sweep_leftover_snapshots(e, s, t, &rec, log).await;
    let mut meta = metadata::capture(s, &t.pool_uuid, &rec).await?;
    // A disk reset at every boot holds nothing that outlives a reboot, and xapi refuses
    // to snapshot it (VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION): leave it out. CBT
    // goes on every other disk; a disk where it was off has no chain to an earlier
    // version. Where xapi refuses it (an SR without CBT), the disk is read whole.
    let mut scratch = Vec::new();
    let mut kept = Vec::new();
    let mut fresh_cbt = Vec::new();
    let mut no_cbt = HashMap::new();
    for d in std::mem::take(&mut meta.disks) {
        let vdi = ops::by_uuid(s, "VDI", &d.vdi_uuid).await?;
        let r = ops::record(s, "VDI", &vdi).await?;
        if ops::text(&r, "on_boot") == "reset" {
            log.warn(&format!(
                "{}: disk {} is reset at every boot (on_boot=reset): not backed up",
                t.name, d.name
            ));
            scratch.push(vdi);
            continue;
        }
        if !ops::flag(&r, "cbt_enabled") {
            match ops::vdi_enable_cbt(s, &vdi).await {
                Ok(()) => {
                    log.info(&format!("{}: CBT enabled on disk {}", t.name, d.name));
                    fresh_cbt.push(d.name.clone());
                }
                Err(XapiError::Api { code, params, .. }) => {
                    let why = format!("the pool refuses CBT on it ({code} {params:?})");
                    log.warn(&format!("{}: disk {}: {why}: full reads", t.name, d.name));
                    no_cbt.insert(d.name.clone(), why);
                }
                Err(e) => return Err(e.into()),
            }
        }
        kept.push(d);
    }
    meta.disks = kept;
    if meta.disks.is_empty() {
        bail!("VM '{}' has no disk to back up", t.name);
    }
    log.info(&format!("{}: taking a snapshot", t.name));
    let tag = e.tag(run);
    let snap = ops::vm_snapshot(s, &vm, &tag.snapshot_name(&t.name), &scratch).await?;
    created.snapshot = Some(snap.clone());
    ops::tag(s, "VM", &snap, RUN_KEY, &tag.value()).await?;
    let snap_rec = ops::record(s, "VM", &snap).await?;
    let snap_vdis = snapshot_vdis(s, &snap_rec).await?;
    // Its disks too: once the snapshot VM is gone, a disk left (or the CBT metadata kept
    // of it) is found by this tag alone.
    for vdi in snap_vdis.values() {
        ops::tag(s, "VDI", vdi, RUN_KEY, &tag.value()).await?;
    }

    let subject = t.uuid.clone();
    let last = e.catalog().version_latest(&subject)?;
    let last_meta: Option<(i64, VmMetadata)> = last.and_then(|v| {
        serde_json::from_str::<VmMetadata>(&v.metadata)
            .ok()
            .map(|m| (v.id, m))
    });
    // One store session, and so one GC lease, for every disk of the VM.
    let session = {
        let store = e.store().clone();
        let subject = subject.clone();
        Arc::new(tokio::task::spawn_blocking(move || store.begin_backup(&subject)).await??)
    };

    let mut manifests = Vec::new();
    for d in meta.disks.iter_mut() {
        let snap_vdi = snap_vdis
            .get(&d.userdevice)
            .with_context(|| format!("the snapshot has no disk at device {}", d.name))?
            .clone();
        let (base, cbt) = match no_cbt.get(&d.name) {
            Some(why) => {
                log.info(&format!("{}: disk {}: full read: {why}", t.name, d.name));
                (None, None)
            }
            None => {
                incremental_base(
                    e,
                    s,
                    t,
                    d,
                    &snap_vdi,
                    last_meta.as_ref(),
                    fresh_cbt.contains(&d.name),
                    log,
                )
                .await?
            }
        };
        let (vbd, device) =
            attach::for_reading(s, &held.vm_ref, &held.row.id, &snap_vdi, &tag).await?;
        created.vbds.push(vbd.clone());
        log.info(&format!(
            "{}: disk {} ({} bytes) attached to ABD '{}' as {device} (the agent reads it \
             read-only); streaming{}",
            t.name,
            d.name,
            d.virtual_size,
            held.row.id,
            if cbt.is_some() {
                " the CBT-changed blocks"
            } else {
                " the whole disk"
            }
        ));
        // The job moved on to another disk: keep the lease through the steps above, which
        // make no store call (or stop here if GC revoked it meanwhile).
        session.renew()?;
        let job = e
            .dataport()
            .start_disk_backup(DiskBackupRequest {
                abd: held.row.id.clone(),
                device: device.clone(),
                label: format!("{} {}", t.name, d.name),
                size: d.virtual_size,
                base,
                cbt,
                session: session.clone(),
            })
            .await?;
        let manifest = wait_disk(e, run, &t.uuid, job).await?;
        ops::remove_vbd(s, &vbd).await?;
        created.vbds.retain(|v| v != &vbd);
        let snap_rec = ops::record(s, "VDI", &snap_vdi).await?;
        d.cbt_base_uuid =
            ops::flag(&snap_rec, "cbt_enabled").then(|| ops::text(&snap_rec, "uuid").to_owned());
        manifests.push((d.name.clone(), manifest));
    }

    let json = serde_json::to_value(&meta)?;
    let previous = last_meta.map(|(_, m)| m);
    let session = Arc::into_inner(session).context("a disk job still holds the store session")?;
    let id = tokio::task::spawn_blocking(move || {
        for (name, (geometry, spool)) in manifests {
            session.add_disk(&name, DiskBlocks::Spooled(geometry, spool))?;
        }
        session.commit(json)
    })
    .await??;
    log.info(&format!("{}: version {id} committed", t.name));
    fail::fail_point!("backup-committed");
    created.committed = Some((previous, meta));
    Ok(id.0)
}

/// The base of a disk's incremental: the last committed version's disk and the CBT
/// bitmap from its kept CBT metadata to this snapshot. `(None, None)` means a full read;
/// the log says why.
#[allow(clippy::too_many_arguments)]
async fn incremental_base(
    e: &Engine,
    s: &Session,
    t: &Target,
    d: &metadata::DiskMeta,
    snap_vdi: &str,
    last: Option<&(i64, VmMetadata)>,
    cbt_just_enabled: bool,
    log: &RunLog,
) -> JobResult<(Option<BaseRef>, Option<CbtBitmap>)> {
    let full = |why: String| {
        log.info(&format!("{}: disk {}: full read: {why}", t.name, d.name));
        Ok((None, None))
    };
    let Some((version, meta)) = last else {
        return full("no earlier version".into());
    };
    let Some(prev) = meta
        .disks
        .iter()
        .find(|p| p.name == d.name && p.vdi_uuid == d.vdi_uuid)
    else {
        return full(format!("version {version} has no backup of this VDI"));
    };
    if cbt_just_enabled {
        log.warn(&format!(
            "{}: disk {}: CBT chain broken (CBT was off on the disk; it is on again): full read",
            t.name, d.name
        ));
        return Ok((None, None));
    }
    let Some(base_uuid) = &prev.cbt_base_uuid else {
        return full(format!("version {version} kept no CBT metadata"));
    };
    let base_ref = match ops::by_uuid(s, "VDI", base_uuid).await {
        Ok(r) if !r.is_empty() && r != NULL_REF => r,
        _ => {
            log.warn(&format!(
                "{}: disk {}: CBT chain broken (the CBT metadata VDI {base_uuid} of version \
                 {version} is gone): full read",
                t.name, d.name
            ));
            return Ok((None, None));
        }
    };
    // The clean-up after that version's commit may have failed: keep only its CBT
    // metadata now (xapi allows list_changed_blocks either way).
    if ops::text(&ops::record(s, "VDI", &base_ref).await?, "type") != "cbt_metadata" {
        match ops::vdi_data_destroy(s, &base_ref).await {
            Ok(()) => log.info(&format!(
                "{}: disk {}: the snapshot data version {version} left behind is now removed",
                t.name, d.name
            )),
            Err(err) => log.warn(&format!(
                "{}: disk {}: removing the snapshot data version {version} left behind: {err}",
                t.name, d.name
            )),
        }
    }
    let bitmap = match ops::vdi_list_changed_blocks(s, &base_ref, snap_vdi).await {
        Ok(v) => v,
        Err(err) => {
            log.warn(&format!(
                "{}: disk {}: CBT chain broken (VDI.list_changed_blocks from version {version}: \
                 {err}): full read",
                t.name, d.name
            ));
            return Ok((None, None));
        }
    };
    let cbt = match CbtBitmap::from_base64(&bitmap) {
        Ok(c) => c,
        Err(err) => {
            log.warn(&format!(
                "{}: disk {}: the CBT bitmap does not decode ({err}): full read",
                t.name, d.name
            ));
            return Ok((None, None));
        }
    };
    let store = e.store().clone();
    let version = VersionId(*version);
    let info = tokio::task::spawn_blocking(move || store.version(version)).await??;
    let Some(base) = info.disks.iter().find(|b| b.name == d.name) else {
        return full(format!("version {version} has no disk {}", d.name));
    };
    if base.size != d.virtual_size {
        return full(format!(
            "the disk's size changed since version {version} ({} → {} bytes)",
            base.size, d.virtual_size
        ));
    }
    log.info(&format!(
        "{}: disk {}: incremental against version {version}",
        t.name, d.name
    ));
    let base = BaseRef {
        version,
        disk: d.name.clone(),
    };
    Ok((Some(base), Some(cbt)))
}

/// The snapshot's disk VDIs by userdevice.
pub(super) async fn snapshot_vdis(
    s: &Session,
    snap: &ops::Record,
) -> JobResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    for vbd in ops::refs(snap, "VBDs") {
        let b = ops::record(s, "VBD", &vbd).await?;
        let vdi = ops::text(&b, "VDI");
        if ops::text(&b, "type") == "Disk" && vdi != NULL_REF && !vdi.is_empty() {
            out.insert(ops::text(&b, "userdevice").to_owned(), vdi.to_owned());
        }
    }
    Ok(out)
}

/// Waits for a disk job's manifest, publishing its progress meanwhile.
async fn wait_disk(e: &Engine, run: i64, subject: &str, job: DiskJob) -> JobResult<DiskList> {
    let DiskJob { id, mut done } = job;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    loop {
        tokio::select! {
            outcome = &mut done => {
                return match outcome {
                    Ok(Ok(list)) => Ok(list),
                    Ok(Err(failure)) => Err(failure.into()),
                    Err(_) => bail!("data-path job {id} ended without a result (the A3 is stopping)"),
                };
            }
            _ = tick.tick() => {
                if let Some(status) = e.dataport().jobs().get(id) {
                    e.set_progress(run, subject, status.done, status.total);
                }
            }
        }
    }
}
