//! The simulator's control API for tests, under `/sim/` on every host's listener.
//!
//! It is not XAPI: it lets a test act as the world around the pool. Every request needs
//! HTTP Basic auth with the simulator's user and password. Replies are JSON
//! (`{"error": "..."}` with a 4xx/5xx status on failure), except raw VDI reads.
//!
//! | request | effect |
//! |---|---|
//! | `GET /sim/inventory` | every object of every class, hosts' up/down state, the master |
//! | `GET /sim/vdis/{vdi}/data?offset=O&length=L` | the VDI's bytes (default: all) |
//! | `PUT /sim/vdis/{vdi}/data?offset=O` | writes the body as a running guest would; sets CBT bits |
//! | `POST /sim/hosts/{host}/down` | closes the host's listener: it refuses connections |
//! | `POST /sim/hosts/{host}/up` | opens it again |
//! | `POST /sim/hosts/{host}/new-certificate` | replaces the host's TLS certificate |
//! | `POST /sim/master?host={host}` | makes `host` the master, as an emergency transition does |
//! | `POST /sim/faults?method=M&code=C&params=P&skip=N` | the call of `M` (or `Async.M`) after `N` more fails with `[C, P split at commas…]` (see [`crate::faults`]) |
//! | `DELETE /sim/faults` | disarms every injected failure |
//! | `POST /sim/vms/{vm}/kill` | SIGKILLs a running ABD's agent process or qemu (XAPI is not told; the VM restarts it) |
//! | `POST /sim/vms/{vm}/guest-tools?present=false` | simulated-only: the guest loses its PV tools (no guest metrics; HVM hot-plug is refused); `present=true` gives them back |
//! | `POST /sim/vbds/{vbd}/held?held=true` | simulated-only: the guest holds the device open, so `VBD.unplug` is rejected (`DEVICE_DETACH_REJECTED`) until `held=false` or an `unplug_force` |
//! | `POST /sim/latency?ms=N&method=M` | simulated-only: calls of `M` (every method without `method`) answer after N ms; an `Async.` call's task stays pending N ms; `ms=0` ends it |
//! | `POST /sim/import-write-failure?after=N&skip=K` | simulated-only: the next `PUT /import_raw_vdi` of more than N bytes, after K more such (default 0), fails its write after N bytes (`VDI_IO_ERROR` in its task) |
//! | `POST /sim/import-hold?after=N` | simulated-only: the next `PUT /import_raw_vdi` of more than N bytes pauses once it has written N, until released |
//! | `GET /sim/import-hold` | `{"armed", "taken", "holding"}`: whether a hold is set, an import took it, and that import is paused now |
//! | `DELETE /sim/import-hold` | releases the paused import (or disarms a hold no import took yet) |
//!
//! `{vdi}` and `{vm}` are a ref or uuid; `{host}` a ref, uuid or address. A host cannot take its own
//! listener down (the reply would be cut off): send `down` through another host.

use std::sync::Arc;

use a3_shared::xapi_wire::{Value, jsonrpc};
use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use serde_json::json;

use crate::api::vdi;
use crate::server::{query, with_type};
use crate::sim::Shared;
use crate::{abd, guest_agent};

type Reply = Result<Response<Body>, (StatusCode, String)>;

/// Serves one control request received by `host`.
pub async fn handle(shared: Arc<Shared>, host: String, req: Request<Incoming>) -> Response<Body> {
    if let Err(msg) = check_auth(&shared, &req) {
        let mut r = json_reply(StatusCode::UNAUTHORIZED, json!({ "error": msg }));
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"xapi-sim\""),
        );
        return r;
    }
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches("/sim/").split('/').collect();
    let method = req.method().clone();
    let result = match (method, parts.as_slice()) {
        (Method::GET, ["inventory"]) => Ok(inventory(&shared)),
        (Method::GET, ["vdis", id, "data"]) => read_vdi(&shared, id, &req),
        (Method::PUT, ["vdis", id, "data"]) => {
            let id = (*id).to_owned();
            write_vdi(&shared, &id, req).await
        }
        (Method::POST, ["hosts", id, action]) => host_action(&shared, &host, id, action).await,
        (Method::POST, ["master"]) => make_master(&shared, &req),
        (Method::POST, ["vms", id, "kill"]) => kill_abd(&shared, id).await,
        (Method::POST, ["faults"]) => arm_fault(&shared, &req),
        (Method::DELETE, ["faults"]) => {
            shared.lock().faults.clear();
            Ok(json_reply(StatusCode::OK, json!({ "faults": 0 })))
        }
        (Method::POST, ["vms", id, "guest-tools"]) => guest_tools(&shared, id, &req),
        (Method::POST, ["vbds", id, "held"]) => held(&shared, id, &req),
        (Method::POST, ["import-write-failure"]) => import_write_failure(&shared, &req),
        (Method::POST, ["import-hold"]) => import_hold(&shared, &req),
        (Method::GET, ["import-hold"]) => Ok(import_hold_state(&shared)),
        (Method::DELETE, ["import-hold"]) => Ok(import_release(&shared)),
        (Method::POST, ["latency"]) => latency(&shared, &req),
        _ => Err((
            StatusCode::NOT_FOUND,
            format!("no control endpoint {path}; see the xapi-sim README"),
        )),
    };
    result.unwrap_or_else(|(status, msg)| json_reply(status, json!({ "error": msg })))
}

