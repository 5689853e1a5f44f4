//! The XAPI calls of the pool workflow (template, ABDs, backup, restore, recovery, the A3
//! SR), one typed function per call, and helpers on raw records: these steps read fields
//! ([`super::records`] does not type) such as `other_config`, `snapshot_of` or
//! `platform`, and copy whole maps into a version's metadata. New objects are made with
//! the specs of [`super::create`].
//!
//! Nothing outside [`crate::xapi`] names an XAPI method: a call the workflow needs gets its
//! function here.
//!
//! Everything the A3 creates in a pool for a run carries its owner tag
//! ([`super::owner::RunTag`]), so that recovery after a crash finds it again.

use a3_shared::xapi_wire::{Struct, Value};

use super::owner::RUN_KEY;
use super::records::PoolRecord;
use super::{Session, XapiError};

/// `other_config` key naming the ABD a VM is.
pub const ABD_KEY: &str = "a3_abd";
/// `other_config` key that hides a VM from XenCenter.
pub const HIDE_KEY: &str = "HideFromXenCenter";
/// `other_config` key carrying the ABD template's version.
pub const TEMPLATE_VERSION_KEY: &str = "abd_template_version";
/// XAPI's null reference.
pub const NULL_REF: &str = "OpaqueRef:NULL";

/// A record as XAPI sent it.
pub type Record = Value;

/// Every object of `class` with its ref.
pub async fn all_records(s: &Session, class: &str) -> Result<Vec<(String, Record)>, XapiError> {
    let all = s.call(&format!("{class}.get_all_records"), &[]).await?;
    Ok(all
        .as_struct()
        .map(|m| m.iter().map(|(r, v)| (r.clone(), v.clone())).collect())
        .unwrap_or_default())
}

/// One object's record.
pub async fn record(s: &Session, class: &str, reference: &str) -> Result<Record, XapiError> {
    s.call(&format!("{class}.get_record"), &[Value::from(reference)])
        .await
}

/// The ref of the object of `class` with `uuid`.
pub async fn by_uuid(s: &Session, class: &str, uuid: &str) -> Result<String, XapiError> {
    let v = s
        .call(&format!("{class}.get_by_uuid"), &[Value::from(uuid)])
        .await?;
    Ok(v.as_str().unwrap_or_default().to_owned())
}

/// Calls a method whose arguments are all strings; returns its value.
async fn call(s: &Session, method: &str, args: &[&str]) -> Result<Value, XapiError> {
    let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
    s.call(method, &args).await
}

/// [`call`] through `Async.<method>` and its task, for calls that can outlast a request's
/// bound (snapshots, clones, starts, hot-plug, storage operations).
async fn call_slow(s: &Session, method: &str, args: &[&str]) -> Result<Value, XapiError> {
    let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
    s.call_async(method, &args).await
}

/// A call's answer as a ref.
pub(super) fn returns_ref(s: &Session, method: &str, v: Value) -> Result<String, XapiError> {
    v.as_str()
        .filter(|r| r.starts_with("OpaqueRef:"))
        .map(str::to_owned)
        .ok_or_else(|| unexpected(s, method, &format!("returned a {}, not a ref", v.kind())))
}

/// A string field ("" when absent).
pub fn text<'a>(rec: &'a Record, field: &str) -> &'a str {
    rec.get_str(field).unwrap_or("")
}

/// An integer field (0 when absent).
pub fn int(rec: &Record, field: &str) -> i64 {
    rec.get(field).and_then(Value::as_i64).unwrap_or(0)
}

/// A boolean field (false when absent).
pub fn flag(rec: &Record, field: &str) -> bool {
    rec.get(field).and_then(Value::as_bool).unwrap_or(false)
}

/// A set of refs.
pub fn refs(rec: &Record, field: &str) -> Vec<String> {
    rec.get(field).map(strings).unwrap_or_default()
}

