//! Disks plugged into an ABD: a VDI attached read-only at the ABD's next free slot, tagged
//! with the run so that recovery finds it after a crash.

use anyhow::Context;

use crate::xapi::Session;
use crate::xapi::create::{VbdMode, VbdSpec};
use crate::xapi::ops::{self, RUN_KEY};

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
    let userdevice = ops::vm_allowed_vbd_devices(s, abd_vm)
        .await?
        .into_iter()
        .find(|u| u != "0")
        .with_context(|| format!("ABD '{abd}' has no free disk slot"))?;
    let device = ops::device_name(&userdevice)
        .with_context(|| format!("userdevice {userdevice} has no xvd name"))?;
    let vbd = VbdSpec {
        vm: abd_vm.to_owned(),
        vdi: vdi.to_owned(),
        userdevice,
        bootable: false,
        mode: VbdMode::ReadOnly,
        unpluggable: true,
        other_config: vec![(RUN_KEY.to_owned(), run.to_string())],
    }
    .create(s)
    .await?;
    if let Err(e) = ops::vbd_plug(s, &vbd).await {
        if let Err(undo) = ops::remove_vbd(s, &vbd).await {
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