fn arm_fault(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let q = query(req);
    let (Some(method), Some(code)) = (q.get("method"), q.get("code")) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "faults: give method=M and code=C (and optionally params=a,b and skip=N)".into(),
        ));
    };
    let skip = match q.get("skip").map(|n| n.parse::<u32>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "faults: skip must be a count".into(),
            ));
        }
    };
    let fault = crate::faults::Fault::new(method, skip, code, q.get("params").map_or("", |p| p));
    let mut st = shared.lock();
    st.faults.push(fault);
    Ok(json_reply(
        StatusCode::OK,
        json!({ "faults": st.faults.len() }),
    ))
}

fn check_auth(shared: &Shared, req: &Request<Incoming>) -> Result<(), String> {
    let expected = {
        let st = shared.lock();
        format!("{}:{}", st.username, st.password)
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        });
    match given {
        Some(g) if g == expected.as_bytes() => Ok(()),
        Some(_) => Err("wrong user or password for the control API".into()),
        None => Err(
            "the control API needs HTTP Basic auth with the simulator's user and password".into(),
        ),
    }
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    with_type(status, "application/json", v.to_string())
}

fn inventory(shared: &Shared) -> Response<Body> {
    json_reply(StatusCode::OK, inventory_json(shared))
}

/// What `GET /sim/inventory` answers: every object of every class, the hosts with their
/// up/down state, the master. In-process tests read it without HTTP.
pub fn inventory_json(shared: &Shared) -> serde_json::Value {
    let hosts = shared.host_infos();
    let st = shared.lock();
    let tables: serde_json::Map<String, serde_json::Value> = st
        .db
        .tables()
        .iter()
        .map(|(class, objs)| {
            let objs: serde_json::Map<_, _> = objs
                .iter()
                .map(|(r, rec)| (r.clone(), jsonrpc::to_json(&Value::Struct(rec.clone()))))
                .collect();
            (class.clone(), serde_json::Value::Object(objs))
        })
        .collect();
    let master = st.master().unwrap_or_default();
    let hosts: Vec<_> = hosts
        .iter()
        .map(|h| json!({ "ref": h.r, "uuid": h.uuid, "address": h.address, "up": shared.is_up(&h.r) }))
        .collect();
    json!({ "master": master, "hosts": hosts, "objects": tables })
}

fn bad(msg: impl ToString) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, msg.to_string())
}

fn vdi_uuid(shared: &Shared, id: &str) -> Result<(String, String), (StatusCode, String)> {
    let st = shared.lock();
    let r = st
        .find_vdi(id)
        .map_err(|_| (StatusCode::NOT_FOUND, format!("no VDI {id:?}")))?;
    let uuid = vdi::uuid_of(&st, &r).map_err(bad)?;
    Ok((r, uuid))
}

fn num(
    q: &std::collections::HashMap<String, String>,
    key: &str,
) -> Result<Option<u64>, (StatusCode, String)> {
    q.get(key)
        .map(|v| {
            v.parse()
                .map_err(|_| bad(format!("{key}={v:?} is not a number")))
        })
        .transpose()
}

