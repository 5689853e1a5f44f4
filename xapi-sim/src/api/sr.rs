//! `SR.*` and `PBD.*`.
//!
//! Every SR type the simulator serves keeps its VDIs in the state directory, whatever its
//! type says. The types are listed in [`LOCAL_TYPES`]; `nfs` is not among them yet, so it
//! fails as an SR with an unknown driver does on a host without that driver. An NFS type
//! that mounts a real export belongs in [`sr_create`]'s type match.

use a3_shared::xapi_wire::Value;

use super::{Table, params, vdi, void};
use crate::errors::{self, ApiResult};
use crate::model::{Ref, new_ref, new_uuid, storage};
use crate::state::State;

/// SR types whose VDIs live in the state directory.
pub const LOCAL_TYPES: &[&str] = &["ext", "lvm", "file", "dummy", "iso", "udev"];

pub(super) fn register(t: &mut Table) {
    t.add("SR.create", 9, 1, |ctx, p| {
        let host = params::object(ctx.st, p, 1, "host")?;
        let device_config = params::record(p, 2, "device_config")?.clone();
        let size = params::int(p, 3, "physical_size")?;
        let name = params::string(p, 4, "name_label")?.to_owned();
        let desc = params::string(p, 5, "name_description")?.to_owned();
        let ty = params::string(p, 6, "type")?.to_owned();
        let content_type = params::string(p, 7, "content_type")?.to_owned();
        let shared = params::boolean(p, 8, "shared")?;
        let sr = sr_create(
            ctx.st,
            &host,
            &ty,
            &name,
            &content_type,
            shared,
            size,
            device_config.into(),
        )?;
        ctx.st.db.set("SR", &sr, "name_description", desc)?;
        Ok(Value::from(sr))
    });
    t.add("SR.introduce", 7, 1, |ctx, p| {
        let uuid = params::string(p, 1, "uuid")?.to_owned();
        let name = params::string(p, 2, "name_label")?.to_owned();
        let desc = params::string(p, 3, "name_description")?.to_owned();
        let ty = params::string(p, 4, "type")?.to_owned();
        let content_type = params::string(p, 5, "content_type")?.to_owned();
        let shared = params::boolean(p, 6, "shared")?;
        if ctx.st.db.by_uuid("SR", &uuid).is_ok() {
            return Err(errors::operation_not_allowed(&format!(
                "SR {uuid} already exists"
            )));
        }
        let r = new_ref();
        let mut rec = storage::sr(&uuid, &name, &ty, &content_type, shared, 0);
        rec.insert("name_description".into(), desc.into());
        ctx.st.db.insert("SR", r.clone(), rec);
        Ok(Value::from(r))
    });
    t.add("SR.scan", 1, 0, |ctx, p| {
        let sr = params::object(ctx.st, p, 1, "SR")?;
        for v in ctx.st.db.refs_field("SR", &sr, "VDIs")? {
            vdi::refresh_utilisation(ctx.st, &v)?;
        }
        Ok(void())
    });
    for name in ["SR.forget", "SR.destroy"] {
        let destroy = name == "SR.destroy";
        t.add(name, 1, 0, move |ctx, p| {
            let sr = params::object(ctx.st, p, 1, "SR")?;
            for pbd in ctx.st.db.refs_field("SR", &sr, "PBDs")? {
                if ctx
                    .st
                    .db
                    .field("PBD", &pbd, "currently_attached")?
                    .as_bool()
                    == Some(true)
                {
                    return Err(errors::operation_not_allowed(&format!(
                        "SR {sr} still has plugged PBD {pbd}; unplug it first"
                    )));
                }
            }
            for v in ctx.st.db.refs_field("SR", &sr, "VDIs")? {
                if destroy {
                    vdi::destroy_vdi(ctx.st, &v)?;
                } else {
                    ctx.st.db.remove("VDI", &v)?;
                }
            }
            for pbd in ctx.st.db.refs_field("SR", &sr, "PBDs")? {
                remove_pbd(ctx.st, &pbd)?;
            }
            ctx.st.db.remove("SR", &sr)?;
            Ok(void())
        });
    }
    t.add("PBD.create", 1, 0, |ctx, p| {
        let rec = params::record(p, 1, "args")?;
        let host = params::field(rec, "host", Value::from(""))?;
        let sr = params::field(rec, "SR", Value::from(""))?;
        let (host, sr) = (host.as_str().unwrap_or(""), sr.as_str().unwrap_or(""));
        ctx.st.db.get("host", host)?;
        ctx.st.db.get("SR", sr)?;
        let device_config = params::field(rec, "device_config", Value::empty_struct())?;
        let r = create_pbd(ctx.st, host, sr, device_config, false)?;
        Ok(Value::from(r))
    });
    for (name, on) in [("PBD.plug", true), ("PBD.unplug", false)] {
        t.add(name, 1, 0, move |ctx, p| {
            let pbd = params::object(ctx.st, p, 1, "PBD")?;
            ctx.st.db.set("PBD", &pbd, "currently_attached", on)?;
            Ok(void())
        });
    }
    t.add("PBD.destroy", 1, 0, |ctx, p| {
        let pbd = params::object(ctx.st, p, 1, "PBD")?;
        if ctx
            .st
            .db
            .field("PBD", &pbd, "currently_attached")?
            .as_bool()
            == Some(true)
        {
            return Err(errors::operation_not_allowed(&format!(
                "PBD {pbd} is plugged; unplug it first"
            )));
        }
        remove_pbd(ctx.st, &pbd)?;
        Ok(void())
    });
}

