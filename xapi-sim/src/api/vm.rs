//! `VM.*`: create, snapshot, clone, copy, provision, power operations, destroy.
//!
//! Power operations change records. Guests have no process, except ABD VMs when the
//! simulator runs them ([`crate::abd`]): the power operations then also tell the process
//! backend, which acts off the request path.

use a3_shared::xapi_wire::{NULL_REF, Struct, Value};

use super::vbd::{self, VbdSpec};
use super::vdi::{self, Copy};
use super::{Ctx, Table, params, void};
use crate::errors::{self, ApiResult};
use crate::model::{Ref, new_ref, new_uuid, null, vm as vm_model};
use crate::state::State;
use crate::{abd, clock, guest_agent};

pub(super) fn register(t: &mut Table) {
    t.add("VM.create", 1, 0, |ctx, p| {
        let args = params::record(p, 1, "args")?;
        Ok(Value::from(create_vm(ctx.st, args, VM_CREATE_FIELDS)?))
    });
    t.add("VM.snapshot", 3, 1, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        check_not_blocked(ctx.st, &vm, "snapshot")?;
        let name = params::string(p, 2, "new_name")?.to_owned();
        let ignore = match params::opt(p, 3) {
            Some(_) => params::strings(p, 3, "ignore_vdis")?,
            None => Vec::new(),
        };
        Ok(Value::from(copy_vm(
            ctx.st,
            &vm,
            &name,
            VmCopy::Snapshot,
            &ignore,
        )?))
    });
    t.add("VM.clone", 2, 0, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        let name = params::string(p, 2, "new_name")?.to_owned();
        check_not_blocked(ctx.st, &vm, "clone")?;
        require_state(ctx.st, &vm, "Halted")?;
        Ok(Value::from(copy_vm(
            ctx.st,
            &vm,
            &name,
            VmCopy::Clone,
            &[],
        )?))
    });
    t.add("VM.copy", 3, 0, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        let name = params::string(p, 2, "new_name")?.to_owned();
        let sr = params::string(p, 3, "sr")?.to_owned();
        if sr != NULL_REF {
            ctx.st.db.get("SR", &sr)?;
        }
        check_not_blocked(ctx.st, &vm, "copy")?;
        require_state(ctx.st, &vm, "Halted")?;
        let target = (sr != NULL_REF).then_some(sr);
        Ok(Value::from(copy_vm(
            ctx.st,
            &vm,
            &name,
            VmCopy::Copy(target),
            &[],
        )?))
    });
    t.add("VM.provision", 1, 0, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        check_not_blocked(ctx.st, &vm, "provision")?;
        provision(ctx.st, &vm)?;
        Ok(void())
    });
    t.add("VM.start", 3, 0, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        let paused = params::boolean(p, 2, "start_paused")?;
        params::boolean(p, 3, "force")?;
        check_not_blocked(ctx.st, &vm, "start")?;
        check_startable(ctx.st, &vm, "start")?;
        start_vm(ctx, &vm, paused)?;
        Ok(void())
    });
    t.add("VM.start_on", 4, 0, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        let host = params::object(ctx.st, p, 2, "host")?;
        let paused = params::boolean(p, 3, "start_paused")?;
        check_not_blocked(ctx.st, &vm, "start_on")?;
        check_startable(ctx.st, &vm, "start_on")?;
        start_on(ctx.st, &vm, &host, paused)?;
        Ok(void())
    });
    for name in ["VM.clean_shutdown", "VM.hard_shutdown"] {
        let hard = name == "VM.hard_shutdown";
        t.add(name, 1, 0, move |ctx, p| {
            let vm = params::object(ctx.st, p, 1, "VM")?;
            check_not_blocked(ctx.st, &vm, op_of(name))?;
            let state = ctx.st.db.str_field("VM", &vm, "power_state")?;
            let ok =
                state == "Running" || (hard && matches!(state.as_str(), "Paused" | "Suspended"));
            if !ok {
                return Err(errors::vm_bad_power_state(&vm, "Running", &state));
            }
            stop_vm(ctx.st, &vm)?;
            abd::notify(ctx.st, abd::Action::Stop { vm, hard });
            Ok(void())
        });
    }
    for name in ["VM.clean_reboot", "VM.hard_reboot"] {
        let hard = name == "VM.hard_reboot";
        t.add(name, 1, 0, move |ctx, p| {
            let vm = params::object(ctx.st, p, 1, "VM")?;
            check_not_blocked(ctx.st, &vm, op_of(name))?;
            require_state(ctx.st, &vm, "Running")?;
            let domid = next_domid(ctx.st);
            ctx.st.db.set("VM", &vm, "domid", Value::Int(domid))?;
            if abd::is_abd(ctx.st.db.get("VM", &vm)?) {
                abd::notify(
                    ctx.st,
                    abd::Action::Stop {
                        vm: vm.clone(),
                        hard,
                    },
                );
                abd::notify(ctx.st, abd::Action::Start { vm, respawn: false });
            }
            Ok(void())
        });
    }
    t.add("VM.set_memory_limits", 5, 0, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        let limits = MemoryLimits {
            static_min: params::int(p, 2, "static_min")?,
            static_max: params::int(p, 3, "static_max")?,
            dynamic_min: params::int(p, 4, "dynamic_min")?,
            dynamic_max: params::int(p, 5, "dynamic_max")?,
        };
        set_memory_limits(ctx.st, &vm, limits)?;
        Ok(void())
    });
    t.add("VM.destroy", 1, 0, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        check_not_blocked(ctx.st, &vm, "destroy")?;
        destroy_vm(ctx.st, &vm)?;
        Ok(void())
    });
    // Replaces the generated setter: making a VM a template is the `make_into_template`
    // operation (message_forwarding.ml `VM.set_is_a_template`); making it a VM again is not
    // checked.
    t.add_accessor("VM.set_is_a_template", 2, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        let value = params::boolean(p, 2, "value")?;
        if value {
            check_not_blocked(ctx.st, &vm, "make_into_template")?;
        }
        ctx.st.db.set("VM", &vm, "is_a_template", value)?;
        Ok(void())
    });
    t.add("VM.get_allowed_VBD_devices", 1, 0, |ctx, p| {
        let vm = params::object(ctx.st, p, 1, "VM")?;
        let used = vbd::used_userdevices(ctx.st, &vm)?;
        Ok(Value::Array(
            (0..16)
                .map(|n| n.to_string())
                .filter(|d| !used.contains(d))
                .map(Value::from)
                .collect(),
        ))
    });
}

