//! `SR.*` and `PBD.*`.
//!
//! Two kinds of SR:
//! - the [`LOCAL_TYPES`] keep their VDIs in the state directory, whatever their type says;
//! - `nfs` really talks NFSv3 to `device_config:server` ([`crate::nfs_client`]), with the
//!   semantics of XCP-ng's NFSSR driver: the SR is the directory `<serverpath>/<sr-uuid>/`
//!   on the export, each VDI the dynamic VHD `<vdi-uuid>.vhd` in it. `SR.create` mounts
//!   the export, creates the directory, then creates and plugs one PBD per host (shared);
//!   `PBD.plug` mounts (failing with `SR_BACKEND_FAILURE_73`, "NFS mount error", naming
//!   the server and export, when it cannot), `PBD.unplug` unmounts (refused with
//!   `VDI_IN_USE` while a running VM on that host has one of its disks attached, as xapi
//!   does), `SR.scan` introduces
//!   the VHDs it does not know and forgets the VDIs whose file is gone. VDI operations need
//!   the master's PBD plugged (`SR_NO_PBDS` otherwise), as xapi runs them on the master.
//!
//! Any other type fails as an SR with an unknown driver does on a host without it.

use a3_shared::xapi_wire::Value;

use super::{Table, params, vdi, void};
use crate::disks::{DiskError, Placement};
use crate::errors::{self, ApiError, ApiResult};
use crate::file_store::FileStore;
use crate::model::{Ref, new_ref, new_uuid, storage};
use crate::nfs_client::{MountError, NfsMount, NfsTarget};
use crate::state::State;

