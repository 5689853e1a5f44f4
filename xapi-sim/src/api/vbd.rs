//! `VBD.*`: create, plug, unplug, destroy.

use a3_shared::xapi_wire::{NULL_REF, Value};

use super::{Table, params, void};
use crate::abd;
use crate::errors::{self, ApiResult};
use crate::model::{Ref, new_ref, new_uuid, storage};
use crate::state::State;

pub(super) fn register(t: &mut Table) {
    t.add("VBD.create", 1, 0, |ctx, p| {
        let rec = params::record(p, 1, "args")?;
        let get = |f: &str, d: Value| params::field(rec, f, d);
        let vm = get("VM", Value::from(""))?
            .as_str()
            .unwrap_or("")
            .to_owned();
        let vdi = get("VDI", Value::from(NULL_REF))?
            .as_str()
            .unwrap_or("")
            .to_owned();
        let ty = get("type", Value::from("Disk"))?;
        let mode = get("mode", Value::from("RW"))?;
        let spec = VbdSpec {
            userdevice: get("userdevice", Value::from("autodetect"))?
                .as_str()
                .unwrap_or("")
                .to_owned(),
            ty: ty.as_str().unwrap_or("Disk").to_owned(),
            mode: mode.as_str().unwrap_or("RW").to_owned(),
            bootable: get("bootable", Value::Bool(false))?
                .as_bool()
                .unwrap_or(false),
            empty: get("empty", Value::Bool(false))?.as_bool().unwrap_or(false),
        };
        let r = create_vbd(ctx.st, &vm, &vdi, &spec)?;
        let other_config = get("other_config", Value::empty_struct())?;
        let unpluggable = get("unpluggable", Value::Bool(true))?;
        ctx.st.db.update("VBD", &r, |rec| {
            rec.insert("other_config".into(), other_config);
            rec.insert("unpluggable".into(), unpluggable);
        })?;
        Ok(Value::from(r))
    });
    t.add("VBD.plug", 1, 0, |ctx, p| {
        let vbd = params::object(ctx.st, p, 1, "VBD")?;
        plug(ctx.st, &vbd)?;
        Ok(void())
    });
    for name in ["VBD.unplug", "VBD.unplug_force"] {
        let force = name == "VBD.unplug_force";
        // xenopsd's `Device.Generic.clean_shutdown_wait` (ocaml/xenopsd/xc/device.ml):
        // the unplug returns once the guest's frontend has closed and the backend is
        // gone, so the guest no longer sees the disk; it gives up after
        // `hotplug_timeout` (xenopsd.ml, 300 s) with a device error.
        t.add_settling(
            name,
            1,
            move |ctx, p| unplug(ctx.st, p, force),
            |st, p| {
                p.get(1)
                    .and_then(Value::as_str)
                    .is_none_or(|vbd| !st.detaching.contains(vbd))
            },
            HOTPLUG_TIMEOUT,
            |ctx, p| {
                let vbd = p.get(1).and_then(Value::as_str).unwrap_or_default();
                if ctx.st.detaching.remove(vbd) {
                    return Err(errors::internal_error(&format!(
                        "Device_error: the guest did not release VBD {vbd} within {}s",
                        HOTPLUG_TIMEOUT.as_secs()
                    )));
                }
                Ok(void())
            },
        );
    }
    t.add("VBD.destroy", 1, 0, |ctx, p| {
        let vbd = params::object(ctx.st, p, 1, "VBD")?;
        if attached(ctx.st, &vbd)? {
            return Err(errors::operation_not_allowed(&format!(
                "VBD '{vbd}' still attached; unplug it first"
            )));
        }
        remove_vbd(ctx.st, &vbd)?;
        Ok(void())
    });
}

/// How long an unplug waits for the guest to let go (xenopsd.ml `hotplug_timeout`).
const HOTPLUG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// `VBD.unplug[_force]`'s checks and state change; a running ABD's backend then takes the
/// device away from its guest.
fn unplug(st: &mut State, p: &[Value], force: bool) -> ApiResult<Value> {
    let vbd = params::object(st, p, 1, "VBD")?;
    let vm = st.db.str_field("VBD", &vbd, "VM")?;
    require_running(st, &vm)?;
    if !attached(st, &vbd)? {
        return Err(errors::device_already_detached(&vbd));
    }
    check_hotplug(st, &vm)?;
    // xapi_xenops.ml `vbd_unplug`: a guest that keeps the device open rejects a clean
    // unplug (xenopsd's Device_detach_rejected); a forced one goes through.
    if !force && st.knobs.held_vbds.contains(&vbd) {
        return Err(errors::device_detach_rejected("VBD", &vbd));
    }
    st.knobs.held_vbds.remove(&vbd);
    set_attached(st, &vbd, false)?;
    if st.abd.is_some() {
        st.detaching.insert(vbd.clone());
    }
    abd::notify(st, abd::Action::Unplug { vm, vbd });
    Ok(void())
}