/// The strings of an array value.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or(&[])
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// A key of a map field such as `other_config`.
pub fn map_key<'a>(rec: &'a Record, field: &str, key: &str) -> Option<&'a str> {
    rec.get(field)?.get_str(key)
}

/// A map field as string pairs.
pub fn string_map(rec: &Record, field: &str) -> Vec<(String, String)> {
    rec.get(field)
        .and_then(Value::as_struct)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A struct value from string pairs.
pub fn map_value<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Value {
    Value::Struct(
        pairs
            .iter()
            .map(|(k, v)| (k.as_ref().to_owned(), Value::from(v.as_ref())))
            .collect::<Struct>(),
    )
}

/// Sets `other_config[key] = value` on an object (replacing an earlier value).
pub async fn tag(
    s: &Session,
    class: &str,
    reference: &str,
    key: &str,
    value: &str,
) -> Result<(), XapiError> {
    // add_to_* refuses an existing key: remove first, ignoring "not there".
    let _ = untag(s, class, reference, key).await;
    call(
        s,
        &format!("{class}.add_to_other_config"),
        &[reference, key, value],
    )
    .await
    .map(drop)
}

/// Removes `other_config[key]` from an object.
pub async fn untag(s: &Session, class: &str, reference: &str, key: &str) -> Result<(), XapiError> {
    call(
        s,
        &format!("{class}.remove_from_other_config"),
        &[reference, key],
    )
    .await
    .map(drop)
}

/// The pool this session is on: its ref and record.
pub async fn the_pool(s: &Session) -> Result<(String, PoolRecord), XapiError> {
    s.get_all_records::<PoolRecord>()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| unexpected(s, "pool.get_all_records", "the host reports no pool"))
}

/// The pool's management network: the network of a management PIF, else the first
/// network with a bridge.
pub async fn management_network(s: &Session) -> Result<(String, Record), XapiError> {
    let networks = all_records(s, "network").await?;
    let pifs = all_records(s, "PIF").await.unwrap_or_default();
    let managed = pifs
        .iter()
        .find(|(_, p)| flag(p, "management"))
        .map(|(_, p)| text(p, "network").to_owned());
    if let Some(net) = managed
        && let Some(found) = networks.iter().find(|(r, _)| *r == net)
    {
        return Ok(found.clone());
    }
    networks
        .into_iter()
        .find(|(_, n)| !text(n, "bridge").is_empty())
        .ok_or_else(|| XapiError::Unexpected {
            host: s.endpoint().to_string(),
            method: "network.get_all_records".into(),
            detail: "the pool has no network with a bridge for the ABDs; create one".into(),
        })
}

