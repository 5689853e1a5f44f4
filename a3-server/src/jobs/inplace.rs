//! A restore over the original VM's own disks, made safe:
//! 1. **Block.** The VM's `blocked_operations` get every operation that would boot it on
//!    half-written disks, or move, copy or remove them under the restore ([`BLOCKED`]),
//!    with a reason naming the A3 and the run ([`RunTag::block_writing`]); xapi refuses
//!    them with `OPERATION_BLOCKED [vm, reason]` (xen-api `ocaml/xapi/xapi_vm_lifecycle.ml`
//!    `check_operation_error`). The VM must still be Halted once blocked: it may have
//!    started in between.
//! 2. **Safety snapshot** (unless the restore opts out): `VM.snapshot`, marked with
//!    [`SAFETY_KEY`]; then `snapshot` is blocked too, so that nothing (a backup) snapshots
//!    half-written disks.
//! 3. **Before each disk**: its VDI must still be attached to this VM, have the version's
//!    size, and be in the safety snapshot.
//! 4. **The end.** On success the block goes, then the snapshot. On failure the disks
//!    written, even in part, are written back from the snapshot, then the block and the
//!    snapshot go: the VM is as it was. If that fails too (or there is no snapshot), the VM
//!    stays blocked, the reason and the error naming the snapshot to revert to.
//!
//! The disks are written back through the A3, `GET /export_raw_vdi` of each snapshot disk
//! into `PUT /import_raw_vdi` of the VM's, which writes every byte (xen-api
//! `ocaml/xapi/import_raw_vdi.ml`: raw into raw, zeros included) and keeps each VDI with
//! its uuid and CBT. xapi's own ways do not fit:
//! - `VM.revert` (`xapi_vm_snapshot.ml`) destroys the VM's disks and clones the snapshot's
//!   in their place, with new uuids and no CBT: the catalog's versions name the old ones,
//!   so the next in-place restore could not find them and the next backup would be full;
//! - `VDI.copy` into an existing VDI (`xapi_vdi.ml`, `sm_fs_ops.ml`) copies sparsely onto
//!   file-based SRs (`-prezeroed`): what is empty in the snapshot is not written, so the
//!   restore's bytes would stay there.
//!
//! A run that does not end (a crash) leaves the block and the snapshot; [`reconcile`] says
//! what becomes of them.

use std::collections::{HashMap, HashSet};

use super::error::{Context, JobError, JobResult, bail};
use super::metadata::DiskMeta;
use super::{Engine, attach, reconcile};
use crate::catalog::run_log::RunLog;
use crate::xapi::Session;
use crate::xapi::ops::{self, NULL_REF, Record};
use crate::xapi::owner::{RunTag, SAFETY_KEY};

/// Blocked while the disks are written: what would boot the VM on half-written disks, or
/// move, copy or remove them under the restore.
const BLOCKED: &[&str] = &[
    "start",
    "start_on",
    "resume",
    "resume_on",
    "destroy",
    "clone",
    "copy",
    "export",
    "pool_migrate",
    "migrate_send",
];
/// Blocked once the safety snapshot is taken: a snapshot of half-written disks (a
/// backup's) would hold nothing of worth.
const BLOCKED_AFTER_SNAPSHOT: &[&str] = &["snapshot"];

/// The command that clears a VM's blocks, for messages.
fn clear_command(vm_uuid: &str) -> String {
    format!("xe vm-param-clear uuid={vm_uuid} param-name=blocked-operations")
}

/// A VM being restored in place: blocked, with its safety snapshot.
pub struct Guard {
    vm: String,
    vm_uuid: String,
    name: String,
    version: i64,
    tag: RunTag,
    /// The operations this restore blocked (one blocked already by someone else stays
    /// theirs).
    blocked: Vec<&'static str>,
    snapshot: Option<Safety>,
    /// The disks written so far, even in part: (disk name, VDI ref).
    touched: Vec<(String, String)>,
}

/// The safety snapshot.
struct Safety {
    vm: String,
    name: String,
    uuid: String,
    /// Each disk it holds: the VM's VDI → the snapshot's.
    disks: HashMap<String, String>,
}