/// Fields `VM.create` takes from its record; the rest are xapi's defaults or are
/// managed by xapi itself (power state, devices, snapshots, …). `blocked_operations` is
/// not one: xapi_vm.ml `create` ignores it and makes the VM with none.
pub(crate) const VM_CREATE_FIELDS: &[&str] = &[
    "name_label",
    "name_description",
    "user_version",
    "is_a_template",
    "affinity",
    "memory_target",
    "memory_static_max",
    "memory_dynamic_max",
    "memory_dynamic_min",
    "memory_static_min",
    "VCPUs_params",
    "VCPUs_max",
    "VCPUs_at_startup",
    "actions_after_shutdown",
    "actions_after_reboot",
    "actions_after_crash",
    "PV_bootloader",
    "PV_kernel",
    "PV_ramdisk",
    "PV_args",
    "PV_bootloader_args",
    "PV_legacy_args",
    "HVM_boot_policy",
    "HVM_boot_params",
    "HVM_shadow_multiplier",
    "platform",
    "PCI_bus",
    "other_config",
    "recommendations",
    "xenstore_data",
    "ha_always_run",
    "ha_restart_priority",
    "tags",
    "has_vendor_device",
    "domain_type",
    "NVRAM",
];

/// A halted VM with no devices: the `fields` of `args` over xapi's defaults. The VM of
/// `VM.create`, and of an XVA import ([`crate::import_xva`]).
pub(crate) fn create_vm(st: &mut State, args: &Struct, fields: &[&str]) -> ApiResult<Ref> {
    let mut rec = vm_model::vm(&new_uuid(), "", vm_model::VmKind::Guest, 1 << 30, 1);
    for &f in fields {
        if let Some(v) = args.get(f) {
            let v = params::coerce(f, &rec[f], v.clone())?;
            rec.insert(f.to_owned(), v);
        }
    }
    let r = new_ref();
    st.db.insert("VM", r.clone(), rec);
    Ok(r)
}

