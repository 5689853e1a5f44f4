//! `GET /export_raw_vdi` and `PUT /import_raw_vdi`: a VDI's raw bytes over HTTP, as
//! xapi serves them (`?session_id=&vdi=&format=raw`; `vdi` is a ref or a uuid).
//! Content streams in 1 MiB pieces, each read or written under the state lock on a
//! blocking thread (a VDI on an NFS SR is a VHD read and written over NFS: the raw bytes
//! are translated to and from it).

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};

use crate::api::vdi;
use crate::disks::DiskError;
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

/// Writes the request body into the VDI from offset 0.
pub async fn import(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (vdi_ref, uuid, _) = match target(&shared, &req) {
        Ok(t) => t,
        Err((status, msg)) => return text(status, msg),
    };
    let mut body = req.into_body();
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = data.len() as u64;
        let (s, u) = (shared.clone(), uuid.clone());
        let written = tokio::task::spawn_blocking(move || s.lock().disks.write(&u, offset, &data))
            .await
            .unwrap_or_else(|e| {
                Err(DiskError::Unknown(format!(
                    "{uuid}: the write panicked: {e}"
                )))
            });
        if let Err(e) = written {
            shared.changed();
            return text(StatusCode::BAD_REQUEST, e.to_string());
        }
        offset += len;
    }
    let _ = vdi::refresh_utilisation(&mut shared.lock(), &vdi_ref);
    shared.changed();
    text(StatusCode::OK, String::new())
}
