//! `VDI.*`: create, destroy, snapshot, clone, copy, CBT and `data_destroy`.

use a3_shared::xapi_wire::Value;
use base64::Engine as _;

use super::{Table, params, void};
use crate::clock;
use crate::demo::DemoSeed;
use crate::disks::{DiskError, Placement};
use crate::errors::{self, ApiError, ApiResult};
use crate::model::{Ref, new_ref, new_uuid, storage};
use crate::state::State;

pub(super) fn register(t: &mut Table) {
    t.add("VDI.create", 1, 0, |ctx, p| {
        let rec = params::record(p, 1, "args")?;
        let sr = params::field(rec, "SR", Value::from(""))?;
        let sr = sr.as_str().unwrap_or_default().to_owned();
        ctx.st.db.get("SR", &sr)?;
        let size = params::field(rec, "virtual_size", Value::Int(0))?
            .as_i64()
            .unwrap_or(0);
        if size < 0 {
            return Err(errors::value_not_supported(
                "virtual_size",
                &size.to_string(),
                "must not be negative",
            ));
        }
        let name = params::field(rec, "name_label", Value::from(""))?;
        let ty = params::field(rec, "type", Value::from("user"))?;
        let r = create_vdi(
            ctx.st,
            name.as_str().unwrap_or(""),
            &sr,
            size,
            ty.as_str().unwrap_or("user"),
            None,
        )?;
        let mut fields = vec![];
        for (f, default) in [
            ("name_description", Value::from("")),
            ("sharable", Value::Bool(false)),
            ("read_only", Value::Bool(false)),
            ("other_config", Value::empty_struct()),
            ("xenstore_data", Value::empty_struct()),
            ("sm_config", Value::empty_struct()),
            ("tags", Value::Array(vec![])),
        ] {
            fields.push((f, params::field(rec, f, default)?));
        }
        ctx.st.db.update("VDI", &r, |rec| {
            for (f, v) in fields {
                rec.insert(f.to_owned(), v);
            }
        })?;
        Ok(Value::from(r))
    });
    t.add("VDI.destroy", 1, 0, |ctx, p| {
        let vdi = params::object(ctx.st, p, 1, "VDI")?;
        destroy_vdi(ctx.st, &vdi)?;
        Ok(void())
    });
    t.add("VDI.snapshot", 2, 1, |ctx, p| {
        let vdi = params::object(ctx.st, p, 1, "VDI")?;
        refuse_reset_on_boot(ctx.st, &vdi)?;
        Ok(Value::from(copy_vdi(ctx.st, &vdi, None, Copy::Snapshot)?))
    });
    t.add("VDI.clone", 2, 1, |ctx, p| {
        let vdi = params::object(ctx.st, p, 1, "VDI")?;
        Ok(Value::from(copy_vdi(ctx.st, &vdi, None, Copy::Clone)?))
    });
    t.add("VDI.copy", 4, 2, |ctx, p| {
        let vdi = params::object(ctx.st, p, 1, "VDI")?;
        let sr = params::object(ctx.st, p, 2, "SR")?;
        refuse_reset_on_boot(ctx.st, &vdi)?;
        Ok(Value::from(copy_vdi(ctx.st, &vdi, Some(&sr), Copy::Clone)?))
    });
    t.add("VDI.enable_cbt", 1, 0, |ctx, p| {
        let vdi = params::object(ctx.st, p, 1, "VDI")?;
        check_cbt_allowed(ctx.st, &vdi)?;
        let uuid = uuid_of(ctx.st, &vdi)?;
        ctx.st
            .disks
            .enable_cbt(&uuid)
            .map_err(|e| disk_error(&vdi, e))?;
        ctx.st.db.set("VDI", &vdi, "cbt_enabled", true)?;
        Ok(void())
    });
    t.add("VDI.disable_cbt", 1, 0, |ctx, p| {
        let vdi = params::object(ctx.st, p, 1, "VDI")?;
        let uuid = uuid_of(ctx.st, &vdi)?;
        ctx.st.disks.disable_cbt(&uuid);
        ctx.st.db.set("VDI", &vdi, "cbt_enabled", false)?;
        Ok(void())
    });
    t.add("VDI.list_changed_blocks", 2, 0, |ctx, p| {
        let from = params::object(ctx.st, p, 1, "VDI")?;
        let to = params::object(ctx.st, p, 2, "VDI")?;
        let (fu, tu) = (uuid_of(ctx.st, &from)?, uuid_of(ctx.st, &to)?);
        let bitmap = ctx.st.disks.changed_blocks(&fu, &tu).map_err(|e| match e {
            DiskError::NoCbt(u) if u == fu => errors::vdi_no_cbt_metadata(&from),
            DiskError::NoCbt(_) => errors::vdi_no_cbt_metadata(&to),
            e => disk_error(&from, e),
        })?;
        Ok(Value::from(
            base64::engine::general_purpose::STANDARD.encode(bitmap),
        ))
    });
    t.add_waiting(
        "VDI.data_destroy",
        1,
        data_destroy_may_run,
        DATA_DESTROY_WAIT,
        |ctx, p| {
            let vdi = params::object(ctx.st, p, 1, "VDI")?;
            data_destroy(ctx.st, &vdi)?;
            Ok(void())
        },
    );
}