/// `SR.create`: the SR and a plugged PBD on `host` (on every host when shared).
#[allow(clippy::too_many_arguments)]
fn sr_create(
    st: &mut State,
    host: &str,
    ty: &str,
    name: &str,
    content_type: &str,
    shared: bool,
    size: i64,
    device_config: Value,
) -> ApiResult<Ref> {
    if !LOCAL_TYPES.contains(&ty) {
        return Err(errors::sr_unknown_driver(ty));
    }
    let sr = new_ref();
    let size = if size > 0 { size } else { 1 << 40 };
    st.db.insert(
        "SR",
        sr.clone(),
        storage::sr(&new_uuid(), name, ty, content_type, shared, size),
    );
    let hosts = if shared {
        st.hosts()
    } else {
        vec![host.to_owned()]
    };
    for h in hosts {
        create_pbd(st, &h, &sr, device_config.clone(), true)?;
    }
    Ok(sr)
}

/// An SR as a fresh XCP-ng install has them (a host's local SR, the Tools ISO SR):
/// plugged on `host`, or on every host when shared.
pub(crate) fn create_sr(
    st: &mut State,
    host: &str,
    ty: &str,
    name: &str,
    content_type: &str,
    shared: bool,
) -> ApiResult<Ref> {
    let device_config: Value = [("location", "/var/run/sr-mount")].into_iter().collect();
    sr_create(
        st,
        host,
        ty,
        name,
        content_type,
        shared,
        1 << 40,
        device_config,
    )
}

fn create_pbd(
    st: &mut State,
    host: &str,
    sr: &str,
    device_config: Value,
    plugged: bool,
) -> ApiResult<Ref> {
    let r = new_ref();
    st.db.insert(
        "PBD",
        r.clone(),
        storage::pbd(&new_uuid(), host, sr, device_config, plugged),
    );
    st.db.add_to_set("SR", sr, "PBDs", &r)?;
    st.db.add_to_set("host", host, "PBDs", &r)?;
    Ok(r)
}

fn remove_pbd(st: &mut State, pbd: &str) -> ApiResult<()> {
    let rec = st.db.remove("PBD", pbd)?;
    if let Some(sr) = rec.get("SR").and_then(Value::as_str) {
        st.db.remove_from_set("SR", sr, "PBDs", pbd);
    }
    if let Some(host) = rec.get("host").and_then(Value::as_str) {
        st.db.remove_from_set("host", host, "PBDs", pbd);
    }
    Ok(())
}