/// The fields of a new VBD.
pub(crate) struct VbdSpec {
    /// `"0"`, `"1"`, … or `"autodetect"`.
    pub userdevice: String,
    /// `Disk` or `CD`.
    pub ty: String,
    /// `RW` or `RO`.
    pub mode: String,
    /// Boot from it.
    pub bootable: bool,
    /// An empty CD drive.
    pub empty: bool,
}

/// Creates a detached VBD joining `vm` and `vdi` (`OpaqueRef:NULL` for an empty drive).
pub(crate) fn create_vbd(st: &mut State, vm: &str, vdi: &str, spec: &VbdSpec) -> ApiResult<Ref> {
    st.db.get("VM", vm)?;
    let empty = spec.empty || vdi == NULL_REF;
    if !empty {
        let ty = st.db.str_field("VDI", vdi, "type")?;
        if ty == "cbt_metadata" {
            return Err(errors::vdi_incompatible_type(vdi, &ty));
        }
        // xapi_vbd.ml `create`: "Prevent RW VBDs being created pointing to RO VDIs".
        let read_only = st.db.field("VDI", vdi, "read_only")?.as_bool();
        if spec.mode == "RW" && read_only == Some(true) {
            return Err(errors::vdi_readonly(vdi));
        }
    }
    if !matches!(spec.ty.as_str(), "Disk" | "CD" | "Floppy") {
        return Err(errors::value_not_supported(
            "type",
            &spec.ty,
            "expected Disk or CD",
        ));
    }
    if !matches!(spec.mode.as_str(), "RW" | "RO") {
        return Err(errors::value_not_supported(
            "mode",
            &spec.mode,
            "expected RW or RO",
        ));
    }
    let used = used_userdevices(st, vm)?;
    let userdevice = if spec.userdevice == "autodetect" || spec.userdevice.is_empty() {
        (0..16)
            .map(|n| n.to_string())
            .find(|d| !used.contains(d))
            .ok_or_else(|| errors::operation_not_allowed("no free VBD device slot"))?
    } else {
        if used.contains(&spec.userdevice) {
            return Err(errors::device_already_exists(&spec.userdevice));
        }
        spec.userdevice.clone()
    };
    let r = new_ref();
    let vdi_field = if empty { NULL_REF } else { vdi };
    let mut rec = storage::vbd(
        &new_uuid(),
        vm,
        vdi_field,
        &userdevice,
        &spec.ty,
        &spec.mode,
    );
    rec.insert("bootable".into(), spec.bootable.into());
    rec.insert("empty".into(), empty.into());
    st.db.insert("VBD", r.clone(), rec);
    st.db.add_to_set("VM", vm, "VBDs", &r)?;
    if !empty {
        st.db.add_to_set("VDI", vdi, "VBDs", &r)?;
    }
    Ok(r)
}

/// The userdevice numbers a VM's VBDs use.
pub(crate) fn used_userdevices(st: &State, vm: &str) -> ApiResult<Vec<String>> {
    Ok(st
        .db
        .refs_field("VM", vm, "VBDs")?
        .iter()
        .filter_map(|vbd| st.db.str_field("VBD", vbd, "userdevice").ok())
        .collect())
}

/// Hot-plugs a VBD into its running VM.
pub(crate) fn plug(st: &mut State, vbd: &str) -> ApiResult<()> {
    let vm = st.db.str_field("VBD", vbd, "VM")?;
    require_running(st, &vm)?;
    if attached(st, vbd)? {
        return Err(errors::device_already_attached(vbd));
    }
    check_hotplug(st, &vm)?;
    check_attachable(st, vbd)?;
    // xapi_vbd.ml `plug` (CA-83260): an HVM guest (one with qemu) takes no read-only disk.
    // A read-only CD is fine, and so is any mode for PV and PVH guests.
    let hvm = st.db.str_field("VM", &vm, "domain_type")? == "hvm";
    let ro_disk = st.db.str_field("VBD", vbd, "type")? != "CD"
        && st.db.str_field("VBD", vbd, "mode")? == "RO";
    if hvm && ro_disk {
        return Err(errors::disk_vbd_must_be_readwrite_for_hvm(vbd));
    }
    // The VM's host must see the disk's SR: a host-local SR's disk attaches only on its
    // host. xapi fails in the storage layer with an internal error (storage_utils.ml
    // `transform_storage_exn`) naming the SR that is not attached.
    let vdi = st.db.str_field("VBD", vbd, "VDI")?;
    if vdi != NULL_REF && st.db.exists("VDI", &vdi) {
        let sr = st.db.str_field("VDI", &vdi, "SR")?;
        let host = st.db.str_field("VM", &vm, "resident_on")?;
        if !super::host_sees(st, &host, &sr) {
            let uuid = st.db.str_field("SR", &sr, "uuid")?;
            return Err(errors::internal_error(&format!(
                "Storage_interface.Storage_error(Sr_not_attached(\"{uuid}\"))"
            )));
        }
    }
    set_attached(st, vbd, true)?;
    let (vm, vbd) = (vm.clone(), vbd.to_owned());
    abd::notify(st, abd::Action::Plug { vm, vbd });
    Ok(())
}

