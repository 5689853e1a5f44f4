//! `PUT /import?session_id=&sr_id=[&task_id=]`: a VM from an XVA, as xapi imports one.
//!
//! The body is parsed for real by [`a3_shared::xva::read_xva`], off the async workers: a
//! blocking task reads the body through a channel. Every chunk's XXH64 is checked before
//! it is written. `ova.xml` gives the VM (name, memory, vCPUs, boot and platform settings,
//! `other_config`, `is_a_template` as exported), its VDIs (created on the target SR: VHD
//! files on an NFS SR, raw files on a local one), VBDs and VIFs (on the pool network with
//! the exported bridge or name, else the management network).
//!
//! The import runs in a task: the client's `task_id`, or a new one whose ref the reply's
//! `Task-id` header carries, as xapi's HTTP handlers do. On success the task's result is
//! the XML-RPC encoded set of new VM refs (`<value><array><data><value>OpaqueRef:…`), as
//! xapi's import sets it. On failure (`IMPORT_ERROR_SOME_CHECKSUMS_FAILED`,
//! `IMPORT_ERROR_CANNOT_HANDLE_CHUNKED`, `IMPORT_ERROR [msg]`, …) the task fails with that
//! error and everything the import created is destroyed.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::Arc;

use a3_shared::ova_fields;
use a3_shared::xapi_wire::{NULL_REF, Value};
use a3_shared::xva::{self, XvaError, XvaSink};
use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use tokio::sync::mpsc;

use crate::api::{self, VbdSpec, params, vdi};
use crate::errors::{self, ApiError, ApiResult};
use crate::model::Ref;
use crate::server::{query, text};
use crate::sim::Shared;
use crate::state::State;

/// Bodies in flight between the HTTP reader and the parser.
const BODY_QUEUE: usize = 8;

fn import_error(msg: &str) -> ApiError {
    ApiError {
        code: "IMPORT_ERROR",
        params: vec![msg.to_owned()],
    }
}

fn no_params(code: &'static str) -> ApiError {
    ApiError {
        code,
        params: vec![],
    }
}

/// Serves `PUT /import`.
pub async fn import(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let q = query(&req);
    let chunked = req
        .headers()
        .get(header::TRANSFER_ENCODING)
        .is_some_and(|v| !v.is_empty());
    let started = {
        let mut st = shared.lock();
        let s = start(&mut st, &q);
        shared.changed();
        s
    };
    let (task, sr) = match started {
        Ok(t) => t,
        Err((status, msg)) => return text(status, msg),
    };
    let outcome = if chunked {
        // xapi needs the length up front: it cannot import a chunked body.
        Err(no_params("IMPORT_ERROR_CANNOT_HANDLE_CHUNKED"))
    } else {
        run(shared.clone(), req.into_body(), sr).await
    };
    let (status, msg) = finish(&shared, &task, outcome);
    let mut r = text(status, msg);
    if let Ok(v) = header::HeaderValue::from_str(&task) {
        r.headers_mut().insert("task-id", v);
    }
    r
}

/// Checks the session, SR and task; returns the task (created if not given) and the SR.
fn start(
    st: &mut State,
    q: &std::collections::HashMap<String, String>,
) -> Result<(Ref, Ref), (StatusCode, String)> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let session = get("session_id");
    let Some(host) = st.sessions.get(session).map(|s| s.host.clone()) else {
        return Err((
            StatusCode::UNAUTHORIZED,
            format!("session_id {session:?} is not a valid session; log in first"),
        ));
    };
    let sr = match get("sr_id") {
        "" => st
            .db
            .str_field("pool", &st.pool, "default_SR")
            .unwrap_or_default(),
        sr => sr.to_owned(),
    };
    if sr == NULL_REF || !st.db.exists("SR", &sr) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("sr_id {sr:?} is not an SR of this pool (and the pool has no default SR)"),
        ));
    }
    let task = api::task::for_http(st, &host, get("task_id"), "VM import")
        .map_err(|msg| (StatusCode::BAD_REQUEST, msg))?;
    Ok((task, sr))
}