/// The type of the SRs that live on an NFS export.
pub const NFS_TYPE: &str = "nfs";

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
        if let Placement::Vhd(uuid) = placement(ctx.st, &sr)? {
            scan_vhds(ctx.st, &sr, &uuid)?;
        }
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
            let nfs = ctx.st.db.str_field("SR", &sr, "type")? == NFS_TYPE;
            if destroy && nfs {
                destroy_nfs_content(ctx.st, &sr)?;
            }
            for v in ctx.st.db.refs_field("SR", &sr, "VDIs")? {
                if nfs {
                    forget_vdi(ctx.st, &v)?;
                } else if destroy {
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
            let sr = ctx.st.db.str_field("PBD", &pbd, "SR")?;
            if !on {
                let in_use = active_vdis(ctx.st, &pbd, &sr)?;
                if !in_use.is_empty() {
                    return Err(errors::vdis_in_use(&in_use));
                }
            }
            if ctx.st.db.str_field("SR", &sr, "type")? == NFS_TYPE {
                if on {
                    mount_pbd(ctx.st, &pbd)?;
                } else {
                    ctx.st.disks.unplug(&pbd);
                }
            }
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

/// The SR's disks attached to running VMs on the PBD's host: XAPI refuses to unplug the
/// PBD under them (`VDI_IN_USE` with their refs, xapi_pbd.ml).
fn active_vdis(st: &State, pbd: &str, sr: &str) -> ApiResult<Vec<Ref>> {
    let host = st.db.str_field("PBD", pbd, "host")?;
    let mut out = Vec::new();
    for (_, vbd) in st.db.table("VBD") {
        let text = |f: &str| vbd.get(f).and_then(Value::as_str).unwrap_or("");
        let attached = vbd.get("currently_attached").and_then(Value::as_bool) == Some(true);
        let vdi = text("VDI");
        if !attached || !st.db.exists("VDI", vdi) {
            continue;
        }
        let on_sr = st.db.str_field("VDI", vdi, "SR")? == sr;
        let vm = text("VM");
        let here = st.db.exists("VM", vm) && st.db.str_field("VM", vm, "resident_on")? == host;
        if on_sr && here && !out.iter().any(|v: &Ref| v == vdi) {
            out.push(vdi.to_owned());
        }
    }
    Ok(out)
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
    if ty == NFS_TYPE {
        return nfs_sr_create(st, host, name, content_type, shared, size, device_config);
    }
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

/// `SR_BACKEND_FAILURE_73` ("NFS mount error"), as NFSSR raises it, naming the server, the
/// export and why.
fn nfs_mount_error(e: &MountError) -> ApiError {
    ApiError {
        code: "SR_BACKEND_FAILURE_73",
        params: vec![
            String::new(),
            format!(
                "NFS mount error [opterr=mount of {}:{} failed: {}]",
                e.target.server, e.target.export, e.reason
            ),
            String::new(),
        ],
    }
}

/// A backend failure with the SM's generic shape, for errors that are not mount errors.
fn backend_failure(msg: &str) -> ApiError {
    errors::sr_backend_failure("SR_BACKEND_FAILURE", "", msg)
}

/// `SR_NO_PBDS [sr]`: the SR has no attached PBD where xapi would run the operation.
fn sr_no_pbds(sr: &str) -> ApiError {
    ApiError {
        code: "SR_NO_PBDS",
        params: vec![sr.to_owned()],
    }
}

/// The NFS server and export a `device_config` names.
fn nfs_target(device_config: &Value) -> ApiResult<NfsTarget> {
    let get = |k: &str| device_config.get_str(k).unwrap_or("").trim().to_owned();
    let (server, export) = (get("server"), get("serverpath"));
    if server.is_empty() {
        return Err(backend_failure(
            "The request is missing the server parameter: set device_config:server",
        ));
    }
    if server.parse::<std::net::IpAddr>().is_err() {
        return Err(backend_failure(&format!(
            "device_config:server {server:?} is not an IP address (the simulator resolves no names)"
        )));
    }
    if !export.starts_with('/') {
        return Err(backend_failure(&format!(
            "device_config:serverpath {export:?} must be an absolute export path, e.g. /alike"
        )));
    }
    Ok(NfsTarget { server, export })
}

/// Mounts the NFS export of a PBD (a no-op when this process already has its mount).
fn mount_pbd(st: &mut State, pbd: &str) -> ApiResult<()> {
    if st.disks.is_mounted(pbd) {
        return Ok(());
    }
    let target = nfs_target(st.db.field("PBD", pbd, "device_config")?)?;
    let sr = st.db.str_field("PBD", pbd, "SR")?;
    let sr_uuid = st.db.str_field("SR", &sr, "uuid")?;
    st.disks
        .plug_nfs(pbd, &sr_uuid, &target)
        .map_err(|e| nfs_mount_error(&e))
}

/// Whether `host` sees `sr`: it has a plugged PBD of it (importexport.ml
/// `check_sr_availability`).
pub(crate) fn host_sees(st: &State, host: &str, sr: &str) -> bool {
    st.db.refs_field("SR", sr, "PBDs").is_ok_and(|pbds| {
        pbds.iter().any(|p| {
            st.db.str_field("PBD", p, "host").is_ok_and(|h| h == host)
                && st
                    .db
                    .field("PBD", p, "currently_attached")
                    .is_ok_and(|v| v.as_bool() == Some(true))
        })
    })
}

/// A host that sees `sr`, in address order (importexport.ml `find_host_for_sr`).
pub(crate) fn host_seeing(st: &State, sr: &str) -> Option<Ref> {
    st.hosts().into_iter().find(|h| host_sees(st, h, sr))
}

/// Where VDIs of `sr` keep their content. For an NFS SR the master's PBD must be plugged
/// (`SR_NO_PBDS` otherwise); its mount is made live again if a restart dropped it.
pub(crate) fn placement(st: &mut State, sr: &str) -> ApiResult<Placement> {
    if st.db.str_field("SR", sr, "type")? != NFS_TYPE {
        return Ok(Placement::Local);
    }
    let master = st.master()?;
    let pbd = st
        .db
        .refs_field("SR", sr, "PBDs")?
        .into_iter()
        .find(|p| {
            st.db.str_field("PBD", p, "host").is_ok_and(|h| h == master)
                && st
                    .db
                    .field("PBD", p, "currently_attached")
                    .is_ok_and(|v| v.as_bool() == Some(true))
        })
        .ok_or_else(|| sr_no_pbds(sr))?;
    mount_pbd(st, &pbd)?;
    Ok(Placement::Vhd(st.db.str_field("SR", sr, "uuid")?))
}

/// `SR.create` of type `nfs`: NFSSR's create (mount, make `<serverpath>/<sr-uuid>/`), then
/// a PBD per host, each plugged. Nothing is left behind when a step fails.
fn nfs_sr_create(
    st: &mut State,
    host: &str,
    name: &str,
    content_type: &str,
    shared: bool,
    size: i64,
    device_config: Value,
) -> ApiResult<Ref> {
    let target = nfs_target(&device_config)?;
    let uuid = new_uuid();
    let probe = NfsMount::mount(&target).map_err(|e| nfs_mount_error(&e))?;
    if probe.list(&uuid).is_ok_and(|names| !names.is_empty()) {
        return Err(backend_failure(&format!(
            "SR directory {}/{uuid} already exists and is not empty",
            target.export
        )));
    }
    probe.mkdir(&uuid).map_err(|e| {
        backend_failure(&format!(
            "cannot create the SR directory {}/{uuid} on {}: {e}",
            target.export, target.server
        ))
    })?;
    let sr = new_ref();
    let size = if size > 0 { size } else { 1 << 40 };
    st.db.insert(
        "SR",
        sr.clone(),
        storage::sr(&uuid, name, NFS_TYPE, content_type, shared, size),
    );
    let hosts = if shared {
        st.hosts()
    } else {
        vec![host.to_owned()]
    };
    for h in hosts {
        let pbd = create_pbd(st, &h, &sr, device_config.clone(), false)?;
        let plugged =
            mount_pbd(st, &pbd).and_then(|()| st.db.set("PBD", &pbd, "currently_attached", true));
        if let Err(e) = plugged {
            for pbd in st.db.refs_field("SR", &sr, "PBDs")? {
                st.disks.unplug(&pbd);
                remove_pbd(st, &pbd)?;
            }
            st.db.remove("SR", &sr)?;
            let _ = probe.rmdir(&uuid);
            return Err(e);
        }
    }
    Ok(sr)
}

/// `SR.scan` of an NFS SR: VHDs nobody knows become VDIs; VDIs whose file vanished go.
fn scan_vhds(st: &mut State, sr: &str, sr_uuid: &str) -> ApiResult<()> {
    let found = st
        .disks
        .list_vhds(sr_uuid)
        .map_err(|e| backend_failure(&e.to_string()))?;
    for v in st.db.refs_field("SR", sr, "VDIs")? {
        let uuid = vdi::uuid_of(st, &v)?;
        let keeps_data = st.disks.get(&uuid).is_some_and(|d| !d.data_destroyed);
        if keeps_data && !found.contains(&uuid) {
            forget_vdi(st, &v)?;
        }
    }
    for uuid in found {
        if st.db.by_uuid("VDI", &uuid).is_ok() {
            continue;
        }
        let size = match st.disks.adopt_vhd(&uuid, sr_uuid) {
            Ok(size) => size,
            Err(e @ DiskError::Vhd { .. }) => {
                // As the SM does, a file that is not a usable VHD is skipped, not fatal.
                tracing::warn!("SR.scan of {sr}: skipping {uuid}.vhd: {e}");
                continue;
            }
            Err(e) => return Err(backend_failure(&e.to_string())),
        };
        let r = new_ref();
        st.db.insert(
            "VDI",
            r.clone(),
            storage::vdi(&uuid, "", sr, size as i64, "user"),
        );
        st.db.add_to_set("SR", sr, "VDIs", &r)?;
    }
    Ok(())
}

/// Drops a VDI's record (and the store's entry) but not its content, as `SR.forget` and
/// `SR.scan` do.
fn forget_vdi(st: &mut State, v: &str) -> ApiResult<()> {
    for vbd in st.db.refs_field("VDI", v, "VBDs")? {
        super::vbd::remove_vbd(st, &vbd)?;
    }
    let uuid = vdi::uuid_of(st, v)?;
    let rec = st.db.remove("VDI", v)?;
    st.disks.forget(&uuid);
    if let Some(sr) = rec.get("SR").and_then(Value::as_str) {
        st.db.remove_from_set("SR", sr, "VDIs", v);
    }
    Ok(())
}

/// `SR.destroy` of an NFS SR (its PBDs are unplugged): mounts the export as the SM does
/// for `sr_delete`, deletes the VHDs and the SR directory, and unmounts.
fn destroy_nfs_content(st: &mut State, sr: &str) -> ApiResult<()> {
    let pbd = st
        .db
        .refs_field("SR", sr, "PBDs")?
        .into_iter()
        .next()
        .ok_or_else(|| sr_no_pbds(sr))?;
    let target = nfs_target(st.db.field("PBD", &pbd, "device_config")?)?;
    let uuid = st.db.str_field("SR", sr, "uuid")?;
    let mount = NfsMount::mount(&target).map_err(|e| nfs_mount_error(&e))?;
    let names = mount
        .list(&uuid)
        .map_err(|e| backend_failure(&e.to_string()))?;
    for n in names.iter().filter(|n| n.ends_with(".vhd")) {
        mount
            .remove(&format!("{uuid}/{n}"))
            .map_err(|e| backend_failure(&e.to_string()))?;
    }
    mount
        .rmdir(&uuid)
        .map_err(|e| backend_failure(&e.to_string()))
}
