//! The HTTPS front end of one host: TLS, HTTP/1.1 and routing.
//!
//! Routes, as on a real host:
//! - `POST /jsonrpc`: JSON-RPC; any other `POST`: XML-RPC (`/`, `/RPC2`, …);
//! - `GET /export_raw_vdi`, `PUT /import_raw_vdi`: disk transfer ([`crate::http_vdi`]);
//! - `PUT /import`: a VM from an XVA ([`crate::import_xva`]);
//! - `/sim/…`: the simulator's control API ([`crate::control`]), which is not XAPI.
//!
//! An error in one connection ends that connection only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use a3_shared::xapi_wire::{self, Response as XapiResponse, Value};
use axum::body::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::api::{Deferred, Outcome};
use crate::model::Ref;
use crate::sim::Shared;
use crate::{control, http_vdi, import_xva};

/// Largest RPC body accepted.
const MAX_RPC_BODY: usize = 64 << 20;

/// Serves one host until the task is aborted; aborting also drops its connections.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    host: Ref,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let (acceptor, shared, host) = (acceptor.clone(), shared.clone(), host.clone());
                    conns.spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let service = hyper::service::service_fn(move |req| {
                            let (shared, host) = (shared.clone(), host.clone());
                            async move { Ok::<_, Infallible>(route(shared, host, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    // Out of file descriptors and the like: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn route(shared: Arc<Shared>, host: Ref, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path.starts_with("/sim/") {
        return control::handle(shared, host, req).await;
    }
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/export_raw_vdi") => http_vdi::export(shared, req).await,
        (Method::PUT, "/import_raw_vdi") => http_vdi::import(shared, host, req).await,
        (Method::PUT, "/import") => import_xva::import(shared, req).await,
        (Method::POST, "/jsonrpc") => match read_body(req).await {
            Ok(body) => jsonrpc(&shared, &host, &body).await,
            Err(resp) => resp,
        },
        (Method::POST, _) => match read_body(req).await {
            Ok(body) => xmlrpc(&shared, &host, &body).await,
            Err(resp) => resp,
        },
        _ => text(StatusCode::NOT_FOUND, format!("no handler for {path}")),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_RPC_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("reading the request body: {e}"),
        )),
    }
}

async fn xmlrpc(shared: &Arc<Shared>, host: &str, body: &[u8]) -> Response<Body> {
    match xapi_wire::decode_call(body) {
        Ok((method, params)) => {
            let reply = call(shared, host, &method, &params).await;
            with_type(
                StatusCode::OK,
                "text/xml",
                xapi_wire::encode_response(&reply),
            )
        }
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("malformed XML-RPC call: {e}"),
        ),
    }
}

async fn jsonrpc(shared: &Arc<Shared>, host: &str, body: &[u8]) -> Response<Body> {
    match xapi_wire::decode_json_call(body) {
        Ok(c) => {
            let reply = call(shared, host, &c.method, &c.params).await;
            let out = xapi_wire::encode_json_response(&reply, &c.id, c.version);
            with_type(StatusCode::OK, "application/json", out)
        }
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON-RPC call: {e}"),
        ),
    }
}

/// Runs one XAPI call, waiting outside the lock when `event.from` has nothing yet.
pub async fn call(
    shared: &Arc<Shared>,
    host: &str,
    method: &str,
    params: &[Value],
) -> XapiResponse {
    let outcome = {
        let mut st = shared.lock();
        let before = st.db.last_event_id();
        let o = shared.api.call(&mut st, host, method, params);
        if st.db.last_event_id() != before {
            shared.changed();
        }
        o
    };
    let query = match outcome {
        Outcome::Done(r) => {
            if let XapiResponse::Failure(d) = &r {
                tracing::debug!(host, method, error = ?d, "call failed");
            }
            return r;
        }
        Outcome::WaitEvents(q) => q,
        Outcome::Wait(d) => {
            let Some(task) = d.task.clone() else {
                return run_deferred(shared.clone(), d).await;
            };
            tokio::spawn(run_deferred(shared.clone(), d));
            return XapiResponse::Success(Value::from(task));
        }
    };
    let deadline = tokio::time::Instant::now() + query.timeout;
    loop {
        let notified = shared.events.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = shared.lock();
            match shared.api.poll_events(&st, &query) {
                Ok(Some(v)) => return XapiResponse::Success(v),
                Ok(None) => {}
                Err(e) => return e.into(),
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            let st = shared.lock();
            return XapiResponse::Success(shared.api.events_timed_out(&st, &query));
        }
    }
}

/// Waits, woken by every change, until a deferred call may run (or its deadline), then
/// runs it under the lock.
async fn run_deferred(shared: Arc<Shared>, d: Deferred) -> XapiResponse {
    let deadline = tokio::time::Instant::from_std(d.deadline);
    loop {
        let notified = shared.events.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = shared.lock();
            if d.ready(&st) {
                let before = st.db.last_event_id();
                let reply = d.finish(&mut st);
                if st.db.last_event_id() != before {
                    shared.changed();
                }
                return reply;
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// A response with an exact Content-Type (xapi sends no charset).
pub fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// A plain-text response.
pub fn text(status: StatusCode, msg: String) -> Response<Body> {
    with_type(status, "text/plain", msg)
}

/// The decoded query parameters of a request.
pub fn query(req: &Request<Incoming>) -> std::collections::HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
