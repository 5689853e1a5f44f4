//! Disks plugged into an ABD, tagged with the run so that recovery finds them after a crash.
//!
//! The ABD is an HVM guest, and xapi refuses a read-only disk VBD in an HVM guest
//! (`DISK_VBD_MUST_BE_READWRITE_FOR_HVM`, xen-api `ocaml/xapi/xapi_vbd.ml`, CA-83260). So a
//! disk to read is plugged read-write when its VDI allows it (snapshot VDIs are not
//! `read_only`); the agent opens it `O_RDONLY` and sets the block device read-only before
//! its first read. Hot-plug into an HVM guest also needs its PV drivers to claim support in
//! its guest metrics (`VM_MISSING_PV_DRIVERS`, xapi_vbd_helpers.ml): the agent reports
//! them at boot, and [`for_reading`] waits for them before the first plug.

use std::time::Duration;

use super::error::{Context, JobError, JobResult, bail};

use crate::catalog::Catalog;
use crate::xapi::create::{VbdMode, VbdSpec};
use crate::xapi::ops::{self, NULL_REF};
use crate::xapi::owner::RunTag;
use crate::xapi::{Endpoint, Fingerprint, Session, Transport};

/// How long an ABD's guest may take to report hot-plug support after its agent connected.
const HOTPLUG_READY: Duration = Duration::from_secs(120);
/// How often the guest metrics are read while waiting.
const HOTPLUG_POLL: Duration = Duration::from_millis(200);

/// Attaches `vdi` to the ABD VM `abd_vm` (named `abd` in messages) at its next free slot,
/// for the agent to read, and plugs it; returns the VBD and the device id the agent finds
/// it under (`xvdb`). A VBD that cannot be plugged is removed again.
pub async fn for_reading(
    s: &Session,
    abd_vm: &str,
    abd: &str,
    vdi: &str,
    tag: &RunTag,
) -> JobResult<(String, String)> {
    let userdevice = ops::vm_allowed_vbd_devices(s, abd_vm)
        .await?
        .into_iter()
        .find(|u| u != "0")
        .with_context(|| format!("ABD '{abd}' has no free disk slot"))?;
    let device = ops::device_name(&userdevice)
        .with_context(|| format!("userdevice {userdevice} has no xvd name"))?;
    // A read-only VDI takes only a read-only VBD (`VDI_READONLY`); an HVM ABD then refuses
    // it, with xapi's message.
    let mode = if ops::flag(&ops::record(s, "VDI", vdi).await?, "read_only") {
        VbdMode::ReadOnly
    } else {
        VbdMode::ReadWrite
    };
    wait_hotplug_ready(s, abd_vm, abd).await?;
    let vbd = VbdSpec {
        vm: abd_vm.to_owned(),
        vdi: vdi.to_owned(),
        userdevice,
        bootable: false,
        mode,
        unpluggable: true,
        other_config: tag.other_config(),
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

/// Waits until an HVM ABD's guest metrics allow hot-plug, as xapi_vbd_helpers.ml decides:
/// `can_use_hotplug_vbd` is `yes`, or `unspecified` with PV drivers detected.
async fn wait_hotplug_ready(s: &Session, abd_vm: &str, abd: &str) -> JobResult<()> {
    let deadline = tokio::time::Instant::now() + HOTPLUG_READY;
    loop {
        let vm = ops::record(s, "VM", abd_vm).await?;
        if ops::text(&vm, "domain_type") != "hvm" {
            return Ok(());
        }
        let gm = ops::text(&vm, "guest_metrics");
        let why = if gm.is_empty() || gm == NULL_REF {
            "its guest has not reported PV drivers (no guest metrics)".to_owned()
        } else {
            let m = ops::record(s, "VM_guest_metrics", gm).await?;
            match ops::text(&m, "can_use_hotplug_vbd") {
                "yes" => return Ok(()),
                "no" => bail!(
                    "ABD '{abd}': its guest says it cannot hot-plug disks \
                     (can_use_hotplug_vbd=no); recreate it from the A3's template"
                ),
                _ if ops::flag(&m, "PV_drivers_detected") => return Ok(()),
                other => format!("its guest metrics say can_use_hotplug_vbd={other:?}"),
            }
        };
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "ABD '{abd}' cannot take disks: {why} after {}s; xapi refuses hot-plug into an \
                 HVM guest without PV drivers; check the ABD's console (`a3-server abd ssh \
                 {abd} logs`)",
                HOTPLUG_READY.as_secs()
            );
        }
        tokio::time::sleep(HOTPLUG_POLL).await;
    }
}

