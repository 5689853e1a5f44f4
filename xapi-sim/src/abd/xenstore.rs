//! A running ABD's xenstore: a unix socket speaking the xenbus wire protocol
//! (`a3_shared::xenstore`), standing in for `/dev/xen/xenbus` in the guest.
//!
//! It serves the VM's own slice of xenstore as xapi and xenopsd lay it out: relative paths
//! (and `/local/domain/<domid>/...`) resolve under the VM's home; the `vm-data/...` nodes
//! are the VM's `xenstore_data` keys. Guest writes go through [`guest_agent::guest_write`]:
//! under `vm-data/` they flow back into `VM.xenstore_data` (a `mod` event, as xapi emits
//! when it syncs guest data), `feature/hotplug/*` fills the guest metrics, and writes
//! outside the nodes xenopsd makes guest-writable are refused with `EACCES`.

use std::path::Path;
use std::sync::Arc;

use a3_shared::xapi_wire::Value;
use a3_shared::xenstore::{
    Incoming, MsgType, ReplyBody, Request, RequestDecoder, encode_error, encode_reply,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::guest_agent::{self, WriteError};
use crate::model::Ref;
use crate::sim::Shared;

/// Listens on `path` for the guest of `vm`; the task ends when aborted.
pub fn serve(shared: Arc<Shared>, vm: Ref, path: &Path) -> std::io::Result<JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(shared.clone(), vm.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(%vm, "xenstore socket: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn connection(shared: Arc<Shared>, vm: Ref, mut stream: UnixStream) {
    let mut dec = RequestDecoder::default();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        dec.feed(&buf[..n]);
        loop {
            let reply = match dec.next_request() {
                Ok(None) => break,
                Ok(Some(Incoming::Refused {
                    req_id,
                    tx_id,
                    errno,
                })) => encode_error(req_id, tx_id, errno),
                Ok(Some(Incoming::Request(req))) => answer(&shared, &vm, &req),
                Err(e) => {
                    tracing::warn!(%vm, "xenstore socket: {e}; closing the connection");
                    return;
                }
            };
            if stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

/// The reply to one request, computed under the state lock.
fn answer(shared: &Shared, vm: &str, req: &Request) -> Vec<u8> {
    let err = |errno| encode_error(req.req_id, req.tx_id, errno);
    let mut st = shared.lock();
    let Ok(domid) = st
        .db
        .field("VM", vm, "domid")
        .map(|v| v.as_i64().unwrap_or(-1))
    else {
        return err("ENOENT");
    };
    let home = format!("/local/domain/{domid}/");
    let path = match req.path.strip_prefix(&home) {
        Some(rel) => rel,
        None if req.path.starts_with('/') => return err("EACCES"),
        None => req.path.as_str(),
    }
    .trim_end_matches('/');
    let data: Vec<(String, String)> = match st.db.field("VM", vm, "xenstore_data") {
        Ok(Value::Struct(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect(),
        _ => Vec::new(),
    };
    let reply = match req.kind {
        MsgType::Read => match data.iter().find(|(k, _)| k == path) {
            Some((_, v)) => encode_reply(req, ReplyBody::Value(v.as_bytes())),
            None if children(&data, path).is_empty() => return err("ENOENT"),
            None => encode_reply(req, ReplyBody::Value(b"")), // an inner node
        },
        MsgType::Directory => {
            let names = children(&data, path);
            if names.is_empty() && !data.iter().any(|(k, _)| k == path) {
                return err("ENOENT");
            }
            encode_reply(req, ReplyBody::Children(&names))
        }
        MsgType::Write => {
            let Ok(value) = String::from_utf8(req.value.clone().unwrap_or_default()) else {
                return err("EINVAL");
            };
            let written = guest_agent::guest_write(&mut st, vm, path, &value);
            drop(st);
            match written {
                Ok(()) => shared.changed(),
                Err(WriteError::Denied) => return err("EACCES"),
                Err(WriteError::NoVm) => return err("ENOENT"),
            }
            encode_reply(req, ReplyBody::Ok)
        }
        MsgType::Error => return err("ENOSYS"),
    };
    reply.unwrap_or_else(|_| err("E2BIG"))
}

/// The names one level below `dir` among the keys.
fn children(data: &[(String, String)], dir: &str) -> Vec<String> {
    let prefix = format!("{dir}/");
    let mut names: Vec<String> = data
        .iter()
        .filter_map(|(k, _)| k.strip_prefix(&prefix))
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_one_level_down_and_unique() {
        let data: Vec<(String, String)> = [
            "vm-data/abd/a3",
            "vm-data/abd/ip",
            "vm-data/abd/x/y",
            "vm-data/abd/x/z",
            "vm-data/other",
        ]
        .iter()
        .map(|k| (k.to_string(), String::new()))
        .collect();
        assert_eq!(children(&data, "vm-data/abd"), ["a3", "ip", "x"]);
        assert_eq!(children(&data, "vm-data"), ["abd", "other"]);
        assert!(children(&data, "vm-data/none").is_empty());
    }
}