impl Guard {
    /// Blocks the halted VM `vm` (`uuid`, named `name`) for `version`, checks it is still
    /// Halted, and takes its safety snapshot when `safety`. Whatever this did is undone if
    /// it fails.
    #[allow(clippy::too_many_arguments)]
    pub async fn begin(
        e: &Engine,
        s: &Session,
        tag: RunTag,
        vm: &str,
        uuid: &str,
        name: &str,
        version: i64,
        safety: bool,
        log: &RunLog,
    ) -> JobResult<Guard> {
        let mut g = Guard {
            vm: vm.to_owned(),
            vm_uuid: uuid.to_owned(),
            name: name.to_owned(),
            version,
            tag,
            blocked: Vec::new(),
            snapshot: None,
            touched: Vec::new(),
        };
        let begun = async {
            g.take_over(e, s).await?;
            g.block(s, BLOCKED).await?;
            log.info(&format!(
                "VM '{name}' blocked from starting, moving and copying while its disks are \
                 written (blocked operations: {})",
                g.blocked.join(", ")
            ));
            let state = ops::text(&ops::record(s, "VM", vm).await?, "power_state").to_owned();
            if state != "Halted" {
                bail!(
                    "VM '{name}' is {state}: it started before it could be blocked; shut it \
                     down before restoring over its disks, or restore as a new VM"
                );
            }
            if safety {
                g.take_snapshot(s, log).await?;
                g.block(s, BLOCKED_AFTER_SNAPSHOT).await?;
            } else {
                log.warn(
                    "no safety snapshot (asked for): a failure part-way leaves the disks \
                     partly overwritten",
                );
            }
            Ok::<_, JobError>(())
        }
        .await;
        match begun {
            Ok(()) => Ok(g),
            Err(err) => {
                g.undo(s, log).await;
                Err(err)
            }
        }
    }

    /// Clears the blocks that in-place restores of this A3 that ended left on the VM: this
    /// restore writes the disks again, and blocks the VM itself. A block of a restore
    /// writing now (another run's, or another A3's) stops this one first.
    async fn take_over(&self, e: &Engine, s: &Session) -> JobResult<()> {
        let rec = ops::record(s, "VM", &self.vm).await?;
        let live: HashSet<i64> = e.catalog().runs_running()?.iter().map(|r| r.id).collect();
        let mut stale = Vec::new();
        for (op, reason) in ops::string_map(&rec, "blocked_operations") {
            let Some(t) = RunTag::from_block(&reason) else {
                continue;
            };
            if e.owns(&t) && !live.contains(&t.run) {
                stale.push(op);
            } else if reason == t.block_writing() {
                bail!(
                    "VM '{}' is being restored in place by another run (its blocked \
                     operations say: {reason}); wait for that restore to end. If the A3 that \
                     runs it is gone, clear the block: {}",
                    self.name,
                    clear_command(&self.vm_uuid)
                );
            }
        }
        for op in stale {
            ops::vm_unblock(s, &self.vm, &op).await?;
        }
        Ok(())
    }