/// Checks that a running VM's guest lets VBDs be hot-plugged or unplugged
/// (xapi_vbd_helpers.ml `valid_operations`): an HVM guest needs PV drivers that say so
/// through its guest metrics (`can_use_hotplug_vbd`, from the guest's
/// `feature/hotplug/vbd`); without metrics, or with `unspecified` and no detected drivers
/// or driver version, `VM_MISSING_PV_DRIVERS [vm]` (xapi_pv_driver_version.ml). PV and PVH
/// guests need nothing. The simulator has no `VM_metrics`, so the VM's `domain_type`
/// stands for the running domain's type.
fn check_hotplug(st: &State, vm: &str) -> ApiResult<()> {
    if st.db.str_field("VM", vm, "domain_type")? != "hvm" {
        return Ok(());
    }
    let gm = st.db.str_field("VM", vm, "guest_metrics")?;
    let Ok(rec) = st.db.get("VM_guest_metrics", &gm) else {
        return Err(errors::vm_missing_pv_drivers(vm));
    };
    let drivers_detected = rec
        .get("PV_drivers_detected")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // xapi_pv_driver_version.ml: a version needs at least `major` and `minor`.
    let version = rec.get("PV_drivers_version");
    let has_version = ["major", "minor"]
        .iter()
        .all(|k| version.and_then(|v| v.get_str(k)).is_some());
    match rec.get("can_use_hotplug_vbd").and_then(Value::as_str) {
        Some("yes") => Ok(()),
        Some("no") => Err(errors::operation_not_allowed(
            "VM states it does not support VBD hotplug.",
        )),
        _ if drivers_detected || has_version => Ok(()),
        _ => Err(errors::vm_missing_pv_drivers(vm)),
    }
}

/// Checks that a VBD's disk may be attached: not CBT metadata, not written by another
/// attached VBD unless sharable (`VDI_IN_USE [vdi]`), and not a read-only VDI behind a
/// read-write VBD (`VDI_READONLY [vdi]`), as xapi_vbd_helpers.ml checks both.
pub(crate) fn check_attachable(st: &State, vbd: &str) -> ApiResult<()> {
    let vdi = st.db.str_field("VBD", vbd, "VDI")?;
    if vdi == NULL_REF || !st.db.exists("VDI", &vdi) {
        return Ok(());
    }
    let ty = st.db.str_field("VDI", &vdi, "type")?;
    if ty == "cbt_metadata" {
        return Err(errors::vdi_incompatible_type(&vdi, &ty));
    }
    let mode = st.db.str_field("VBD", vbd, "mode")?;
    let sharable = st
        .db
        .field("VDI", &vdi, "sharable")?
        .as_bool()
        .unwrap_or(false);
    if !sharable {
        for other in st.db.refs_field("VDI", &vdi, "VBDs")? {
            if other != vbd && attached(st, &other)? {
                let other_mode = st.db.str_field("VBD", &other, "mode")?;
                if mode == "RW" || other_mode == "RW" {
                    return Err(errors::vdi_in_use_by_vbd(&vdi));
                }
            }
        }
    }
    let read_only = st
        .db
        .field("VDI", &vdi, "read_only")?
        .as_bool()
        .unwrap_or(false);
    if mode == "RW" && read_only {
        return Err(errors::vdi_readonly(&vdi));
    }
    Ok(())
}

/// Marks a VBD attached (with its device name) or detached.
pub(crate) fn set_attached(st: &mut State, vbd: &str, on: bool) -> ApiResult<()> {
    let userdevice = st.db.str_field("VBD", vbd, "userdevice")?;
    st.db.update("VBD", vbd, |rec| {
        rec.insert("currently_attached".into(), on.into());
        let device = if on {
            storage::device_name(&userdevice)
        } else {
            String::new()
        };
        rec.insert("device".into(), device.into());
    })
}

/// Removes a VBD record and its links.
pub(crate) fn remove_vbd(st: &mut State, vbd: &str) -> ApiResult<()> {
    let rec = st.db.remove("VBD", vbd)?;
    if let Some(vm) = rec.get("VM").and_then(Value::as_str) {
        st.db.remove_from_set("VM", vm, "VBDs", vbd);
    }
    if let Some(vdi) = rec.get("VDI").and_then(Value::as_str) {
        st.db.remove_from_set("VDI", vdi, "VBDs", vbd);
    }
    Ok(())
}

fn attached(st: &State, vbd: &str) -> ApiResult<bool> {
    Ok(st
        .db
        .field("VBD", vbd, "currently_attached")?
        .as_bool()
        .unwrap_or(false))
}

fn require_running(st: &State, vm: &str) -> ApiResult<()> {
    let state = st.db.str_field("VM", vm, "power_state")?;
    if state != "Running" {
        return Err(errors::vm_bad_power_state(vm, "Running", &state));
    }
    Ok(())
}
