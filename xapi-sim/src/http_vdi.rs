//! `GET /export_raw_vdi` and `PUT /import_raw_vdi`: a VDI's raw bytes over HTTP, as
//! xapi serves them (`?session_id=&vdi=&format=raw[&task_id=]`; `vdi` is a ref or a uuid).
//! Content streams in 1 MiB pieces, each read or written under the state lock on a
//! blocking thread (a VDI on an NFS SR is a VHD read and written over NFS: the raw bytes
//! are translated to and from it).

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};

use a3_shared::xapi_wire::Value;

use crate::api::{self, vdi};
use crate::disks::DiskError;
use crate::errors::{self, ApiResult};
use crate::knobs::{ImportFailure, SimKnobs};
use crate::server::{query, text};
use crate::sim::Shared;

const CHUNK: u64 = 1 << 20;

/// The VDI a transfer request names, after checking session and format.
fn target(
    shared: &Shared,
    req: &Request<Incoming>,
) -> Result<(String, String, u64), (StatusCode, String)> {
    let q = query(req);
    let mut st = shared.lock();
    let session = q.get("session_id").map(String::as_str).unwrap_or("");
    if !st.sessions.contains_key(session) {
        return Err((
            StatusCode::UNAUTHORIZED,
            format!("session_id {session:?} is not a valid session; log in first"),
        ));
    }
    let format = q.get("format").map(String::as_str).unwrap_or("raw");
    if format != "raw" {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("format {format:?} is not served by the simulator; use format=raw"),
        ));
    }
    let id = q.get("vdi").map(String::as_str).unwrap_or("");
    let vdi = st
        .find_vdi(id)
        .map_err(|_| (StatusCode::NOT_FOUND, format!("no VDI {id:?}")))?;
    // The VDI's SR must be attached (an NFS SR's mount live) for its content to be reached.
    let sr = st.db.str_field("VDI", &vdi, "SR").unwrap_or_default();
    crate::api::placement(&mut st, &sr)
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let uuid = vdi::uuid_of(&st, &vdi).map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?;
    let disk = st
        .disks
        .get(&uuid)
        .ok_or_else(|| (StatusCode::NOT_FOUND, format!("VDI {vdi} has no content")))?;
    if disk.data_destroyed {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("VDI {vdi} is cbt_metadata: its data was destroyed"),
        ));
    }
    Ok((vdi, uuid, disk.virtual_size))
}

/// Streams the VDI's bytes.
pub async fn export(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (_, uuid, size) = match target(&shared, &req) {
        Ok(t) => t,
        Err((status, msg)) => return text(status, msg),
    };
    let stream = futures_util::stream::unfold(0u64, move |offset| {
        let (shared, uuid) = (shared.clone(), uuid.clone());
        async move {
            if offset >= size {
                return None;
            }
            let n = CHUNK.min(size - offset);
            let chunk =
                tokio::task::spawn_blocking(move || shared.lock().disks.read(&uuid, offset, n))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r.map_err(std::io::Error::other));
            Some((chunk.map(Bytes::from), offset + n))
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(size));
    r
}

/// `PUT /import_raw_vdi`, as xen-api `ocaml/xapi/import_raw_vdi.ml` serves it:
/// - when the host that got the request does not see the VDI's SR, a 302 to one that does
///   (the same path and query; xapi's URL has no port, the simulator's hosts share one);
/// - otherwise 200 at once, before the body is read (`Connection: close`, no length: the
///   reply ends when the write does), with the task's ref in `Task-Id`, the write's outcome
///   being the task's
///   (the client's `task_id`, else a new task): success with the VDI as result, or the
///   write's error (`VDI_IO_ERROR ["Device I/O errors"]`, as `vhd_tool_wrapper.ml` raises
///   it), so a failed write still answers 200.
pub async fn import(shared: Arc<Shared>, host: String, req: Request<Incoming>) -> Response<Body> {
    let (vdi_ref, uuid, _) = match target(&shared, &req) {
        Ok(t) => t,
        Err((status, msg)) => return text(status, msg),
    };
    let q = query(&req);
    let (task, faults) = {
        let mut st = shared.lock();
        let sr = st.db.str_field("VDI", &vdi_ref, "SR").unwrap_or_default();
        if !api::host_sees(&st, &host, &sr) {
            let Some(other) = api::host_seeing(&st, &sr) else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no host sees SR {sr}: plug one of its PBDs"),
                );
            };
            let address = st.host_address(&other).unwrap_or_default();
            let location = format!(
                "https://{address}:{}{}",
                shared.port,
                req.uri().path_and_query().map_or("", |p| p.as_str())
            );
            let mut r = text(StatusCode::FOUND, String::new());
            if let Ok(v) = header::HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return r;
        }
        let given = q.get("task_id").map(String::as_str).unwrap_or("");
        let task = match api::task::for_http(&mut st, &host, given, "VDI.import") {
            Ok(t) => t,
            Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
        };
        let length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        (task, WriteFaults::take(&mut st.knobs, length))
    };
    shared.changed();
    let body = req.into_body();
    // As xapi: the 200 goes out before the body is read, with `Connection: close` and no
    // length, so the reply's (empty) body ends when the connection closes after the write.
    // A client that reads the reply to its end has therefore waited for the write; the
    // outcome itself is only in the task.
    let (written, ended) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn({
        let (shared, task) = (shared.clone(), task.clone());
        async move {
            let outcome = write_body(&shared, body, &vdi_ref, &uuid, faults)
                .await
                .map(|()| Value::from(vdi_ref.clone()));
            api::task::finish(&mut shared.lock(), &task, outcome);
            shared.changed();
            let _ = written.send(());
        }
    });
    let until_written = futures_util::stream::once(async move {
        let _ = ended.await;
        Ok::<_, std::convert::Infallible>(bytes::Bytes::new())
    });
    let mut r = Response::new(Body::from_stream(until_written));
    let headers = r.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, no-store"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&task) {
        headers.insert("task-id", v);
    }
    r
}