/// SR types whose storage manager can track changed blocks: the drivers listing
/// `VDI_CONFIG_CBT` in their capabilities (xapi-project/sm `libs/sm/drivers/*SR.py`:
/// EXTSR, FileSR, LVHDSR, NFSSR).
const CBT_SR_TYPES: &[&str] = &["ext", "file", "lvm", "nfs"];

/// Whether `VDI.enable_cbt` may run, in xapi_vdi.ml `check_operation_error`'s order: the
/// SR's driver must have CBT (`SR_OPERATION_NOT_SUPPORTED [sr]`); then not CBT metadata,
/// not a snapshot, a `user` or `system` VDI, and not `on_boot=reset`.
fn check_cbt_allowed(st: &State, vdi: &str) -> ApiResult<()> {
    let rec = st.db.get("VDI", vdi)?;
    let text = |f: &str| rec.get(f).and_then(Value::as_str).unwrap_or_default();
    let sr = text("SR");
    if !CBT_SR_TYPES.contains(&st.db.str_field("SR", sr, "type")?.as_str()) {
        return Err(errors::sr_operation_not_supported(sr));
    }
    let ty = text("type");
    if ty == "cbt_metadata" {
        return Err(errors::vdi_incompatible_type(vdi, ty));
    }
    if rec.get("is_a_snapshot").and_then(Value::as_bool) == Some(true) {
        return Err(errors::operation_not_allowed(&format!(
            "VDI is a snapshot: {vdi}"
        )));
    }
    if !matches!(ty, "user" | "system") {
        return Err(errors::vdi_incompatible_type(vdi, ty));
    }
    if text("on_boot") == "reset" {
        return Err(errors::vdi_on_boot_mode_incompatible_with_operation());
    }
    Ok(())
}

/// xapi_vdi.ml `check_operation_error`: `snapshot` and `copy` of an `on_boot=reset` VDI
/// (whose content is thrown away at every boot) fail with
/// `VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION []`.
pub(crate) fn refuse_reset_on_boot(st: &State, vdi: &str) -> ApiResult<()> {
    if st.db.field("VDI", vdi, "on_boot")?.as_str() == Some("reset") {
        return Err(errors::vdi_on_boot_mode_incompatible_with_operation());
    }
    Ok(())
}

/// How long `VDI.data_destroy` waits for the VDI's VBDs to go (xapi_vdi.ml:
/// `data_destroy = _data_destroy ~timeout:4`).
const DATA_DESTROY_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

/// Whether `VDI.data_destroy` may stop waiting: the VDI has no VBD left, or the call fails
/// (or is a no-op) before any wait in xapi.
fn data_destroy_may_run(st: &State, p: &[Value]) -> bool {
    let Some(rec) = p
        .get(1)
        .and_then(Value::as_str)
        .and_then(|r| st.db.get("VDI", r).ok())
    else {
        return true;
    };
    let flag = |f: &str| rec.get(f).and_then(Value::as_bool) == Some(true);
    let no_vbds = rec
        .get("VBDs")
        .and_then(Value::as_array)
        .is_none_or(|v| v.is_empty());
    rec.get("type").and_then(Value::as_str) == Some("cbt_metadata")
        || !flag("is_a_snapshot")
        || !flag("cbt_enabled")
        || no_vbds
}

