//! Restore of a VM version (DESIGN.md §1.8) to any SR of any added pool: as a new VM
//! `<name> (restored <date>)` with its networks mapped by uuid, then by name, else onto the
//! management network; or over the original VM's disks when it is halted, blocked from
//! starting meanwhile and with a safety snapshot to write back from on failure
//! ([`super::inplace`]). The A3 writes each disk through XAPI's `PUT /import_raw_vdi`,
//! reading the store (which checks every block against its id).
//!
//! A new VM and its disks carry the run's owner tag while they are made, so that the
//! reconciler removes what a crash left half-restored; the tag comes off once every disk is
//! written, before the VM starts.

use super::error::{Context, JobError, JobResult, bail};
use a3_shared::chunk::BlockId;
use serde::{Deserialize, Serialize};

use super::metadata::{DiskMeta, VmMetadata};
use super::{Engine, attach, inplace};
use crate::catalog::run_log::RunLog;
use crate::store::manifest::ManifestReader;
use crate::store::{ObjectRead, Store, VersionId};
use crate::xapi::Session;
use crate::xapi::create::{VbdMode, VbdSpec, VdiSpec, VifSpec, VmSpec};
use crate::xapi::ops;
use crate::xapi::owner::RUN_KEY;

/// What to restore, where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// The version.
    pub version: i64,
    /// The target pool (uuid or name); default: the VM's own pool.
    pub pool: Option<String>,
    /// The target SR (uuid or name); default: the pool's default SR.
    pub sr: Option<String>,
    /// Start the VM afterwards.
    #[serde(default)]
    pub start: bool,
    /// Write over the original VM's disks (it must be halted) instead of a new VM.
    #[serde(default)]
    pub in_place: bool,
    /// In place, without the safety snapshot taken first: a failure part-way then leaves
    /// the disks partly overwritten (and the VM blocked) instead of writing them back.
    #[serde(default)]
    pub no_safety_snapshot: bool,
}

/// Restores; returns the restored VM's uuid.
pub async fn restore(
    e: &Engine,
    run: i64,
    spec: &RestoreSpec,
    pool_uuid: &str,
    log: &RunLog,
) -> JobResult<String> {
    let v = e.catalog().version_get(spec.version)?.with_context(|| {
        format!(
            "no version {}; see `a3-server version list VM`",
            spec.version
        )
    })?;
    let meta: VmMetadata = serde_json::from_str(&v.metadata).with_context(|| {
        format!(
            "version {} is not a VM backup (a disk backup?); restore it with `a3-server disk restore`",
            spec.version
        )
    })?;
    let (s, _) = e.inventory().connect(pool_uuid).await?;
    let result = if spec.in_place {
        over_original(e, &s, run, spec, &meta, log).await
    } else {
        as_new_vm(e, &s, run, spec, &meta, log).await
    };
    s.logout().await;
    result
}

/// Writes the version over the original VM's disks, under an [`inplace::Guard`]: blocked
/// meanwhile, each disk checked to be still the VM's before it is written, and the disks
/// written back from the safety snapshot if a write fails.
async fn over_original(
    e: &Engine,
    s: &Session,
    run: i64,
    spec: &RestoreSpec,
    meta: &VmMetadata,
    log: &RunLog,
) -> JobResult<String> {
    let vm = ops::by_uuid(s, "VM", &meta.vm_uuid)
        .await
        .with_context(|| format!("the original VM {} is not in this pool", meta.vm_uuid))?;
    let rec = ops::record(s, "VM", &vm).await?;
    let state = ops::text(&rec, "power_state");
    if state != "Halted" {
        bail!(
            "VM '{}' is {state}: shut it down before restoring over its disks, or restore as a new VM",
            meta.name_label
        );
    }
    let name = ops::text(&rec, "name_label");
    let mut guard = inplace::Guard::begin(
        e,
        s,
        e.tag(run),
        &vm,
        &meta.vm_uuid,
        name,
        spec.version,
        !spec.no_safety_snapshot,
        log,
    )
    .await?;
    let written = async {
        for d in &meta.disks {
            let vdi = guard.check_disk(s, d).await?;
            guard.touch(&d.name, &vdi);
            write_disk(e, s, spec.version, d, &vdi, log)
                .await
                .with_context(|| format!("writing disk {} of VM '{name}'", d.name))?;
        }
        Ok::<_, JobError>(())
    }
    .await;
    match written {
        Ok(()) => guard.finish(s, log).await?,
        Err(err) => return Err(guard.fail(e, s, err, log).await),
    }
    if spec.start {
        start(s, &vm)
            .await
            .with_context(|| format!("VM '{name}' is restored but did not start"))?;
        log.info(&format!("VM '{name}' started"));
    }
    Ok(meta.vm_uuid.clone())
}