/// Records the outcome on the task; the HTTP status and text to answer with.
fn finish(shared: &Shared, task: &str, outcome: ApiResult<Vec<Ref>>) -> (StatusCode, String) {
    let reply = match &outcome {
        Ok(_) => (StatusCode::OK, String::new()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let set = outcome.map(|vms| Value::Array(vms.into_iter().map(Value::from).collect()));
    api::task::finish(&mut shared.lock(), task, set);
    shared.changed();
    reply
}

/// Streams the body into the parser on a blocking thread.
async fn run(shared: Arc<Shared>, mut body: Incoming, sr: Ref) -> ApiResult<Vec<Ref>> {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(BODY_QUEUE);
    let parser = tokio::task::spawn_blocking(move || {
        import_from(
            shared,
            &sr,
            BodyReader {
                rx,
                pending: Bytes::new(),
            },
        )
    });
    while let Some(frame) = body.frame().await {
        let item = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => Ok(d),
                Err(_) => continue,
            },
            Err(e) => Err(io::Error::other(format!("reading the request body: {e}"))),
        };
        let failed = item.is_err();
        // A closed channel means the parser stopped (an error it reports itself).
        if tx.send(item).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    parser
        .await
        .unwrap_or_else(|e| Err(errors::internal_error(&format!("the import panicked: {e}"))))
}

/// Imports the XVA read from `input` onto `sr` (blocking): the new VM refs, or the
/// error the import task fails with, everything created removed. `PUT /import` runs it
/// on the request body; in-process tests call it directly.
pub fn import_from(shared: Arc<Shared>, sr: &str, input: impl Read) -> ApiResult<Vec<Ref>> {
    let mut sink = Importer {
        shared,
        sr: sr.to_owned(),
        created: Created::default(),
        disks: BTreeMap::new(),
        vm: None,
        failure: None,
    };
    let read = xva::read_xva(input, &mut sink);
    sink.conclude(read)
}

/// The request body as `Read`, for the parser's blocking thread.
struct BodyReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    pending: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.pending = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

/// What the import created, to destroy it all if it fails.
#[derive(Default)]
struct Created {
    vms: Vec<Ref>,
    vdis: Vec<Ref>,
}

/// A disk of the XVA: the VDI it goes to.
struct Disk {
    vdi: Ref,
    uuid: String,
    size: u64,
}

/// The [`XvaSink`] that builds the VM.
struct Importer {
    shared: Arc<Shared>,
    sr: Ref,
    created: Created,
    /// XVA disk refs (`Ref:N`) to their VDIs.
    disks: BTreeMap<String, Disk>,
    vm: Option<Ref>,
    /// The XAPI error behind a refusal of the sink, to report as is.
    failure: Option<ApiError>,
}

impl Importer {
    /// Turns the parser's outcome into the task's, cleaning up after a failure.
    fn conclude(mut self, read: Result<u64, XvaError>) -> ApiResult<Vec<Ref>> {
        let outcome = match read {
            Ok(_) => self
                .vm
                .clone()
                .map(|v| vec![v])
                .ok_or_else(|| import_error("the XVA's ova.xml has no VM object")),
            Err(XvaError::Checksum {
                member,
                expected,
                actual,
            }) => {
                tracing::warn!(%member, %expected, %actual, "XVA import: checksum mismatch");
                Err(no_params("IMPORT_ERROR_SOME_CHECKSUMS_FAILED"))
            }
            Err(XvaError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(no_params("IMPORT_ERROR_PREMATURE_EOF"))
            }
            Err(XvaError::Sink(msg)) => {
                Err(self.failure.take().unwrap_or_else(|| import_error(&msg)))
            }
            Err(e) => Err(import_error(&e.to_string())),
        };
        if outcome.is_err() {
            self.clean_up();
        }
        outcome
    }

    fn clean_up(&mut self) {
        let mut st = self.shared.lock();
        // Destroying a VDI also removes its (unplugged) VBDs and its content.
        for vdi in self.created.vdis.drain(..) {
            if let Err(e) = vdi::destroy_vdi(&mut st, &vdi) {
                tracing::error!("XVA import: cannot remove VDI {vdi} after a failure: {e}");
            }
        }
        for vm in self.created.vms.drain(..) {
            for vbd in st.db.refs_field("VM", &vm, "VBDs").unwrap_or_default() {
                let _ = st.db.remove("VBD", &vbd);
            }
            for vif in st.db.refs_field("VM", &vm, "VIFs").unwrap_or_default() {
                if let Ok(net) = st.db.str_field("VIF", &vif, "network") {
                    st.db.remove_from_set("network", &net, "VIFs", &vif);
                }
                let _ = st.db.remove("VIF", &vif);
            }
            let _ = st.db.remove("VM", &vm);
        }
        drop(st);
        self.shared.changed();
    }

    fn build(&mut self, st: &mut State, ova: &Value) -> ApiResult<()> {
        let objects = ova
            .get("objects")
            .and_then(Value::as_array)
            .ok_or_else(|| import_error("ova.xml has no objects array"))?;
        let mut by_id: BTreeMap<&str, (&str, &Value)> = BTreeMap::new();
        for o in objects {
            let (Some(class), Some(id), Some(snap)) =
                (o.get_str("class"), o.get_str("id"), o.get("snapshot"))
            else {
                return Err(import_error(
                    "an ova.xml object lacks class, id or snapshot",
                ));
            };
            by_id.insert(id, (class, snap));
        }
        check_records(&by_id)?;
        let vms: Vec<(&str, &Value)> = by_id
            .iter()
            .filter(|(_, (c, s))| {
                *c == "VM" && s.get("is_a_snapshot").and_then(Value::as_bool) != Some(true)
            })
            .map(|(id, (_, s))| (*id, *s))
            .collect();
        let [(_, vm_snap)] = vms.as_slice() else {
            return Err(import_error(&format!(
                "ova.xml holds {} VMs (snapshots aside); the simulator imports exactly one",
                vms.len()
            )));
        };
        let vm = create_vm(st, vm_snap)?;
        self.created.vms.push(vm.clone());
        self.vm = Some(vm.clone());
        let refs = |v: &Value, f: &str| -> Vec<String> {
            v.get(f)
                .and_then(Value::as_array)
                .unwrap_or_default()
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        };
        for vbd_id in refs(vm_snap, "VBDs") {
            let Some(("VBD", vbd)) = by_id.get(vbd_id.as_str()).copied() else {
                return Err(ApiError {
                    code: "IMPORT_ERROR_FAILED_TO_FIND_OBJECT",
                    params: vec![vbd_id],
                });
            };
            let s = |f: &str| vbd.get_str(f).unwrap_or("").to_owned();
            let vdi_id = s("VDI");
            let empty = vbd.get("empty").and_then(Value::as_bool).unwrap_or(false);
            let vdi = match by_id.get(vdi_id.as_str()).copied() {
                Some(("VDI", rec)) if !empty => self.create_disk(st, &vdi_id, rec)?,
                _ if empty || vdi_id == NULL_REF || s("type") == "CD" => NULL_REF.to_owned(),
                _ => {
                    return Err(ApiError {
                        code: "IMPORT_ERROR_FAILED_TO_FIND_OBJECT",
                        params: vec![vdi_id],
                    });
                }
            };
            let spec = VbdSpec {
                userdevice: s("userdevice"),
                ty: match s("type").as_str() {
                    "" => "Disk".into(),
                    t => t.to_owned(),
                },
                mode: match s("mode").as_str() {
                    "" => "RW".into(),
                    m => m.to_owned(),
                },
                bootable: vbd
                    .get("bootable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                empty: vdi == NULL_REF,
            };
            api::create_vbd(st, &vm, &vdi, &spec)?;
        }
        let mgmt = management_network(st)?;
        for vif_id in refs(vm_snap, "VIFs") {
            let Some(("VIF", vif)) = by_id.get(vif_id.as_str()).copied() else {
                return Err(ApiError {
                    code: "IMPORT_ERROR_FAILED_TO_FIND_OBJECT",
                    params: vec![vif_id],
                });
            };
            let exported = vif
                .get_str("network")
                .and_then(|n| by_id.get(n))
                .filter(|(c, _)| *c == "network")
                .map(|(_, rec)| *rec);
            let net = exported
                .and_then(|rec| matching_network(st, rec))
                .unwrap_or_else(|| mgmt.clone());
            let device = vif.get_str("device").unwrap_or("0");
            api::create_vif(st, &vm, &net, device, vif.get_str("MAC").unwrap_or(""))?;
        }
        Ok(())
    }

    fn create_disk(&mut self, st: &mut State, id: &str, rec: &Value) -> ApiResult<Ref> {
        let size = rec
            .get("virtual_size")
            .and_then(Value::as_i64)
            .filter(|s| *s >= 0)
            .ok_or_else(|| import_error(&format!("VDI {id} has no usable virtual_size")))?;
        let ty = rec.get_str("type").unwrap_or("user");
        let vdi = api::create_vdi(
            st,
            rec.get_str("name_label").unwrap_or(""),
            &self.sr,
            size,
            ty,
            None,
        )?;
        self.created.vdis.push(vdi.clone());
        st.db.update("VDI", &vdi, |r| {
            for f in [
                "name_description",
                "other_config",
                "sm_config",
                "read_only",
                "sharable",
                "tags",
            ] {
                if let Some(v) = rec.get(f)
                    && let Ok(v) = params::coerce(f, &r[f], v.clone())
                {
                    r.insert(f.to_owned(), v);
                }
            }
        })?;
        let uuid = st.db.str_field("VDI", &vdi, "uuid")?;
        self.disks.insert(
            id.to_owned(),
            Disk {
                vdi: vdi.clone(),
                uuid,
                size: size as u64,
            },
        );
        Ok(vdi)
    }
}

impl XvaSink for Importer {
    fn metadata(&mut self, ova: &Value) -> Result<(), String> {
        let vsn = ova
            .get("version")
            .and_then(|v| v.get("export_vsn"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if vsn < 2 {
            return Err(format!(
                "export_vsn {vsn}: only XVA format 2 (Ref:N/%08d chunks with checksums) is served"
            ));
        }
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let built = self.build(&mut st, ova);
        drop(st);
        shared.changed();
        built.map_err(|e| {
            let msg = e.to_string();
            self.failure = Some(e);
            msg
        })
    }

    fn chunk(&mut self, disk_ref: &str, offset: u64, data: &[u8]) -> Result<(), String> {
        let disk = self
            .disks
            .get(disk_ref)
            .ok_or_else(|| format!("chunk of {disk_ref}, which no VBD of the VM uses"))?;
        if offset + data.len() as u64 > disk.size {
            return Err(format!(
                "chunk at {offset} of {disk_ref} is past its virtual_size {}",
                disk.size
            ));
        }
        if data.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let mut st = self.shared.lock();
        st.disks
            .write(&disk.uuid, offset, data)
            .map_err(|e| e.to_string())?;
        let _ = vdi::refresh_utilisation(&mut st, &disk.vdi);
        Ok(())
    }
}

/// The new VM, as import.ml makes it: `VM.create_from_record` of the exported record (the
/// fields `VM.create` takes, over a fresh halted VM), then its affinity looked up among the
/// imported objects, which hold no host here, so none.
fn create_vm(st: &mut State, snap: &Value) -> ApiResult<Ref> {
    let fields = snap
        .as_struct()
        .ok_or_else(|| import_error("the VM object's snapshot is not a struct"))?;
    let vm = api::create_vm(st, fields, api::VM_CREATE_FIELDS)
        .map_err(|e| import_error(&format!("the VM record: {e}")))?;
    st.db.set("VM", &vm, "affinity", crate::model::null())?;
    Ok(vm)
}

/// Refuses records xapi's import cannot read ([`ova_fields`]), in the order import.ml
/// reads them: every VBD, then each disk VBD's VDI and that VDI's SR (which must be in the
/// export: `IMPORT_ERROR_FAILED_TO_FIND_OBJECT [id]`), then the SR, VDI, VM, network, VBD
/// and VIF objects, as its handlers run.
fn check_records(by_id: &BTreeMap<&str, (&str, &Value)>) -> ApiResult<()> {
    let strict = |class: &str, rec: &Value| match ova_fields::missing(class, rec) {
        Some(field) => Err(import_error(&ova_fields::missing_message(field))),
        None => Ok(()),
    };
    let of_class = |class: &'static str| {
        by_id
            .values()
            .filter(move |(c, _)| *c == class)
            .map(|(_, rec)| *rec)
    };
    let find = |id: &str, class: &str| match by_id.get(id) {
        Some((c, rec)) if *c == class => Ok(*rec),
        _ => Err(ApiError {
            code: "IMPORT_ERROR_FAILED_TO_FIND_OBJECT",
            params: vec![id.to_owned()],
        }),
    };
    for vbd in of_class("VBD") {
        strict("VBD", vbd)?;
    }
    for vbd in of_class("VBD").filter(|v| v.get_str("type") != Some("CD")) {
        let vdi = find(vbd.get_str("VDI").unwrap_or_default(), "VDI")?;
        strict("VDI", vdi)?;
        strict("SR", find(vdi.get_str("SR").unwrap_or_default(), "SR")?)?;
    }
    for class in ["SR", "VDI", "VM", "network", "VBD", "VIF"] {
        for rec in of_class(class) {
            strict(class, rec)?;
        }
    }
    Ok(())
}

/// The pool's management network.
fn management_network(st: &State) -> ApiResult<Ref> {
    st.db
        .table("PIF")
        .find(|(_, p)| p.get("management").and_then(Value::as_bool) == Some(true))
        .and_then(|(_, p)| p.get("network").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| import_error("the pool has no management network"))
}

/// The pool network with the exported network's bridge, else its name.
fn matching_network(st: &State, exported: &Value) -> Option<Ref> {
    let want = |f: &str| exported.get_str(f).filter(|s| !s.is_empty());
    ["bridge", "name_label"].into_iter().find_map(|f| {
        let w = want(f)?;
        st.db
            .table("network")
            .find(|(_, n)| n.get(f).and_then(Value::as_str) == Some(w))
            .map(|(r, _)| r.clone())
    })
}