/// `VDI.data_destroy`: keeps only the CBT metadata of a snapshot VDI. As in xapi
/// (xapi_vdi.ml `_data_destroy`, `wait_for_vbds_to_be_unplugged_and_destroyed`) it is a
/// no-op on a `cbt_metadata` VDI; it runs after waiting up to 4 s for every VBD of the VDI
/// to be destroyed, and fails with `VDI_IN_USE [vdi, "data_destroy"]` if any is left.
fn data_destroy(st: &mut State, vdi: &str) -> ApiResult<()> {
    let rec = st.db.get("VDI", vdi)?;
    if rec.get("type").and_then(Value::as_str) == Some("cbt_metadata") {
        return Ok(());
    }
    if rec.get("is_a_snapshot").and_then(Value::as_bool) != Some(true) {
        return Err(errors::operation_not_allowed(&format!(
            "VDI is not a snapshot: {vdi}"
        )));
    }
    if rec.get("cbt_enabled").and_then(Value::as_bool) != Some(true) {
        return Err(errors::vdi_no_cbt_metadata(vdi));
    }
    if !st.db.refs_field("VDI", vdi, "VBDs")?.is_empty() {
        return Err(errors::vdi_in_use(vdi, "data_destroy"));
    }
    super::sr::placement(st, &st.db.str_field("VDI", vdi, "SR")?)?;
    let uuid = uuid_of(st, vdi)?;
    st.disks
        .data_destroy(&uuid)
        .map_err(|e| disk_error(vdi, e))?;
    st.db.update("VDI", vdi, |rec| {
        rec.insert("type".into(), "cbt_metadata".into());
        rec.insert("physical_utilisation".into(), Value::Int(0));
    })
}

/// Creates a VDI record and its (zero or demo) content; returns its ref. On an NFS SR
/// the content is an empty VHD of whole 2 MiB blocks (demo content is for local SRs).
pub(crate) fn create_vdi(
    st: &mut State,
    name: &str,
    sr: &str,
    size: i64,
    ty: &str,
    demo: Option<DemoSeed>,
) -> ApiResult<Ref> {
    let uuid = new_uuid();
    let r = new_ref();
    let size = match super::sr::placement(st, sr)? {
        Placement::Local => {
            st.disks.create(&uuid, size as u64, demo);
            size
        }
        Placement::Vhd(sr_uuid) => {
            let rounded = crate::vhd_file::round_size(size as u64);
            st.disks
                .create_vhd(&uuid, rounded, &sr_uuid)
                .map_err(|e| disk_error(&r, e))?;
            rounded as i64
        }
    };
    let mut rec = storage::vdi(&uuid, name, sr, size, ty);
    rec.insert(
        "physical_utilisation".into(),
        Value::Int(st.disks.utilisation(&uuid) as i64),
    );
    st.db.insert("VDI", r.clone(), rec);
    let _ = st.db.add_to_set("SR", sr, "VDIs", &r);
    Ok(r)
}

/// How a VDI copy relates to its source.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Copy {
    /// A point-in-time snapshot: `is_a_snapshot`, keeps CBT.
    Snapshot,
    /// An independent copy.
    Clone,
}