async fn as_new_vm(
    e: &Engine,
    s: &Session,
    run: i64,
    spec: &RestoreSpec,
    meta: &VmMetadata,
    log: &RunLog,
) -> JobResult<String> {
    let sr = target_sr(s, spec.sr.as_deref()).await?;
    let tag = e.tag(run).other_config();
    let date = crate::util::clock::utc_minute(crate::util::clock::unix_now());
    let name = format!("{} (restored {date})", meta.name_label);
    let vm = VmSpec {
        name_label: name.clone(),
        name_description: meta.name_description.clone(),
        memory: meta.memory,
        vcpus_max: meta.vcpus_max,
        vcpus_at_startup: meta.vcpus_at_startup,
        pv: meta.pv.clone(),
        hvm_boot_policy: meta.hvm_boot_policy.clone(),
        hvm_boot_params: meta.hvm_boot_params.clone(),
        platform: meta.platform.clone(),
        other_config: tag.clone(),
    }
    .create(s)
    .await?;
    log.info(&format!("created VM '{name}'"));
    // A failure part-way removes what this restore made: the VM and every disk created
    // for it, attached yet or not. Nothing half-restored stays in the pool.
    let mut vdis = Vec::new();
    let made = async {
        add_devices(e, s, spec, meta, &vm, &sr, &tag, log, &mut vdis).await?;
        // Restored: the VM and its disks are the administrator's now, which the
        // reconciler must never take for a run's leftovers. The VM's tag goes last.
        for vdi in &vdis {
            ops::untag(s, "VDI", vdi, RUN_KEY).await?;
        }
        ops::untag(s, "VM", &vm, RUN_KEY).await?;
        Ok::<_, JobError>(())
    };
    if let Err(err) = made.await {
        log.warn(&format!("removing the half-restored VM '{name}'"));
        if let Err(c) = remove_half_restored(s, &vm, &vdis).await {
            log.warn(&format!(
                "could not remove all of '{name}': {c}; remove it by hand"
            ));
        }
        return Err(err);
    }
    if spec.start {
        start(s, &vm)
            .await
            .with_context(|| format!("VM '{name}' is restored but did not start"))?;
        log.info(&format!("VM '{name}' started"));
    }
    Ok(ops::text(&ops::record(s, "VM", &vm).await?, "uuid").to_owned())
}

/// Creates the new VM's disks (written from the version), VBDs and VIFs; `vdis` gets every
/// disk created, for the caller to remove on failure.
#[allow(clippy::too_many_arguments)]
async fn add_devices(
    e: &Engine,
    s: &Session,
    spec: &RestoreSpec,
    meta: &VmMetadata,
    vm: &str,
    sr: &str,
    tag: &[(String, String)],
    log: &RunLog,
    vdis: &mut Vec<String>,
) -> JobResult<()> {
    for d in &meta.disks {
        let vdi = VdiSpec {
            name_label: d.vdi_name.clone(),
            name_description: d.vdi_description.clone(),
            sr: sr.to_owned(),
            virtual_size: d.virtual_size,
            other_config: tag.to_vec(),
        }
        .create(s)
        .await?;
        vdis.push(vdi.clone());
        write_disk(e, s, spec.version, d, &vdi, log).await?;
        VbdSpec {
            vm: vm.to_owned(),
            vdi,
            userdevice: d.userdevice.clone(),
            bootable: d.bootable,
            mode: VbdMode::parse(&d.mode),
            unpluggable: true,
            other_config: vec![],
        }
        .create(s)
        .await?;
    }
    let networks = ops::all_records(s, "network").await?;
    for vif in &meta.vifs {
        let by_uuid = networks
            .iter()
            .find(|(_, n)| ops::text(n, "uuid") == vif.network_uuid);
        let by_name = networks
            .iter()
            .find(|(_, n)| ops::text(n, "name_label") == vif.network_name);
        let (net, how) = match (by_uuid, by_name) {
            (Some((r, _)), _) => (r.clone(), "the same network"),
            (None, Some((r, _))) => (r.clone(), "the network of the same name"),
            (None, None) => (
                ops::management_network(s).await?.0,
                "the management network (no network of that uuid or name here)",
            ),
        };
        log.info(&format!("network interface {} → {how}", vif.device));
        // A new MAC: the original VM may still be running with its own.
        VifSpec {
            vm: vm.to_owned(),
            network: net,
            device: vif.device.clone(),
            mtu: vif.mtu.max(576),
        }
        .create(s)
        .await?;
    }
    Ok(())
}