/// What a test asked of one import (simulated-only knobs, [`crate::knobs`]): bytes after
/// which its write fails, bytes after which it pauses.
#[derive(Debug, Clone, Copy, Default)]
struct WriteFaults {
    fail_after: Option<u64>,
    hold_after: Option<u64>,
}

impl WriteFaults {
    /// Takes the knobs meant for an import of `length` bytes (unknown: any length): each
    /// is for a write with more bytes than its `after`.
    fn take(knobs: &mut SimKnobs, length: Option<u64>) -> WriteFaults {
        let bigger = |after: u64| length.is_none_or(|n| n > after);
        let fail_after = match knobs.import_write_failure {
            Some(f) if bigger(f.after) && f.skip > 0 => {
                knobs.import_write_failure = Some(ImportFailure {
                    skip: f.skip - 1,
                    ..f
                });
                None
            }
            Some(f) if bigger(f.after) => {
                knobs.import_write_failure = None;
                Some(f.after)
            }
            _ => None,
        };
        let hold_after = match &mut knobs.import_hold {
            Some(h) if !h.taken && bigger(h.after) => {
                h.taken = true;
                Some(h.after)
            }
            _ => None,
        };
        WriteFaults {
            fail_after,
            hold_after,
        }
    }
}

/// Writes the request body into the VDI from offset 0, failing or pausing where a test
/// asked it to.
async fn write_body(
    shared: &Arc<Shared>,
    mut body: Incoming,
    vdi_ref: &str,
    uuid: &str,
    mut faults: WriteFaults,
) -> ApiResult<()> {
    let io_error = || errors::vdi_io_error("Device I/O errors");
    let mut offset = 0u64;
    let written = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                tracing::warn!(vdi = vdi_ref, "import_raw_vdi: reading the body: {e}");
                io_error()
            })?;
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            let failing = faults
                .fail_after
                .is_some_and(|n| offset + data.len() as u64 > n);
            if let Some(n) = faults.fail_after.filter(|_| failing) {
                data.truncate(n.saturating_sub(offset) as usize);
            }
            if let Some(at) = faults
                .hold_after
                .filter(|at| offset + data.len() as u64 > *at)
            {
                let first = data.split_to(at.saturating_sub(offset) as usize);
                offset = write_at(shared, vdi_ref, uuid, offset, first).await?;
                faults.hold_after = None;
                hold(shared).await;
            }
            offset = write_at(shared, vdi_ref, uuid, offset, data).await?;
            if failing {
                return Err(io_error());
            }
        }
        Ok(())
    }
    .await;
    if faults.hold_after.is_some() {
        // The write ended before its pause: the hold is spent all the same.
        shared.lock().knobs.import_hold = None;
    }
    written?;
    let _ = vdi::refresh_utilisation(&mut shared.lock(), vdi_ref);
    Ok(())
}

/// Writes `data` at `offset`; the offset after it.
async fn write_at(
    shared: &Arc<Shared>,
    vdi_ref: &str,
    uuid: &str,
    offset: u64,
    data: Bytes,
) -> ApiResult<u64> {
    let len = data.len() as u64;
    let (s, u) = (shared.clone(), uuid.to_owned());
    let written = tokio::task::spawn_blocking(move || s.lock().disks.write(&u, offset, &data))
        .await
        .unwrap_or_else(|e| Err(DiskError::Unknown(format!("the write panicked: {e}"))));
    if let Err(e) = written {
        tracing::warn!(vdi = vdi_ref, "import_raw_vdi: {e}");
        return Err(errors::vdi_io_error("Device I/O errors"));
    }
    Ok(offset + len)
}

/// Pauses an import until the test releases it ([`crate::knobs::ImportHold`]): says it is holding, then
/// waits for the release, woken by every change of the state.
async fn hold(shared: &Shared) {
    if let Some(h) = shared.lock().knobs.import_hold.as_mut() {
        h.holding = true;
    }
    shared.changed();
    loop {
        // Registered before the check, so that a release between the two still wakes it.
        let woken = shared.events.notified();
        if shared.lock().knobs.import_hold.is_none_or(|h| h.released) {
            break;
        }
        woken.await;
    }
    shared.lock().knobs.import_hold = None;
    shared.changed();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::ImportHold;

    #[test]
    fn knobs_go_to_the_imports_they_are_meant_for() {
        let mut knobs = SimKnobs {
            import_write_failure: Some(ImportFailure { after: 10, skip: 1 }),
            import_hold: Some(ImportHold {
                after: 4,
                ..Default::default()
            }),
            ..Default::default()
        };
        // An empty probe is not a write: neither knob is for it.
        let probe = WriteFaults::take(&mut knobs, Some(0));
        assert_eq!((probe.fail_after, probe.hold_after), (None, None));
        // The first big write is let through the failure, and takes the hold.
        let first = WriteFaults::take(&mut knobs, Some(20));
        assert_eq!((first.fail_after, first.hold_after), (None, Some(4)));
        // A write too short for the failure does not count against `skip`.
        let short = WriteFaults::take(&mut knobs, Some(10));
        assert_eq!((short.fail_after, short.hold_after), (None, None));
        let second = WriteFaults::take(&mut knobs, None);
        assert_eq!(
            (second.fail_after, second.hold_after),
            (Some(10), None),
            "the hold was taken once"
        );
        assert!(knobs.import_write_failure.is_none(), "spent");
    }
}