/// Unplugs (when attached) and destroys a VBD; a VBD already gone is fine.
pub async fn remove_vbd(s: &Session, vbd: &str) -> Result<(), XapiError> {
    let rec = match record(s, "VBD", vbd).await {
        Ok(r) => r,
        Err(XapiError::HandleInvalid { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if flag(&rec, "currently_attached") {
        unplug_or_force(s, vbd).await?;
    }
    call(s, "VBD.destroy", &[vbd]).await.map(drop)
}

/// Clean `VBD.unplug` attempts before forcing: a guest may hold the device a moment.
const UNPLUG_TRIES: u32 = 3;
/// The pause between attempts.
const UNPLUG_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// `VBD.unplug`; when the guest rejects it (`DEVICE_DETACH_REJECTED`, xen-api
/// `ocaml/xapi/xapi_xenops.ml`), tries again, then `VBD.unplug_force`. Our VBDs are disks the
/// ABD only reads, so forcing them out loses nothing.
pub async fn unplug_or_force(s: &Session, vbd: &str) -> Result<(), XapiError> {
    for _ in 1..UNPLUG_TRIES {
        match vbd_unplug(s, vbd).await {
            Err(XapiError::Api { code, .. }) if code == "DEVICE_DETACH_REJECTED" => {
                tokio::time::sleep(UNPLUG_RETRY).await;
            }
            other => return other,
        }
    }
    match vbd_unplug(s, vbd).await {
        Err(XapiError::Api { code, .. }) if code == "DEVICE_DETACH_REJECTED" => {
            tracing::warn!(
                vbd,
                "the guest rejected {UNPLUG_TRIES} clean unplugs: forcing the VBD out"
            );
            call_slow(s, "VBD.unplug_force", &[vbd]).await.map(drop)
        }
        other => other,
    }
}

/// Stops (hard) and destroys a VM with its own disks, or only its VM record when
/// `keep_disks`. A VM already gone is fine. A disk plugged in for a run (its VBD carries
/// the owner tag: a snapshot disk or a restore target in an ABD) is not the VM's own, nor
/// is one that another VM still uses: those stay.
pub async fn destroy_vm(s: &Session, vm: &str, keep_disks: bool) -> Result<(), XapiError> {
    let rec = match record(s, "VM", vm).await {
        Ok(r) => r,
        Err(XapiError::HandleInvalid { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if text(&rec, "power_state") != "Halted" {
        vm_hard_shutdown(s, vm).await?;
    }
    let mut vdis = Vec::new();
    for vbd in refs(&rec, "VBDs") {
        if let Ok(b) = record(s, "VBD", &vbd).await
            && text(&b, "type") == "Disk"
            && text(&b, "VDI") != NULL_REF
            && map_key(&b, "other_config", RUN_KEY).is_none()
        {
            vdis.push(text(&b, "VDI").to_owned());
        }
    }
    call_slow(s, "VM.destroy", &[vm]).await?;
    if !keep_disks {
        for vdi in vdis {
            match record(s, "VDI", &vdi).await {
                Ok(r) if refs(&r, "VBDs").is_empty() => destroy_vdi(s, &vdi).await?,
                Ok(_) | Err(XapiError::HandleInvalid { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Destroys a VDI; one already gone is fine.
pub async fn destroy_vdi(s: &Session, vdi: &str) -> Result<(), XapiError> {
    match call_slow(s, "VDI.destroy", &[vdi]).await {
        Ok(_) | Err(XapiError::HandleInvalid { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `VM.snapshot`: the snapshot VM's ref.
/// `VM.snapshot`, leaving out the disks `ignore_vdis` names (sent only when there are
/// some: pools older than XCP-ng 8.3 lack the parameter).
pub async fn vm_snapshot(
    s: &Session,
    vm: &str,
    name: &str,
    ignore_vdis: &[String],
) -> Result<String, XapiError> {
    let mut args = vec![Value::from(vm), Value::from(name)];
    if !ignore_vdis.is_empty() {
        args.push(Value::Array(
            ignore_vdis
                .iter()
                .map(|v| Value::from(v.as_str()))
                .collect(),
        ));
    }
    let v = s.call_async("VM.snapshot", &args).await?;
    returns_ref(s, "VM.snapshot", v)
}

/// `VM.clone`: the clone's ref.
pub async fn vm_clone(s: &Session, vm: &str, name: &str) -> Result<String, XapiError> {
    let v = call_slow(s, "VM.clone", &[vm, name]).await?;
    returns_ref(s, "VM.clone", v)
}

/// `VM.start`, not paused, not forced.
pub async fn vm_start(s: &Session, vm: &str) -> Result<(), XapiError> {
    let args = [Value::from(vm), Value::Bool(false), Value::Bool(false)];
    s.call_async("VM.start", &args).await.map(drop)
}

/// `VM.start_on` `host`, not paused, not forced.
pub async fn vm_start_on(s: &Session, vm: &str, host: &str) -> Result<(), XapiError> {
    let args = [
        Value::from(vm),
        Value::from(host),
        Value::Bool(false),
        Value::Bool(false),
    ];
    s.call_async("VM.start_on", &args).await.map(drop)
}

/// `VM.hard_shutdown`.
pub async fn vm_hard_shutdown(s: &Session, vm: &str) -> Result<(), XapiError> {
    call_slow(s, "VM.hard_shutdown", &[vm]).await.map(drop)
}

/// `VM.add_to_blocked_operations`: xapi then refuses `op` on the VM with
/// `OPERATION_BLOCKED [vm, reason]` (xapi_vm_lifecycle.ml); `MAP_DUPLICATE_KEY` when `op`
/// is blocked already.
pub async fn vm_block(s: &Session, vm: &str, op: &str, reason: &str) -> Result<(), XapiError> {
    call(s, "VM.add_to_blocked_operations", &[vm, op, reason])
        .await
        .map(drop)
}

/// `VM.remove_from_blocked_operations`.
pub async fn vm_unblock(s: &Session, vm: &str, op: &str) -> Result<(), XapiError> {
    call(s, "VM.remove_from_blocked_operations", &[vm, op])
        .await
        .map(drop)
}

/// `VM.set_blocked_operations`: the whole map at once.
pub async fn vm_set_blocked(
    s: &Session,
    vm: &str,
    blocked: &[(String, String)],
) -> Result<(), XapiError> {
    let args = [Value::from(vm), map_value(blocked)];
    s.call("VM.set_blocked_operations", &args).await.map(drop)
}

/// `VM.set_is_a_template`.
pub async fn vm_set_is_a_template(s: &Session, vm: &str, value: bool) -> Result<(), XapiError> {
    s.call(
        "VM.set_is_a_template",
        &[Value::from(vm), Value::Bool(value)],
    )
    .await
    .map(drop)
}

/// `VM.set_memory_limits` with every limit at `bytes`.
pub async fn vm_set_memory(s: &Session, vm: &str, bytes: i64) -> Result<(), XapiError> {
    let m = Value::from(bytes.to_string());
    let args = [Value::from(vm), m.clone(), m.clone(), m.clone(), m];
    s.call("VM.set_memory_limits", &args).await.map(drop)
}

/// `VM.set_xenstore_data`: replaces the whole map.
pub async fn vm_set_xenstore_data(
    s: &Session,
    vm: &str,
    data: &[(String, String)],
) -> Result<(), XapiError> {
    s.call("VM.set_xenstore_data", &[Value::from(vm), map_value(data)])
        .await
        .map(drop)
}

/// `VM.remove_from_xenstore_data`: one key.
pub async fn vm_remove_xenstore_key(s: &Session, vm: &str, key: &str) -> Result<(), XapiError> {
    call(s, "VM.remove_from_xenstore_data", &[vm, key])
        .await
        .map(drop)
}

/// `VM.get_allowed_VBD_devices`: the free `userdevice` slots.
pub async fn vm_allowed_vbd_devices(s: &Session, vm: &str) -> Result<Vec<String>, XapiError> {
    let v = call(s, "VM.get_allowed_VBD_devices", &[vm]).await?;
    Ok(strings(&v))
}

/// `VIF.destroy`.
pub async fn vif_destroy(s: &Session, vif: &str) -> Result<(), XapiError> {
    call(s, "VIF.destroy", &[vif]).await.map(drop)
}

/// `VBD.plug`.
pub async fn vbd_plug(s: &Session, vbd: &str) -> Result<(), XapiError> {
    call_slow(s, "VBD.plug", &[vbd]).await.map(drop)
}

/// `VBD.unplug`.
pub async fn vbd_unplug(s: &Session, vbd: &str) -> Result<(), XapiError> {
    call_slow(s, "VBD.unplug", &[vbd]).await.map(drop)
}

/// `VDI.enable_cbt`.
pub async fn vdi_enable_cbt(s: &Session, vdi: &str) -> Result<(), XapiError> {
    call_slow(s, "VDI.enable_cbt", &[vdi]).await.map(drop)
}

/// `VDI.list_changed_blocks`: the base64 bitmap from `from` to `to`.
pub async fn vdi_list_changed_blocks(
    s: &Session,
    from: &str,
    to: &str,
) -> Result<String, XapiError> {
    let v = call_slow(s, "VDI.list_changed_blocks", &[from, to]).await?;
    Ok(v.as_str().unwrap_or_default().to_owned())
}

/// `VDI.data_destroy`: keeps only a snapshot VDI's CBT metadata.
pub async fn vdi_data_destroy(s: &Session, vdi: &str) -> Result<(), XapiError> {
    call_slow(s, "VDI.data_destroy", &[vdi]).await.map(drop)
}

/// `SR.scan`.
pub async fn sr_scan(s: &Session, sr: &str) -> Result<(), XapiError> {
    call_slow(s, "SR.scan", &[sr]).await.map(drop)
}

/// `SR.create` of a shared NFS SR on `server:serverpath`, through `host`; its ref and uuid.
pub async fn sr_create_nfs(
    s: &Session,
    host: &str,
    server: &str,
    serverpath: &str,
    name: &str,
    description: &str,
) -> Result<(String, String), XapiError> {
    let device_config: Struct = [
        ("server".to_owned(), Value::from(server)),
        ("serverpath".to_owned(), Value::from(serverpath)),
    ]
    .into_iter()
    .collect();
    let args = [
        Value::from(host),
        Value::Struct(device_config),
        Value::from("0"),
        Value::from(name),
        Value::from(description),
        Value::from("nfs"),
        Value::from("user"),
        Value::from(true),
        Value::empty_struct(),
    ];
    let v = s.call_async("SR.create", &args).await?;
    let sr = returns_ref(s, "SR.create", v)?;
    let uuid = call(s, "SR.get_uuid", &[&sr]).await?;
    Ok((sr, uuid.as_str().unwrap_or_default().to_owned()))
}

/// `PBD.plug`.
pub async fn pbd_plug(s: &Session, pbd: &str) -> Result<(), XapiError> {
    call_slow(s, "PBD.plug", &[pbd]).await.map(drop)
}

/// `PBD.unplug`.
pub async fn pbd_unplug(s: &Session, pbd: &str) -> Result<(), XapiError> {
    call_slow(s, "PBD.unplug", &[pbd]).await.map(drop)
}

/// `task.create`: a task for an HTTP handler to report through (`task_id`). `None` from a
/// host without `task.create`.
pub async fn task_create(s: &Session, label: &str) -> Result<Option<String>, XapiError> {
    match call(s, "task.create", &[label, "A3"]).await {
        Ok(v) => Ok(v.as_str().map(str::to_owned)),
        Err(XapiError::Api { code, .. }) if code == "MESSAGE_METHOD_UNKNOWN" => Ok(None),
        Err(e) => Err(e),
    }
}

/// `task.destroy`, best effort (the host expires tasks anyway).
pub async fn task_destroy(s: &Session, task: &str) {
    if let Err(e) = call(s, "task.destroy", &[task]).await {
        tracing::debug!(task, error = %e, "task.destroy failed");
    }
}

/// An answer of the wrong shape.
pub fn unexpected(s: &Session, method: &str, detail: &str) -> XapiError {
    XapiError::Unexpected {
        host: s.endpoint().to_string(),
        method: method.to_owned(),
        detail: detail.to_owned(),
    }
}

/// The device name of a VBD's `userdevice` (`0` → `xvda`, `1` → `xvdb`, …).
pub fn device_name(userdevice: &str) -> Option<String> {
    let n: u32 = userdevice.parse().ok()?;
    (n < 26).then(|| format!("xvd{}", char::from(b'a' + n as u8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_follow_userdevice() {
        assert_eq!(device_name("0").as_deref(), Some("xvda"));
        assert_eq!(device_name("3").as_deref(), Some("xvdd"));
        assert_eq!(device_name("autodetect"), None);
        assert_eq!(device_name("26"), None);
    }
}