/// Removes a half-restored VM and the disks made for it.
async fn remove_half_restored(s: &Session, vm: &str, vdis: &[String]) -> JobResult<()> {
    ops::destroy_vm(s, vm, true).await?;
    for vdi in vdis {
        ops::destroy_vdi(s, vdi).await?;
    }
    Ok(())
}
async fn start(s: &Session, vm: &str) -> JobResult<()> {
    Ok(ops::vm_start(s, vm).await?)
}

/// The SR by uuid or name; the pool's default SR when none is given.
async fn target_sr(s: &Session, sr: Option<&str>) -> JobResult<String> {
    let all = ops::all_records(s, "SR").await?;
    match sr {
        Some(want) => all
            .iter()
            .find(|(_, r)| ops::text(r, "uuid") == want)
            .or_else(|| all.iter().find(|(_, r)| ops::text(r, "name_label") == want))
            .map(|(r, _)| r.clone())
            .with_context(|| {
                format!("no SR '{want}' in the target pool; see `a3-server pool list`")
            }),
        None => {
            let pools = ops::all_records(s, "pool").await?;
            let default = pools
                .first()
                .map(|(_, p)| ops::text(p, "default_SR").to_owned())
                .unwrap_or_default();
            if default.is_empty() || default == ops::NULL_REF {
                bail!("the target pool has no default SR: name one with --sr");
            }
            Ok(default)
        }
    }
}

/// Writes disk `d` of the version onto `vdi` through `PUT /import_raw_vdi`.
async fn write_disk(
    e: &Engine,
    s: &Session,
    version: i64,
    d: &DiskMeta,
    vdi: &str,
    log: &RunLog,
) -> JobResult<()> {
    let store = e.store().clone();
    let name = d.name.clone();
    let manifest = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.open_manifest(VersionId(version), &name))
            .await??
    };
    let size = manifest.geometry().size;
    log.info(&format!(
        "writing disk {} ({size} bytes) from version {version}",
        d.name
    ));
    let failed = ReadFailure::default();
    let body = reqwest::Body::wrap_stream(disk_stream(store, manifest, failed.clone()));
    let written =
        attach::import_raw(s, e.catalog(), vdi, &format!("disk {}", d.name), size, body).await;
    // A block the store cannot give cuts the body; the pool then reports only that its
    // write failed, so the store's reason comes first.
    let stashed = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
    match stashed {
        Some(why) => Err(why).with_context(|| {
            format!(
                "reading disk {} of version {version} from the store",
                d.name
            )
        }),
        None => written,
    }
}

/// The first reason the body of a disk write ended early.
type ReadFailure = std::sync::Arc<std::sync::Mutex<Option<JobError>>>;

/// Manifest entries a blocking reader runs ahead of the disk's body.
const ENTRIES_AHEAD: usize = 256;

/// The disk's bytes in order: stored blocks read (and checked) from the store, zeros for
/// the zero blocks. The manifest is streamed (a blocking task reads it a little ahead), so
/// a disk of any size costs a few megabytes.
fn disk_stream(
    store: Store,
    manifest: ManifestReader<Box<dyn ObjectRead>>,
    failed: ReadFailure,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    let geometry = manifest.geometry();
    let (tx, rx) = tokio::sync::mpsc::channel(ENTRIES_AHEAD);
    tokio::task::spawn_blocking(move || {
        for entry in manifest {
            if tx.blocking_send(entry).is_err() {
                break; // the body was dropped
            }
        }
    });
    futures::stream::unfold(rx, move |mut rx| {
        let store = store.clone();
        let failed = failed.clone();
        async move {
            let entry = rx.recv().await?;
            let read = match entry {
                Ok((i, block)) => {
                    let r = geometry.block_range(i);
                    let len = (r.end - r.start) as usize;
                    match block {
                        None => Ok(vec![0u8; len]),
                        Some(id) => read_block(store, id, i, len).await,
                    }
                }
                Err(e) => Err(JobError::Refused(format!("the manifest: {e}"))),
            };
            Some((
                read.map_err(|why| {
                    let text = why.to_string();
                    failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(why);
                    std::io::Error::other(text)
                }),
                rx,
            ))
        }
    })
}

/// Block `i` of a disk, read and checked from the store; it must be `len` bytes.
async fn read_block(store: Store, id: BlockId, i: u64, len: usize) -> JobResult<Vec<u8>> {
    let bytes = tokio::task::spawn_blocking(move || store.read_block(&id)).await??;
    if bytes.len() != len {
        bail!("block {i} is {} bytes, the disk needs {len}", bytes.len());
    }
    Ok(bytes)
}