/// How long a disk write may take, end to end.
const WRITE_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Writes `size` bytes from `body` over the whole of `vdi` through XAPI's
/// `PUT /import_raw_vdi` (`what` names the disk in errors), as Xen Orchestra's uploader
/// does. xapi answers 200 before it reads the body and reports the write's outcome only
/// through the task (xen-api `ocaml/xapi/import_raw_vdi.ml`), so the write runs in a task
/// of ours (`task_id`) that is awaited before the disk is used. A host that does not see
/// the VDI's SR redirects (302) to one that does; an empty-bodied probe finds that out
/// before the body is sent, and the body goes to the host it names, whose certificate the
/// catalog pinned.
pub async fn import_raw(
    s: &Session,
    catalog: &Catalog,
    vdi: &str,
    what: &str,
    size: u64,
    body: reqwest::Body,
) -> JobResult<()> {
    let task = ops::task_create(s, &format!("A3: write {what}"))
        .await?
        .with_context(|| format!("{} has no task.create to follow a disk write", s.endpoint()))?;
    let written = async {
        let query = format!(
            "/import_raw_vdi?session_id={}&vdi={vdi}&format=raw",
            s.session_ref().await
        );
        let (http, base) = match redirected(s, &query).await? {
            None => (s.transport().http().clone(), s.transport().url("")),
            Some(location) => other_host(s, catalog, &location)?,
        };
        let url = format!("{}{query}&task_id={task}", base.trim_end_matches('/'));
        let resp = http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body)
            .timeout(WRITE_LIMIT)
            .send()
            .await
            .with_context(|| format!("writing {what} to {}", s.endpoint()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            bail!(
                "writing {what} to {}: HTTP {status}: {}",
                s.endpoint(),
                text.trim()
            );
        }
        // xapi answers before it reads the body, and ends its reply (`Connection: close`,
        // no length) when the write is over; a failed write closes the connection under
        // the body still being sent, cutting the reply. Either way the task then holds the
        // write's outcome, which is the one to report.
        let reply = resp.bytes().await;
        s.await_task("/import_raw_vdi", &task, WRITE_LIMIT)
            .await
            .with_context(|| format!("writing {what}"))?;
        if let Err(e) = reply {
            tracing::debug!("writing {what}: the reply was cut off after the write: {e}");
        }
        Ok::<_, super::error::JobError>(())
    }
    .await;
    ops::task_destroy(s, &task).await;
    written
}

/// Where a host sends an import it cannot serve: the `Location` of its 302 to an
/// empty-bodied probe (without `task_id`, whose task the probe must not settle).
async fn redirected(s: &Session, query: &str) -> JobResult<Option<reqwest::Url>> {
    let resp = s
        .transport()
        .http()
        .put(s.transport().url(query))
        .header(reqwest::header::CONTENT_LENGTH, 0)
        .send()
        .await
        .with_context(|| format!("asking {} where to write a disk", s.endpoint()))?;
    if resp.status() != reqwest::StatusCode::FOUND {
        return Ok(None);
    }
    location(s, &resp).map(Some)
}

/// The `Location` a host's 302 names.
fn location(s: &Session, resp: &reqwest::Response) -> JobResult<reqwest::Url> {
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .with_context(|| {
            format!(
                "{} redirected a disk transfer without a Location",
                s.endpoint()
            )
        })?;
    reqwest::Url::parse(location).map_err(|e| {
        JobError::Refused(format!(
            "{} redirected a disk transfer to {location:?}: {e}",
            s.endpoint()
        ))
    })
}

/// Reads the whole of `vdi` through XAPI's `GET /export_raw_vdi` (`what` names the disk in
/// errors): its size and a body that streams its bytes, for [`import_raw`]. A host that
/// does not see the VDI's SR redirects (302) to one that does, whose certificate the
/// catalog pinned.
pub async fn export_raw(
    s: &Session,
    catalog: &Catalog,
    vdi: &str,
    what: &str,
) -> JobResult<(u64, reqwest::Body)> {
    let query = format!(
        "/export_raw_vdi?session_id={}&vdi={vdi}&format=raw",
        s.session_ref().await
    );
    let get = |http: &reqwest::Client, url: String| http.get(url).timeout(WRITE_LIMIT).send();
    let reading = || format!("reading {what} from {}", s.endpoint());
    let mut resp = get(s.transport().http(), s.transport().url(&query))
        .await
        .with_context(reading)?;
    if resp.status() == reqwest::StatusCode::FOUND {
        let (http, base) = other_host(s, catalog, &location(s, &resp)?)?;
        resp = get(&http, format!("{}{query}", base.trim_end_matches('/')))
            .await
            .with_context(reading)?;
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        bail!("{}: HTTP {status}: {}", reading(), text.trim());
    }
    let size = resp
        .content_length()
        .with_context(|| format!("{}: the pool sent no length", reading()))?;
    Ok((size, reqwest::Body::wrap_stream(resp.bytes_stream())))
}

/// An HTTPS client for the pool host at `location`, pinned to its recorded certificate,
/// and that host's base URL.
fn other_host(
    s: &Session,
    catalog: &Catalog,
    location: &reqwest::Url,
) -> JobResult<(reqwest::Client, String)> {
    let address = location.host_str().unwrap_or_default();
    let host = catalog.find_host(address)?.with_context(|| {
        format!(
            "{} redirected a disk transfer to {address}, a host the A3 does not know; resync the pool",
            s.endpoint()
        )
    })?;
    let pin = host
        .cert_sha256
        .as_deref()
        .map(str::parse::<Fingerprint>)
        .transpose()
        .map_err(|e| JobError::Refused(format!("host {address}: bad pinned fingerprint: {e:?}")))?;
    let port = location.port().unwrap_or(host.port);
    let endpoint = Endpoint::new(address, port);
    let transport = Transport::new(endpoint, pin, s.transport().timeouts())?;
    let base = transport.url("");
    Ok((transport.http().clone(), base))
}