/// The four limits `VM.set_memory_limits` takes, in bytes.
struct MemoryLimits {
    static_min: i64,
    static_max: i64,
    dynamic_min: i64,
    dynamic_max: i64,
}

/// `VM.set_memory_limits` as xapi runs it: the `changing_memory_limits` operation needs a
/// Halted VM (xapi_vm_lifecycle.ml `allowed_power_states`; templates may, snapshots may
/// not: `check_template`, `check_snapshot`), then the limits must be in order,
/// static_min ≤ dynamic_min ≤ dynamic_max ≤ static_max, or
/// `MEMORY_CONSTRAINT_VIOLATION_ORDER []` (xapi_vm.ml `set_memory_limits`,
/// xapi_vm_memory_constraints.ml `assert_valid`; XCP-ng licenses DMC, so the pinned
/// variant does not apply). The target follows dynamic_min, as xapi sets it.
fn set_memory_limits(st: &mut State, vm: &str, m: MemoryLimits) -> ApiResult<()> {
    check_not_blocked(st, vm, "changing_memory_limits")?;
    let snapshot = st
        .db
        .get("VM", vm)?
        .get("is_a_snapshot")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if snapshot {
        return Err(errors::vm_is_snapshot(vm, "changing_memory_limits"));
    }
    require_state(st, vm, "Halted")?;
    if !(m.static_min <= m.dynamic_min
        && m.dynamic_min <= m.dynamic_max
        && m.dynamic_max <= m.static_max)
    {
        return Err(errors::memory_constraint_violation_order());
    }
    for (field, v) in [
        ("memory_static_min", m.static_min),
        ("memory_static_max", m.static_max),
        ("memory_dynamic_min", m.dynamic_min),
        ("memory_dynamic_max", m.dynamic_max),
        ("memory_target", m.dynamic_min),
    ] {
        st.db.set("VM", vm, field, Value::Int(v))?;
    }
    Ok(())
}

fn require_state(st: &State, vm: &str, expected: &str) -> ApiResult<()> {
    let state = st.db.str_field("VM", vm, "power_state")?;
    if state != expected {
        return Err(errors::vm_bad_power_state(vm, expected, &state));
    }
    Ok(())
}

/// How a VM copy relates to its source.
enum VmCopy {
    /// `VM.snapshot`: disks are point-in-time snapshots.
    Snapshot,
    /// `VM.clone`: disks are independent copies on their SRs.
    Clone,
    /// `VM.copy`: disks are independent copies, on this SR if given.
    Copy(Option<Ref>),
}

