//! The XAPI calls of the pool workflow (template, ABDs, backup, restore, recovery), on raw
//! records: these steps read fields ([`crate::xapi::records`] does not type) such as
//! `other_config`, `snapshot_of` or `platform`, and copy whole maps into a version's
//! metadata.
//!
//! Everything the A3 creates in a pool for a run carries `other_config:a3_run=<run>`, so
//! that recovery after a crash finds it again ([`RUN_KEY`]).

use std::time::Duration;

use a3_shared::xapi_wire::{Struct, Value};

use crate::xapi::{Session, XapiError};

/// `other_config` key naming the run that created a snapshot, VBD, VM or VDI.
pub const RUN_KEY: &str = "a3_run";
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
pub async fn call(s: &Session, method: &str, args: &[&str]) -> Result<Value, XapiError> {
    let args: Vec<Value> = args.iter().map(|a| Value::from(*a)).collect();
    s.call(method, &args).await
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
    rec.get(field)
        .and_then(Value::as_array)
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
    let _ = call(
        s,
        &format!("{class}.remove_from_other_config"),
        &[reference, key],
    )
    .await;
    call(
        s,
        &format!("{class}.add_to_other_config"),
        &[reference, key, value],
    )
    .await
    .map(drop)
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
        call(s, "VBD.unplug", &[vbd]).await?;
    }
    call(s, "VBD.destroy", &[vbd]).await.map(drop)
}

/// Stops (hard) and destroys a VM with its disks, or only its VM record when
/// `keep_disks`. A VM already gone is fine.
pub async fn destroy_vm(s: &Session, vm: &str, keep_disks: bool) -> Result<(), XapiError> {
    let rec = match record(s, "VM", vm).await {
        Ok(r) => r,
        Err(XapiError::HandleInvalid { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    if text(&rec, "power_state") != "Halted" {
        call(s, "VM.hard_shutdown", &[vm]).await?;
    }
    let mut vdis = Vec::new();
    for vbd in refs(&rec, "VBDs") {
        if let Ok(b) = record(s, "VBD", &vbd).await
            && text(&b, "type") == "Disk"
            && text(&b, "VDI") != NULL_REF
        {
            vdis.push(text(&b, "VDI").to_owned());
        }
    }
    call(s, "VM.destroy", &[vm]).await?;
    if !keep_disks {
        for vdi in vdis {
            destroy_vdi(s, &vdi).await?;
        }
    }
    Ok(())
}

/// Destroys a VDI; one already gone is fine.
pub async fn destroy_vdi(s: &Session, vdi: &str) -> Result<(), XapiError> {
    match call(s, "VDI.destroy", &[vdi]).await {
        Ok(_) | Err(XapiError::HandleInvalid { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Waits for an XAPI task to end; returns its decoded result (refs for `/import`).
pub async fn await_task(s: &Session, task: &str, timeout: Duration) -> Result<Value, XapiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        let rec = record(s, "task", task).await?;
        match text(&rec, "status") {
            "pending" | "cancelling" => {}
            "success" => {
                let result = text(&rec, "result").trim();
                if result.starts_with('<') {
                    return a3_shared::xapi_wire::xmlrpc::decode_value_document(result.as_bytes())
                        .map_err(|e| unexpected(s, "task.get_record", &format!("result: {e}")));
                }
                return Ok(Value::from(result));
            }
            "failure" => {
                let desc: Vec<String> = rec
                    .get("error_info")
                    .and_then(Value::as_array)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                return Err(XapiError::from_failure(
                    &s.endpoint().to_string(),
                    &format!("task {task}"),
                    desc,
                ));
            }
            other => {
                return Err(unexpected(
                    s,
                    "task.get_record",
                    &format!("task {task} ended {other:?}"),
                ));
            }
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(XapiError::Timeout {
                host: s.endpoint().to_string(),
                method: format!("task {task}"),
                after: timeout,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
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
