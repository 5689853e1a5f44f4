//! Disks plugged into an ABD: a VDI attached read-only at the ABD's next free slot, tagged
//! with the run so that recovery finds it after a crash.

use a3_shared::xapi_wire::Value;
use anyhow::Context;

use crate::poolops::{self, RUN_KEY};
use crate::xapi::Session;

/// Attaches `vdi` read-only to the ABD VM `abd_vm` (named `abd` in messages) and plugs it;
/// returns the VBD and the device id the agent finds it under (`xvdb`). A VBD that cannot
/// be plugged is removed again.
pub async fn read_only(
    s: &Session,
    abd_vm: &str,
    abd: &str,
    vdi: &str,
    run: i64,
) -> anyhow::Result<(String, String)> {
    let userdevice = poolops::call(s, "VM.get_allowed_VBD_devices", &[abd_vm])
        .await?
        .as_array()
        .and_then(|a| a.iter().filter_map(Value::as_str).find(|u| *u != "0"))
        .map(str::to_owned)
        .with_context(|| format!("ABD '{abd}' has no free disk slot"))?;
    let device = poolops::device_name(&userdevice)
        .with_context(|| format!("userdevice {userdevice} has no xvd name"))?;
    let record: Vec<(&str, Value)> = vec![
        ("VM", Value::from(abd_vm)),
        ("VDI", Value::from(vdi)),
        ("userdevice", Value::from(&userdevice)),
        ("bootable", Value::Bool(false)),
        ("mode", Value::from("RO")),
        ("type", Value::from("Disk")),
        ("empty", Value::Bool(false)),
        ("unpluggable", Value::Bool(true)),
        (
            "other_config",
            poolops::map_value(&[(RUN_KEY, run.to_string())]),
        ),
        ("qos_algorithm_type", Value::from("")),
        ("qos_algorithm_params", Value::empty_struct()),
    ];
    let vbd = s
        .call(
            "VBD.create",
            &[Value::Struct(
                record.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            )],
        )
        .await?
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Err(e) = poolops::call(s, "VBD.plug", &[&vbd]).await {
        if let Err(undo) = poolops::remove_vbd(s, &vbd).await {
            tracing::warn!(vbd, "removing the VBD that did not plug: {undo}");
        }
        return Err(e.into());
    }
    Ok((vbd, device))
}

/// Writes `size` bytes from `body` over the whole of `vdi` through XAPI's
/// `PUT /import_raw_vdi` (`what` names the disk in errors).
pub async fn import_raw(
    s: &Session,
    vdi: &str,
    what: &str,
    size: u64,
    body: reqwest::Body,
) -> anyhow::Result<()> {
    let url = s.transport().url(&format!(
        "/import_raw_vdi?session_id={}&vdi={vdi}&format=raw",
        s.session_ref().await
    ));
    let resp = s
        .transport()
        .http()
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .timeout(std::time::Duration::from_secs(24 * 3600))
        .send()
        .await
        .with_context(|| format!("writing {what} to {}", s.endpoint()))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        anyhow::bail!(
            "writing {what} to {}: HTTP {status}: {}",
            s.endpoint(),
            text.trim()
        );
    }
    Ok(())
}