fn copy_vm(
    st: &mut State,
    vm: &str,
    name: &str,
    how: VmCopy,
    ignore_vdis: &[String],
) -> ApiResult<Ref> {
    let src = st.db.get("VM", vm)?.clone();
    if src.get("is_control_domain").and_then(Value::as_bool) == Some(true) {
        return Err(errors::operation_not_allowed(
            "a control domain cannot be copied",
        ));
    }
    // xapi_vm_clone.ml copies each disk with `VDI.snapshot` or `VDI.copy`, which refuse a
    // disk reset at every boot (xapi_vdi.ml); it checks them all before making anything.
    if !matches!(how, VmCopy::Clone) {
        for vbd in st.db.refs_field("VM", vm, "VBDs")? {
            let vdi = st.db.str_field("VBD", &vbd, "VDI")?;
            if st.db.exists("VDI", &vdi) && !ignore_vdis.contains(&vdi) {
                vdi::refuse_reset_on_boot(st, &vdi)?;
            }
        }
    }
    let now = clock::unix_now();
    let r = new_ref();
    let mut rec: Struct = src.clone();
    for (f, v) in [
        ("uuid", Value::from(new_uuid())),
        ("name_label", Value::from(name)),
        ("power_state", Value::from("Halted")),
        ("resident_on", null()),
        ("scheduled_to_be_resident_on", null()),
        ("domid", Value::Int(-1)),
        ("VBDs", Value::Array(vec![])),
        ("VIFs", Value::Array(vec![])),
        ("snapshots", Value::Array(vec![])),
        ("guest_metrics", null()),
        ("current_operations", Value::empty_struct()),
        // A copy is never blocked, whatever its source is (xapi_vm_clone.ml
        // `Db.VM.create … ~blocked_operations:[]`).
        ("blocked_operations", Value::empty_struct()),
    ] {
        rec.insert(f.into(), v);
    }
    match how {
        VmCopy::Snapshot => {
            rec.insert("is_a_snapshot".into(), true.into());
            rec.insert("snapshot_of".into(), vm.into());
            rec.insert(
                "snapshot_time".into(),
                Value::DateTime(clock::xapi_datetime(now)),
            );
            // xapi marks VM snapshots as templates too; clients tell them apart by
            // is_a_snapshot.
            rec.insert("is_a_template".into(), true.into());
        }
        VmCopy::Clone | VmCopy::Copy(_) => {
            rec.insert("is_a_snapshot".into(), false.into());
            rec.insert("snapshot_of".into(), null());
            rec.insert("snapshot_time".into(), Value::DateTime(clock::EPOCH.into()));
        }
    }
    st.db.insert("VM", r.clone(), rec);

    for old_vbd in st.db.refs_field("VM", vm, "VBDs")? {
        let b = st.db.get("VBD", &old_vbd)?.clone();
        let s = |f: &str| b.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
        let old_vdi = s("VDI");
        let is_disk = s("type") == "Disk" && old_vdi != NULL_REF && st.db.exists("VDI", &old_vdi);
        if is_disk && ignore_vdis.contains(&old_vdi) {
            continue;
        }
        let new_vdi = if is_disk {
            match &how {
                VmCopy::Snapshot => vdi::copy_vdi(st, &old_vdi, None, Copy::Snapshot)?,
                VmCopy::Clone => vdi::copy_vdi(st, &old_vdi, None, Copy::Clone)?,
                VmCopy::Copy(sr) => vdi::copy_vdi(st, &old_vdi, sr.as_deref(), Copy::Clone)?,
            }
        } else {
            old_vdi
        };
        let spec = VbdSpec {
            userdevice: s("userdevice"),
            ty: s("type"),
            mode: s("mode"),
            bootable: b.get("bootable").and_then(Value::as_bool).unwrap_or(false),
            empty: b.get("empty").and_then(Value::as_bool).unwrap_or(false),
        };
        vbd::create_vbd(st, &r, &new_vdi, &spec)?;
    }
    for old_vif in st.db.refs_field("VM", vm, "VIFs")? {
        let v = st.db.get("VIF", &old_vif)?.clone();
        let s = |f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
        let mac = match how {
            VmCopy::Snapshot => s("MAC"),
            _ => String::new(),
        };
        super::network::create_vif(st, &r, &s("network"), &s("device"), &mac)?;
    }
    if matches!(how, VmCopy::Snapshot) {
        st.db.add_to_set("VM", vm, "snapshots", &r)?;
    }
    Ok(r)
}

/// Creates the disks a template's `other_config:disks` asks for, e.g.
/// `<provision><disk device="0" size="10737418240" sr="" bootable="true" type="system"/></provision>`,
/// then drops the key as xapi does.
fn provision(st: &mut State, vm: &str) -> ApiResult<()> {
    let other = st.db.field("VM", vm, "other_config")?.clone();
    let Some(spec) = other.get_str("disks").map(str::to_owned) else {
        return Ok(());
    };
    let disks = parse_provision(&spec)
        .map_err(|e| errors::value_not_supported("other_config:disks", &spec, &e))?;
    for d in disks {
        let sr = if d.sr.is_empty() {
            let default = st.db.str_field("pool", &st.pool, "default_SR")?;
            if default == NULL_REF {
                return Err(errors::operation_not_allowed(
                    "VM.provision: the pool has no default SR; set pool.default_SR",
                ));
            }
            default
        } else {
            st.db.by_uuid("SR", &d.sr)?
        };
        let name = format!("{} {}", st.db.str_field("VM", vm, "name_label")?, d.device);
        let vdi = vdi::create_vdi(st, &name, &sr, d.size, &d.ty, None)?;
        let spec = VbdSpec {
            userdevice: d.device,
            ty: "Disk".into(),
            mode: "RW".into(),
            bootable: d.bootable,
            empty: false,
        };
        vbd::create_vbd(st, vm, &vdi, &spec)?;
    }
    st.db.update("VM", vm, |rec| {
        if let Some(Value::Struct(m)) = rec.get_mut("other_config") {
            m.remove("disks");
        }
    })
}