    /// Blocks `ops` with this run's reason; an operation blocked already (by a person, or
    /// another tool) stays as it is, and theirs.
    async fn block(&mut self, s: &Session, ops_: &[&'static str]) -> JobResult<()> {
        let rec = ops::record(s, "VM", &self.vm).await?;
        let existing = ops::string_map(&rec, "blocked_operations");
        let reason = self.tag.block_writing();
        for &op in ops_ {
            if existing.iter().any(|(k, _)| k == op) {
                continue;
            }
            ops::vm_block(s, &self.vm, op, &reason)
                .await
                .with_context(|| format!("blocking {op} on VM '{}'", self.name))?;
            self.blocked.push(op);
        }
        Ok(())
    }

    /// Takes the safety snapshot and reads which of its disks is which of the VM's.
    async fn take_snapshot(&mut self, s: &Session, log: &RunLog) -> JobResult<()> {
        let name = self.tag.safety_snapshot_name(&self.name);
        let snap = ops::vm_snapshot(s, &self.vm, &name, &[])
            .await
            .with_context(|| {
                format!(
                    "taking the safety snapshot of VM '{}' (free space on its SR, or restore \
                     without one: --no-safety-snapshot)",
                    self.name
                )
            })?;
        self.snapshot = Some(Safety {
            vm: snap.clone(),
            name: name.clone(),
            uuid: String::new(),
            disks: HashMap::new(),
        });
        ops::tag(s, "VM", &snap, SAFETY_KEY, &self.tag.value()).await?;
        let rec = ops::record(s, "VM", &snap).await?;
        let mut disks = HashMap::new();
        for vbd in ops::refs(&rec, "VBDs") {
            let b = ops::record(s, "VBD", &vbd).await?;
            let vdi = ops::text(&b, "VDI");
            if ops::text(&b, "type") != "Disk" || vdi == NULL_REF || vdi.is_empty() {
                continue;
            }
            let of = ops::text(&ops::record(s, "VDI", vdi).await?, "snapshot_of").to_owned();
            disks.insert(of, vdi.to_owned());
        }
        if let Some(safety) = self.snapshot.as_mut() {
            safety.uuid = ops::text(&rec, "uuid").to_owned();
            safety.disks = disks;
        }
        log.info(&format!(
            "safety snapshot '{name}' taken: the disks as they were, to write back if the \
             restore fails"
        ));
        Ok(())
    }

    /// Checks, before disk `d` is written, that its VDI is still this VM's (attached to
    /// it), has the version's size, and is in the safety snapshot; its ref.
    pub async fn check_disk(&self, s: &Session, d: &DiskMeta) -> JobResult<String> {
        let vm = &self.name;
        let vdi = ops::by_uuid(s, "VDI", &d.vdi_uuid).await.with_context(|| {
            format!(
                "disk {} (VDI {}) of VM '{vm}' no longer exists; restore as a new VM",
                d.name, d.vdi_uuid
            )
        })?;
        let rec = ops::record(s, "VDI", &vdi).await?;
        let mut attached = false;
        for vbd in ops::refs(&rec, "VBDs") {
            attached |= ops::text(&ops::record(s, "VBD", &vbd).await?, "VM") == self.vm;
        }
        if !attached {
            bail!(
                "disk {} (VDI {}) is no longer attached to VM '{vm}': the A3 writes only over \
                 the VM's own disks; attach it again, or restore as a new VM",
                d.name,
                d.vdi_uuid
            );
        }
        let size = ops::int(&rec, "virtual_size") as u64;
        if size != d.virtual_size {
            bail!(
                "disk {} of VM '{vm}' is now {size} bytes, the version's is {}; restore as a \
                 new VM",
                d.name,
                d.virtual_size
            );
        }
        if let Some(snap) = &self.snapshot
            && !snap.disks.contains_key(&vdi)
        {
            bail!(
                "disk {} of VM '{vm}' is not in the safety snapshot '{}' (attached after it \
                 was taken?), so a failure could not be undone; restore again",
                d.name,
                snap.name
            );
        }
        Ok(vdi)
    }

    /// Records that disk `name` (VDI `vdi`) is about to be written.
    pub fn touch(&mut self, name: &str, vdi: &str) {
        self.touched.push((name.to_owned(), vdi.to_owned()));
    }

    /// Every disk is written: the block goes, then the snapshot (a snapshot that cannot be
    /// removed now is the reconciler's: its run succeeded).
    pub async fn finish(self, s: &Session, log: &RunLog) -> JobResult<()> {
        self.unblock(s).await.with_context(|| {
            format!(
                "VM '{}' is restored, but its blocked operations could not be cleared; clear \
                 them: {}",
                self.name,
                clear_command(&self.vm_uuid)
            )
        })?;
        log.info(&format!("VM '{}' unblocked", self.name));
        let then = "the reconciler removes it once this run has ended";
        self.remove_snapshot(s, log, then).await;
        Ok(())
    }

    /// The restore failed with `err`: writes the touched disks back from the safety
    /// snapshot, then unblocks and removes the snapshot; if that is not possible, leaves
    /// the VM blocked, saying why. The error to report.
    pub async fn fail(self, e: &Engine, s: &Session, err: JobError, log: &RunLog) -> JobError {
        if self.touched.is_empty() {
            self.undo(s, log).await;
            return err;
        }
        let disks: Vec<&str> = self.touched.iter().map(|(d, _)| d.as_str()).collect();
        let disks = disks.join(", ");
        let (name, version) = (&self.name, self.version);
        let clear = clear_command(&self.vm_uuid);
        let Some(snap) = &self.snapshot else {
            let why = format!(
                "failed part-way without a safety snapshot: disks {disks} are partly \
                 overwritten; restore version {version} again"
            );
            self.leave_blocked(s, &why, log).await;
            return step(
                format!(
                    "in-place restore of VM '{name}' failed; disks {disks} are partly \
                     overwritten and no safety snapshot was taken, so VM '{name}' stays \
                     blocked from starting: restore version {version} again (the block goes \
                     when it succeeds), or to start it as it is, clear the block: {clear}"
                ),
                err,
            );
        };
        log.warn(&format!(
            "writing disks {disks} back from the safety snapshot '{}'",
            snap.name
        ));
        match self.write_back(e, s, snap, log).await {
            Ok(()) => {
                log.info(&format!(
                    "disks {disks} written back: VM '{name}' is as it was before the restore"
                ));
                self.undo(s, log).await;
                step(
                    format!(
                        "in-place restore of VM '{name}' failed; its disks were written back \
                         from the safety snapshot, so it is as it was before the restore"
                    ),
                    err,
                )
            }
            Err(back) => {
                let why = format!(
                    "failed, and writing the disks back from snapshot '{}' failed too: revert \
                     the VM to that snapshot, or restore version {version} again",
                    snap.name
                );
                self.leave_blocked(s, &why, log).await;
                step(
                    format!(
                        "in-place restore of VM '{name}' failed, and writing its disks back \
                         from the safety snapshot '{snap_name}' failed too ({back:#}). VM \
                         '{name}' stays blocked from starting, its disks {disks} partly \
                         overwritten: revert it to snapshot '{snap_name}' (XenCenter: \
                         Snapshots, Revert; or xe snapshot-revert snapshot-uuid={uuid}), or \
                         restore version {version} again; then clear the block ({clear}) and \
                         delete the snapshot",
                        snap_name = snap.name,
                        uuid = snap.uuid,
                    ),
                    err,
                )
            }
        }
    }

    /// Writes each touched disk back from its safety snapshot disk; tries them all, then
    /// fails with the first failure.
    async fn write_back(
        &self,
        e: &Engine,
        s: &Session,
        snap: &Safety,
        log: &RunLog,
    ) -> JobResult<()> {
        let mut first = None;
        for (disk, vdi) in &self.touched {
            let what = format!("disk {disk} (back from the safety snapshot)");
            let written = async {
                let from = snap.disks.get(vdi).with_context(|| {
                    format!("disk {disk} is not in the safety snapshot '{}'", snap.name)
                })?;
                let (size, body) = attach::export_raw(s, e.catalog(), from, &what).await?;
                attach::import_raw(s, e.catalog(), vdi, &what, size, body).await
            }
            .await;
            match written {
                Ok(()) => log.info(&format!("disk {disk} written back")),
                Err(err) => {
                    log.error(&format!("writing {what}: {err:#}"));
                    first.get_or_insert(err);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Removes this restore's blocks, trying them all; the first failure.
    async fn unblock(&self, s: &Session) -> JobResult<()> {
        let mut first = None;
        for op in &self.blocked {
            if let Err(err) = ops::vm_unblock(s, &self.vm, op).await {
                first.get_or_insert(err);
            }
        }
        first.map_or(Ok(()), |err| Err(err.into()))
    }

    /// Removes the safety snapshot with its disks; a failure is logged, with `then`: what
    /// becomes of the snapshot.
    async fn remove_snapshot(&self, s: &Session, log: &RunLog, then: &str) {
        let Some(snap) = &self.snapshot else {
            return;
        };
        match ops::destroy_vm(s, &snap.vm, false).await {
            Ok(()) => log.info(&format!("safety snapshot '{}' removed", snap.name)),
            Err(err) => log.warn(&format!(
                "could not remove the safety snapshot '{}': {err}; {then}",
                snap.name
            )),
        }
    }

    /// Puts the VM back as it was, nothing having been written: unblocked, no snapshot.
    async fn undo(&self, s: &Session, log: &RunLog) {
        if let Err(err) = self.unblock(s).await {
            log.warn(&format!(
                "could not unblock VM '{}': {err:#}; clear the block: {}",
                self.name,
                clear_command(&self.vm_uuid)
            ));
        }
        self.remove_snapshot(s, log, "delete it by hand").await;
    }

    /// Leaves the VM blocked, the reason of this restore's blocks changed to `why`.
    async fn leave_blocked(&self, s: &Session, why: &str, log: &RunLog) {
        match leave_blocked(s, &self.vm, &self.tag, why).await {
            Ok(()) => log.error(&format!(
                "VM '{}' stays blocked from starting: {why}; then clear the block: {}",
                self.name,
                clear_command(&self.vm_uuid)
            )),
            Err(err) => log.error(&format!(
                "VM '{}' stays blocked from starting ({why}), but its block could not say so: \
                 {err:#}",
                self.name
            )),
        }
    }
}

/// `err`, as part of `what`.
fn step(what: String, err: JobError) -> JobError {
    JobError::Step {
        what,
        source: Box::new(err),
    }
}

/// Changes the reason of `tag`'s "writing" blocks on `vm` to `why`, all at once.
async fn leave_blocked(s: &Session, vm: &str, tag: &RunTag, why: &str) -> JobResult<()> {
    let rec = ops::record(s, "VM", vm).await?;
    let writing = tag.block_writing();
    let blocked: Vec<(String, String)> = ops::string_map(&rec, "blocked_operations")
        .into_iter()
        .map(|(op, reason)| match reason == writing {
            true => (op, tag.block_left(why)),
            false => (op, reason),
        })
        .collect();
    Ok(ops::vm_set_blocked(s, vm, &blocked).await?)
}

/// What the reconciler does with the blocks and safety snapshots that in-place restores
/// of this A3's ended runs left in the pool (`vms`: every VM record; `live`: the runs
/// going):
/// - of a run that succeeded (its clean-up failed): the block and the snapshot are
///   removed: the disks hold the version;
/// - of any other run (interrupted, or failed and unable to write the disks back): the
///   safety snapshot is kept, never removed, as it may be the only copy of the disks from
///   before the restore. The VM stays blocked; a block that still says the A3 is writing
///   is changed to say the restore was interrupted and to name the snapshot to revert to,
///   with a warning in the run's log. That happens once: the changed block is left alone.
///
/// Returns how many VMs and snapshots it dealt with.
pub async fn reconcile(
    e: &Engine,
    s: &Session,
    vms: &HashMap<String, Record>,
    live: &HashSet<i64>,
) -> JobResult<usize> {
    let ended = |t: &RunTag| e.owns(t) && !live.contains(&t.run);
    let succeeded = |run: i64| -> JobResult<bool> {
        Ok(e.catalog()
            .run_get(run)?
            .is_some_and(|r| r.state == "succeeded"))
    };
    let snapshots: Vec<(&String, &Record, RunTag)> = vms
        .iter()
        .filter(|(_, rec)| ops::flag(rec, "is_a_snapshot"))
        .filter_map(|(r, rec)| {
            let tag = ops::map_key(rec, "other_config", SAFETY_KEY)
                .and_then(RunTag::parse)
                .or_else(|| RunTag::from_safety_snapshot_name(ops::text(rec, "name_label")))?;
            ended(&tag).then_some((r, rec, tag))
        })
        .collect();
    let mut done = 0;
    for (vm, rec) in vms.iter().filter(|(_, r)| !ops::flag(r, "is_a_snapshot")) {
        let blocked = ops::string_map(rec, "blocked_operations");
        let tags: HashSet<RunTag> = blocked
            .iter()
            .filter_map(|(_, reason)| RunTag::from_block(reason))
            .filter(ended)
            .collect();
        let name = ops::text(rec, "name_label");
        for tag in tags {
            let log = RunLog::new(e.catalog().clone(), tag.run);
            if succeeded(tag.run)? {
                let unblocked = async {
                    for (op, reason) in &blocked {
                        if RunTag::from_block(reason).as_ref() == Some(&tag) {
                            ops::vm_unblock(s, vm, op).await?;
                        }
                    }
                    Ok::<_, JobError>(())
                };
                let what = format!("the block on VM '{name}', whose restore ended well");
                reconcile::note(e, &tag, &what, unblocked.await);
                done += 1;
                continue;
            }
            if !blocked.iter().any(|(_, r)| *r == tag.block_writing()) {
                continue;
            }
            let snap = snapshots
                .iter()
                .find(|(_, r, t)| *t == tag && ops::text(r, "snapshot_of") == vm.as_str())
                .map(|(_, r, _)| ops::text(r, "name_label"));
            let fix = match snap {
                Some(snap) => format!(
                    "revert the VM to snapshot '{snap}' or restore the version again, then \
                     clear the block and delete the snapshot"
                ),
                None => "restore the version again, then clear the block".to_owned(),
            };
            let why = format!("was interrupted: the disks may be partly overwritten; {fix}");
            match leave_blocked(s, vm, &tag, &why).await {
                Ok(()) => log.warn(&format!(
                    "reconciler: VM '{name}' was being restored in place when this run was \
                     interrupted, and its disks may be partly overwritten. It stays blocked \
                     from starting: {fix} ({})",
                    clear_command(ops::text(rec, "uuid"))
                )),
                Err(err) => log.warn(&format!(
                    "reconciler: VM '{name}', restored in place by this run when it was \
                     interrupted, stays blocked, but its block could not say so: {err:#}; it \
                     tries again later"
                )),
            }
            done += 1;
        }
    }
    for (snap, rec, tag) in &snapshots {
        if succeeded(tag.run)? {
            let what = format!(
                "the safety snapshot '{}' of a restore that ended well",
                ops::text(rec, "name_label")
            );
            reconcile::note(
                e,
                tag,
                &what,
                ops::destroy_vm(s, snap, false).await.map_err(Into::into),
            );
            done += 1;
        }
    }
    Ok(done)
}