fn read_vdi(shared: &Shared, id: &str, req: &Request<Incoming>) -> Reply {
    let (_, uuid) = vdi_uuid(shared, id)?;
    let q = query(req);
    let offset = num(&q, "offset")?.unwrap_or(0);
    let st = shared.lock();
    let size = st.disks.get(&uuid).map_or(0, |d| d.virtual_size);
    let length = num(&q, "length")?.unwrap_or(size.saturating_sub(offset));
    let data = st.disks.read(&uuid, offset, length).map_err(bad)?;
    Ok(with_type(
        StatusCode::OK,
        "application/octet-stream",
        Bytes::from(data),
    ))
}

async fn write_vdi(shared: &Shared, id: &str, req: Request<Incoming>) -> Reply {
    let (vdi_ref, uuid) = vdi_uuid(shared, id)?;
    let offset = num(&query(&req), "offset")?.unwrap_or(0);
    let body = req.into_body().collect().await.map_err(bad)?.to_bytes();
    {
        let mut st = shared.lock();
        st.disks.write(&uuid, offset, &body).map_err(bad)?;
        vdi::refresh_utilisation(&mut st, &vdi_ref).map_err(bad)?;
    }
    shared.changed();
    Ok(json_reply(
        StatusCode::OK,
        json!({ "written": body.len(), "offset": offset }),
    ))
}

async fn host_action(shared: &Arc<Shared>, serving: &str, id: &str, action: &str) -> Reply {
    let host = shared
        .lock()
        .find_host(id)
        .map_err(|_| (StatusCode::NOT_FOUND, format!("no host {id:?}")))?;
    match action {
        "down" if host == serving => Err((
            StatusCode::CONFLICT,
            "a host cannot take down the listener serving this request; send it to another host".into(),
        )),
        "down" => {
            shared.host_down(&host).await;
            Ok(json_reply(StatusCode::OK, json!({ "host": host, "up": false })))
        }
        "up" => {
            shared
                .host_up(&host)
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            Ok(json_reply(StatusCode::OK, json!({ "host": host, "up": true })))
        }
        "new-certificate" if host == serving => Err((
            StatusCode::CONFLICT,
            "a host cannot replace the certificate of the listener serving this request; send it to another host".into(),
        )),
        "new-certificate" => {
            shared
                .new_certificate(&host)
                .await
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let fingerprint = shared.host_tls(&host).map(|t| t.fingerprint).unwrap_or_default();
            Ok(json_reply(StatusCode::OK, json!({ "host": host, "fingerprint": fingerprint })))
        }
        other => Err((StatusCode::NOT_FOUND, format!("no host action {other:?}; use down, up or new-certificate"))),
    }
}

fn make_master(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let q = query(req);
    let id = q
        .get("host")
        .ok_or_else(|| bad("POST /sim/master needs ?host=<ref|uuid|address>"))?;
    {
        let mut st = shared.lock();
        let host = st
            .find_host(id)
            .map_err(|_| (StatusCode::NOT_FOUND, format!("no host {id:?}")))?;
        let pool = st.pool.clone();
        st.db.set("pool", &pool, "master", host).map_err(bad)?;
    }
    shared.changed();
    Ok(json_reply(StatusCode::OK, json!({ "master": id })))
}

fn find_vm(st: &crate::state::State, id: &str) -> Result<String, (StatusCode, String)> {
    if st.db.exists("VM", id) {
        return Ok(id.to_owned());
    }
    st.db
        .by_uuid("VM", id)
        .map_err(|_| (StatusCode::NOT_FOUND, format!("no VM {id:?}")))
}

fn flag(req: &Request<Incoming>, key: &str) -> Result<bool, (StatusCode, String)> {
    match query(req).get(key).map(String::as_str) {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        other => Err(bad(format!(
            "{key}={other:?}: give {key}=true or {key}=false"
        ))),
    }
}

/// Simulated-only: a guest without PV tools has no guest metrics (until they are back).
fn guest_tools(shared: &Shared, id: &str, req: &Request<Incoming>) -> Reply {
    let present = flag(req, "present")?;
    {
        let mut st = shared.lock();
        let vm = find_vm(&st, id)?;
        let running = st.db.str_field("VM", &vm, "power_state").map_err(bad)? == "Running";
        let has_metrics = st
            .db
            .str_field("VM", &vm, "guest_metrics")
            .is_ok_and(|gm| st.db.exists("VM_guest_metrics", &gm));
        if present {
            st.knobs.no_guest_tools.remove(&vm);
            if running && !has_metrics {
                guest_agent::invented(&mut st, &vm, "").map_err(bad)?;
            }
        } else {
            st.knobs.no_guest_tools.insert(vm.clone());
            guest_agent::forget(&mut st, &vm).map_err(bad)?;
        }
    }
    shared.changed();
    Ok(json_reply(
        StatusCode::OK,
        json!({ "vm": id, "present": present }),
    ))
}