struct ProvisionDisk {
    device: String,
    size: i64,
    sr: String,
    bootable: bool,
    ty: String,
}

fn parse_provision(xml: &str) -> Result<Vec<ProvisionDisk>, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == "disk" => {
                let mut d = ProvisionDisk {
                    device: "0".into(),
                    size: 0,
                    sr: String::new(),
                    bootable: false,
                    ty: "system".into(),
                };
                for a in e.attributes() {
                    let a = a.map_err(|e| e.to_string())?;
                    let v = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| e.to_string())?
                        .into_owned();
                    match a.key.as_ref() {
                        "device" => d.device = v,
                        "size" => d.size = v.parse().map_err(|_| format!("bad size {v:?}"))?,
                        "sr" => d.sr = v,
                        "bootable" => d.bootable = v == "true",
                        "type" => d.ty = v,
                        _ => {}
                    }
                }
                out.push(d);
            }
            Event::Eof => return Ok(out),
            _ => {}
        }
    }
}

fn next_domid(st: &mut State) -> i64 {
    let d = st.next_domid;
    st.next_domid += 1;
    d
}

/// The operation a power call is (`VM.clean_shutdown` → `clean_shutdown`), as xapi's
/// `vm_operations` name them.
fn op_of(method: &str) -> &str {
    method.trim_start_matches("VM.")
}

/// xapi_vm_lifecycle.ml `check_operation_error`, its first check, made before the power
/// state's: an operation the VM's `blocked_operations` lists is refused with
/// `OPERATION_BLOCKED [vm, reason]`. xapi makes it for every operation it runs through
/// `with_vm_operation` (message_forwarding.ml): here start, start_on, the shutdowns and
/// reboots, snapshot, clone, copy, provision, destroy, changing_memory_limits and
/// make_into_template.
pub(crate) fn check_not_blocked(st: &State, vm: &str, op: &str) -> ApiResult<()> {
    let blocked = st.db.field("VM", vm, "blocked_operations")?;
    match blocked.get_str(op) {
        Some(reason) => Err(errors::operation_blocked(vm, reason)),
        None => Ok(()),
    }
}

/// Starts a halted VM on a host that sees all its disks' SRs: its `affinity` host when it
/// can, else one picked round-robin; `NO_HOSTS_AVAILABLE` when none can (xapi's
/// `choose_host_for_vm`, xen-api `ocaml/xapi/xapi_vm_helpers.ml`).
fn start_vm(ctx: &mut Ctx<'_>, vm: &str, paused: bool) -> ApiResult<()> {
    let able: Vec<Ref> = ctx
        .st
        .hosts()
        .into_iter()
        .filter(|h| missing_sr(ctx.st, vm, h).is_ok_and(|m| m.is_none()))
        .collect();
    if able.is_empty() {
        return Err(errors::no_hosts_available());
    }
    let affinity = ctx.st.db.str_field("VM", vm, "affinity")?;
    let pick = if able.contains(&affinity) {
        affinity
    } else {
        able[(ctx.st.next_domid as usize) % able.len()].clone()
    };
    start_on(ctx.st, vm, &pick, paused)
}

/// The first SR of the VM's disks that `host` does not see (no plugged PBD there), as
/// xapi_vm_helpers.ml `assert_can_see_SRs` looks for it.
fn missing_sr(st: &State, vm: &str, host: &str) -> ApiResult<Option<Ref>> {
    for b in st.db.refs_field("VM", vm, "VBDs")? {
        let vdi = st.db.str_field("VBD", &b, "VDI")?;
        if vdi == NULL_REF || !st.db.exists("VDI", &vdi) {
            continue;
        }
        let sr = st.db.str_field("VDI", &vdi, "SR")?;
        if !super::host_sees(st, host, &sr) {
            return Ok(Some(sr));
        }
    }
    Ok(None)
}

