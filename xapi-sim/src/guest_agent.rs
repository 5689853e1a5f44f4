//! A guest's own reports, as xapi's guest agent reads them from xenstore
//! (xen-api `ocaml/xapi/xapi_guest_agent.ml`): `VM_guest_metrics` exists once the guest
//! has reported, and `can_use_hotplug_vbd`/`_vif` are the tristates of
//! `feature/hotplug/vbd` and `feature/hotplug/vif` ("1" yes, "0" no, absent unspecified).
//!
//! Ordinary simulated guests have no process: they start with the metrics of a guest whose
//! PV tools report at once ([`invented`]), unless a test removed their tools
//! ([`crate::knobs::SimKnobs::no_guest_tools`]). Guests the simulator runs (ABDs, with an
//! ABD backend) report for themselves through [`guest_write`].

use a3_shared::xapi_wire::Value;

use crate::clock;
use crate::errors::ApiResult;
use crate::model::{new_ref, new_uuid, null, vm as vm_model};
use crate::state::State;

/// The domain directories a guest may write, as xenopsd creates them writable for the
/// guest (xen-api `ocaml/xenopsd/xc/domain.ml`, `mksubdirs dom_path … rwperm`).
const GUEST_WRITABLE: &[&str] = &[
    "feature",
    "error",
    "drivers",
    "control",
    "attr",
    "xenserver",
    "data",
    "messages",
    "vm-data",
    "hvmloader",
    "rrd",
];

/// Why a guest's xenstore write is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    /// Outside the nodes the guest may write (`EACCES`).
    Denied,
    /// The VM is gone (`ENOENT`).
    NoVm,
}

/// A guest's write of `value` at `path` (relative to its domain's home). `vm-data/…` lands
/// in `VM.xenstore_data`; `feature/hotplug/{vbd,vif}` updates its guest metrics; other
/// guest-writable nodes are accepted and not kept (nothing simulated reads them).
pub fn guest_write(st: &mut State, vm: &str, path: &str, value: &str) -> Result<(), WriteError> {
    let top = path.split('/').next().unwrap_or_default();
    if !GUEST_WRITABLE.contains(&top) || path.split('/').any(|p| p.is_empty() || p == "..") {
        return Err(WriteError::Denied);
    }
    if path.starts_with("vm-data/") {
        return st
            .db
            .update("VM", vm, |rec| {
                if let Some(Value::Struct(m)) = rec.get_mut("xenstore_data") {
                    m.insert(path.to_owned(), Value::from(value));
                }
            })
            .map_err(|_| WriteError::NoVm);
    }
    let field = match path {
        "feature/hotplug/vbd" => "can_use_hotplug_vbd",
        "feature/hotplug/vif" => "can_use_hotplug_vif",
        _ => return st.db.get("VM", vm).map(drop).map_err(|_| WriteError::NoVm),
    };
    let gm = ensure_metrics(st, vm).map_err(|_| WriteError::NoVm)?;
    st.db
        .update("VM_guest_metrics", &gm, |rec| {
            rec.insert(field.into(), tristate(value).into());
            rec.insert(
                "last_updated".into(),
                Value::DateTime(clock::xapi_datetime(clock::unix_now())),
            );
        })
        .map_err(|_| WriteError::NoVm)
}

/// xapi_guest_agent.ml's `get_tristate`.
fn tristate(value: &str) -> &'static str {
    match value {
        "1" => "yes",
        "0" => "no",
        _ => "unspecified",
    }
}

/// The VM's guest metrics, created empty (nothing reported yet) when it has none.
fn ensure_metrics(st: &mut State, vm: &str) -> ApiResult<String> {
    let gm = st.db.str_field("VM", vm, "guest_metrics")?;
    if st.db.exists("VM_guest_metrics", &gm) {
        return Ok(gm);
    }
    let gm = new_ref();
    st.db.insert(
        "VM_guest_metrics",
        gm.clone(),
        vm_model::reported_guest_metrics(&new_uuid(), clock::unix_now()),
    );
    st.db.set("VM", vm, "guest_metrics", gm.clone())?;
    Ok(gm)
}

/// Gives a started guest without a process the metrics of PV tools that report at once,
/// with `ip` on its first VIF; nothing when a test removed its tools.
pub fn invented(st: &mut State, vm: &str, ip: &str) -> ApiResult<()> {
    if st.knobs.no_guest_tools.contains(vm) {
        return Ok(());
    }
    let gm = new_ref();
    st.db.insert(
        "VM_guest_metrics",
        gm.clone(),
        vm_model::guest_metrics(&new_uuid(), ip, clock::unix_now()),
    );
    st.db.set("VM", vm, "guest_metrics", gm)
}

/// Drops a VM's guest metrics (its guest stopped, or lost its tools).
pub fn forget(st: &mut State, vm: &str) -> ApiResult<()> {
    let gm = st.db.str_field("VM", vm, "guest_metrics")?;
    if st.db.exists("VM_guest_metrics", &gm) {
        st.db.remove("VM_guest_metrics", &gm)?;
    }
    st.db.set("VM", vm, "guest_metrics", null())
}
