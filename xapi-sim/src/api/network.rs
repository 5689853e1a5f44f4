//! `VIF.*`: create, destroy, plug, unplug.

use a3_shared::xapi_wire::Value;

use super::{Table, params, void};
use crate::errors::{self, ApiResult};
use crate::model::{Ref, network, new_ref, new_uuid};
use crate::state::State;

pub(super) fn register(t: &mut Table) {
    t.add("VIF.create", 1, 0, |ctx, p| {
        let rec = params::record(p, 1, "args")?;
        let get = |f: &str| -> ApiResult<String> {
            Ok(params::field(rec, f, Value::from(""))?
                .as_str()
                .unwrap_or("")
                .to_owned())
        };
        let (vm, net, device, mac) = (get("VM")?, get("network")?, get("device")?, get("MAC")?);
        let r = create_vif(ctx.st, &vm, &net, &device, &mac)?;
        let other_config = params::field(rec, "other_config", Value::empty_struct())?;
        ctx.st.db.set("VIF", &r, "other_config", other_config)?;
        Ok(Value::from(r))
    });
    t.add("VIF.destroy", 1, 0, |ctx, p| {
        let vif = params::object(ctx.st, p, 1, "VIF")?;
        if ctx
            .st
            .db
            .field("VIF", &vif, "currently_attached")?
            .as_bool()
            == Some(true)
        {
            return Err(errors::operation_not_allowed(&format!(
                "VIF '{vif}' still attached; unplug it first"
            )));
        }
        remove_vif(ctx.st, &vif)?;
        Ok(void())
    });
    for (name, on) in [("VIF.plug", true), ("VIF.unplug", false)] {
        t.add(name, 1, 0, move |ctx, p| {
            let vif = params::object(ctx.st, p, 1, "VIF")?;
            let vm = ctx.st.db.str_field("VIF", &vif, "VM")?;
            let state = ctx.st.db.str_field("VM", &vm, "power_state")?;
            if state != "Running" {
                return Err(errors::vm_bad_power_state(&vm, "Running", &state));
            }
            let attached = ctx
                .st
                .db
                .field("VIF", &vif, "currently_attached")?
                .as_bool()
                == Some(true);
            match (on, attached) {
                (true, true) => return Err(errors::device_already_attached(&vif)),
                (false, false) => return Err(errors::device_already_detached(&vif)),
                _ => {}
            }
            ctx.st.db.set("VIF", &vif, "currently_attached", on)?;
            Ok(void())
        });
    }
}

/// Creates a detached VIF; an empty `mac` gets a generated one.
pub(crate) fn create_vif(
    st: &mut State,
    vm: &str,
    net: &str,
    device: &str,
    mac: &str,
) -> ApiResult<Ref> {
    st.db.get("VM", vm)?;
    st.db.get("network", net)?;
    for other in st.db.refs_field("VM", vm, "VIFs")? {
        if st.db.str_field("VIF", &other, "device")? == device {
            return Err(errors::device_already_exists(device));
        }
    }
    let uuid = new_uuid();
    let mac = if mac.is_empty() {
        network::mac_from(&uuid)
    } else {
        mac.to_owned()
    };
    let r = new_ref();
    st.db
        .insert("VIF", r.clone(), network::vif(&uuid, device, vm, net, &mac));
    st.db.add_to_set("VM", vm, "VIFs", &r)?;
    st.db.add_to_set("network", net, "VIFs", &r)?;
    Ok(r)
}

/// Removes a VIF record and its links.
pub(crate) fn remove_vif(st: &mut State, vif: &str) -> ApiResult<()> {
    let rec = st.db.remove("VIF", vif)?;
    if let Some(vm) = rec.get("VM").and_then(Value::as_str) {
        st.db.remove_from_set("VM", vm, "VIFs", vif);
    }
    if let Some(net) = rec.get("network").and_then(Value::as_str) {
        st.db.remove_from_set("network", net, "VIFs", vif);
    }
    Ok(())
}