/// Starts a halted VM on `host`: attaches its devices and reports guest metrics. The host
/// must see every disk's SR (`VM_REQUIRES_SR [vm, sr]`, xapi_vm_helpers.ml).
/// xapi_vm_lifecycle.ml `check_operation_error`: a template (that is not a snapshot)
/// refuses `op` with `VM_IS_TEMPLATE [vm, op]` (`check_template`), a snapshot with
/// `VM_IS_SNAPSHOT [vm, op]` (`check_snapshot`); neither allows a start.
fn check_startable(st: &State, vm: &str, op: &str) -> ApiResult<()> {
    let rec = st.db.get("VM", vm)?;
    let flag = |f: &str| rec.get(f).and_then(Value::as_bool).unwrap_or(false);
    if flag("is_a_snapshot") {
        return Err(errors::vm_is_snapshot(vm, op));
    }
    if flag("is_a_template") {
        return Err(errors::vm_is_template(vm, op));
    }
    Ok(())
}

pub(crate) fn start_on(st: &mut State, vm: &str, host: &str, paused: bool) -> ApiResult<()> {
    let rec = st.db.get("VM", vm)?.clone();
    require_state(st, vm, "Halted")?;
    if let Some(sr) = missing_sr(st, vm, host)? {
        return Err(errors::vm_requires_sr(vm, &sr));
    }
    let vbds = st.db.refs_field("VM", vm, "VBDs")?;
    for b in &vbds {
        vbd::check_attachable(st, b)?;
    }
    let domid = next_domid(st);
    for b in &vbds {
        vbd::set_attached(st, b, true)?;
    }
    for v in st.db.refs_field("VM", vm, "VIFs")? {
        st.db.set("VIF", &v, "currently_attached", true)?;
    }
    st.db.update("VM", vm, |rec| {
        let state = if paused { "Paused" } else { "Running" };
        rec.insert("power_state".into(), state.into());
        rec.insert("resident_on".into(), host.into());
        rec.insert("domid".into(), Value::Int(domid));
    })?;
    st.db.add_to_set("host", host, "resident_VMs", vm)?;
    // A guest the simulator runs reports its own metrics; the others have tools that
    // report at once.
    let runs_process = abd::is_abd(&rec) && st.abd.is_some();
    if !runs_process {
        let ip = format!("10.0.{}.{}", (domid / 250) % 256, domid % 250 + 2);
        guest_agent::invented(st, vm, &ip)?;
    }
    if abd::is_abd(&rec) {
        abd::notify(
            st,
            abd::Action::Start {
                vm: vm.to_owned(),
                respawn: false,
            },
        );
    }
    Ok(())
}

/// Stops a VM: detaches its devices and drops its guest metrics.
fn stop_vm(st: &mut State, vm: &str) -> ApiResult<()> {
    for b in st.db.refs_field("VM", vm, "VBDs")? {
        vbd::set_attached(st, &b, false)?;
    }
    for v in st.db.refs_field("VM", vm, "VIFs")? {
        st.db.set("VIF", &v, "currently_attached", false)?;
    }
    let host = st.db.str_field("VM", vm, "resident_on")?;
    st.db.remove_from_set("host", &host, "resident_VMs", vm);
    guest_agent::forget(st, vm)?;
    st.db.update("VM", vm, |rec| {
        rec.insert("power_state".into(), "Halted".into());
        rec.insert("resident_on".into(), null());
        rec.insert("domid".into(), Value::Int(-1));
    })
}

fn destroy_vm(st: &mut State, vm: &str) -> ApiResult<()> {
    let rec = st.db.get("VM", vm)?.clone();
    if rec.get("is_control_domain").and_then(Value::as_bool) == Some(true) {
        return Err(errors::operation_not_allowed(
            "a control domain cannot be destroyed",
        ));
    }
    require_state(st, vm, "Halted")?;
    for b in st.db.refs_field("VM", vm, "VBDs")? {
        vbd::remove_vbd(st, &b)?;
    }
    for v in st.db.refs_field("VM", vm, "VIFs")? {
        super::network::remove_vif(st, &v)?;
    }
    st.db.remove("VM", vm)?;
    if let Some(parent) = rec.get("snapshot_of").and_then(Value::as_str) {
        st.db.remove_from_set("VM", parent, "snapshots", vm);
    }
    Ok(())
}