/// Copies a VDI's record and content, into `sr` or the source's SR.
pub(crate) fn copy_vdi(st: &mut State, vdi: &str, sr: Option<&str>, kind: Copy) -> ApiResult<Ref> {
    let src = st.db.get("VDI", vdi)?.clone();
    let ty = src.get("type").and_then(Value::as_str).unwrap_or("");
    if ty == "cbt_metadata" {
        return Err(errors::vdi_incompatible_type(vdi, ty));
    }
    let src_uuid = uuid_of(st, vdi)?;
    let uuid = new_uuid();
    let r = new_ref();
    let src_sr = src
        .get("SR")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let sr = sr.map_or_else(|| src_sr.clone(), str::to_owned);
    super::sr::placement(st, &src_sr)?;
    let to = super::sr::placement(st, &sr)?;
    st.disks
        .copy(&src_uuid, &uuid, kind == Copy::Snapshot, &to)
        .map_err(|e| disk_error(vdi, e))?;
    let size = st.disks.get(&uuid).map_or(0, |d| d.virtual_size);
    let mut rec = src.clone();
    rec.insert("virtual_size".into(), Value::Int(size as i64));
    rec.insert("uuid".into(), uuid.clone().into());
    rec.insert("location".into(), uuid.into());
    rec.insert("SR".into(), sr.clone().into());
    rec.insert("VBDs".into(), Value::Array(vec![]));
    rec.insert("snapshots".into(), Value::Array(vec![]));
    rec.insert("current_operations".into(), Value::empty_struct());
    match kind {
        Copy::Snapshot => {
            rec.insert("is_a_snapshot".into(), true.into());
            rec.insert("snapshot_of".into(), vdi.into());
            rec.insert(
                "snapshot_time".into(),
                Value::DateTime(clock::xapi_datetime(clock::unix_now())),
            );
        }
        Copy::Clone => {
            rec.insert("is_a_snapshot".into(), false.into());
            rec.insert("snapshot_of".into(), crate::model::null());
            rec.insert("cbt_enabled".into(), false.into());
            rec.insert("read_only".into(), false.into());
        }
    }
    st.db.insert("VDI", r.clone(), rec);
    st.db.add_to_set("SR", &sr, "VDIs", &r)?;
    if kind == Copy::Snapshot {
        st.db.add_to_set("VDI", vdi, "snapshots", &r)?;
    }
    Ok(r)
}

/// Destroys a VDI that no running VM uses, with its unplugged VBDs. Its SR must be
/// attached, as the storage backend deletes the content.
pub(crate) fn destroy_vdi(st: &mut State, vdi: &str) -> ApiResult<()> {
    super::sr::placement(st, &st.db.str_field("VDI", vdi, "SR")?)?;
    destroy_vdi_unchecked(st, vdi)
}

/// [`destroy_vdi`] once the caller has made the SR's store reachable.
pub(crate) fn destroy_vdi_unchecked(st: &mut State, vdi: &str) -> ApiResult<()> {
    if is_attached(st, vdi)? {
        return Err(errors::vdi_in_use(vdi, "destroy"));
    }
    for vbd in st.db.refs_field("VDI", vdi, "VBDs")? {
        super::vbd::remove_vbd(st, &vbd)?;
    }
    let uuid = uuid_of(st, vdi)?;
    let rec = st.db.remove("VDI", vdi)?;
    st.disks.remove(&uuid);
    if let Some(sr) = rec.get("SR").and_then(Value::as_str) {
        st.db.remove_from_set("SR", sr, "VDIs", vdi);
    }
    if let Some(parent) = rec.get("snapshot_of").and_then(Value::as_str) {
        st.db.remove_from_set("VDI", parent, "snapshots", vdi);
    }
    Ok(())
}

/// True when a VBD currently attaches the VDI.
pub(crate) fn is_attached(st: &State, vdi: &str) -> ApiResult<bool> {
    Ok(st.db.refs_field("VDI", vdi, "VBDs")?.iter().any(|vbd| {
        st.db
            .field("VBD", vbd, "currently_attached")
            .ok()
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }))
}

/// The uuid naming a VDI's content in the disk store.
pub(crate) fn uuid_of(st: &State, vdi: &str) -> ApiResult<String> {
    st.db.str_field("VDI", vdi, "uuid")
}

/// Refreshes `physical_utilisation` after the content changed.
pub(crate) fn refresh_utilisation(st: &mut State, vdi: &str) -> ApiResult<()> {
    let uuid = uuid_of(st, vdi)?;
    let used = st.disks.utilisation(&uuid) as i64;
    st.db
        .set("VDI", vdi, "physical_utilisation", Value::Int(used))
}

/// Maps a content error on `vdi` to the XAPI error a storage backend would raise.
pub(crate) fn disk_error(vdi: &str, e: DiskError) -> ApiError {
    match e {
        DiskError::NoCbt(_) => errors::vdi_no_cbt_metadata(vdi),
        DiskError::DataDestroyed(_) => errors::vdi_incompatible_type(vdi, "cbt_metadata"),
        DiskError::Unrelated(..) => errors::sm_failure(
            "SR_BACKEND_FAILURE_460",
            "Failed to calculate changed blocks for given VDIs. [opterr=Source and target VDI are unrelated]",
        ),
        e => errors::sr_backend_failure("SR_BACKEND_FAILURE", "", &e.to_string()),
    }
}