/// Simulated-only: a raw VDI import of more than `after` bytes (the one after `skip`
/// such) fails after `after` bytes.
fn import_write_failure(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let q = query(req);
    let after = num(&q, "after")?.ok_or_else(|| bad("give ?after=<bytes>"))?;
    let skip = num(&q, "skip")?.unwrap_or(0);
    let skip = u32::try_from(skip).map_err(|_| bad(format!("skip={skip} is too large")))?;
    shared.lock().knobs.import_write_failure = Some(crate::knobs::ImportFailure { after, skip });
    Ok(json_reply(
        StatusCode::OK,
        json!({ "after": after, "skip": skip }),
    ))
}

/// Simulated-only: the next raw VDI import of more than `after` bytes pauses after them.
fn import_hold(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let after = num(&query(req), "after")?.ok_or_else(|| bad("give ?after=<bytes>"))?;
    shared.lock().knobs.import_hold = Some(crate::knobs::ImportHold {
        after,
        ..Default::default()
    });
    Ok(json_reply(StatusCode::OK, json!({ "after": after })))
}

fn import_hold_state(shared: &Shared) -> Response<Body> {
    let hold = shared.lock().knobs.import_hold;
    json_reply(
        StatusCode::OK,
        json!({
            "armed": hold.is_some(),
            "taken": hold.is_some_and(|h| h.taken),
            "holding": hold.is_some_and(|h| h.holding),
        }),
    )
}

/// Lets a paused import go on; a hold no import took is disarmed.
fn import_release(shared: &Shared) -> Response<Body> {
    {
        let mut st = shared.lock();
        match st.knobs.import_hold.as_mut() {
            Some(h) if h.taken => h.released = true,
            _ => st.knobs.import_hold = None,
        }
    }
    shared.changed();
    json_reply(StatusCode::OK, json!({ "released": true }))
}

/// Simulated-only: makes calls slow (see [`crate::knobs::Latency`]).
fn latency(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let q = query(req);
    let ms = num(&q, "ms")?.ok_or_else(|| bad("give ?ms=<milliseconds>"))?;
    let method = q
        .get("method")
        .map(|m| m.trim_start_matches("Async.").to_owned());
    shared.lock().knobs.latency = (ms > 0).then(|| crate::knobs::Latency {
        delay: std::time::Duration::from_millis(ms),
        method: method.clone(),
    });
    Ok(json_reply(
        StatusCode::OK,
        json!({ "ms": ms, "method": method }),
    ))
}

/// Simulated-only: the guest holds a VBD's device open (or lets it go).
fn held(shared: &Shared, id: &str, req: &Request<Incoming>) -> Reply {
    let held = flag(req, "held")?;
    let mut st = shared.lock();
    let vbd = if st.db.exists("VBD", id) {
        id.to_owned()
    } else {
        st.db
            .by_uuid("VBD", id)
            .map_err(|_| (StatusCode::NOT_FOUND, format!("no VBD {id:?}")))?
    };
    if held {
        st.knobs.held_vbds.insert(vbd.clone());
    } else {
        st.knobs.held_vbds.remove(&vbd);
    }
    Ok(json_reply(
        StatusCode::OK,
        json!({ "vbd": vbd, "held": held }),
    ))
}

async fn kill_abd(shared: &Shared, id: &str) -> Reply {
    let (vm, hook) = {
        let st = shared.lock();
        (find_vm(&st, id)?, st.abd.clone())
    };
    let hook = hook.ok_or_else(|| {
        (
            StatusCode::CONFLICT,
            "the simulator runs no ABD backend; start it with --abd-agent or --abd-backend qemu"
                .to_owned(),
        )
    })?;
    let (reply, pid) = tokio::sync::oneshot::channel();
    hook.send(abd::Action::Kill {
        vm: vm.clone(),
        reply,
    });
    match pid.await.ok().flatten() {
        Some(pid) => Ok(json_reply(StatusCode::OK, json!({ "vm": vm, "pid": pid }))),
        None => Err((
            StatusCode::CONFLICT,
            format!("VM {id} has no running ABD process"),
        )),
    }
}
