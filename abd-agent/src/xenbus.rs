//! A small blocking xenstore client: the guest's side of `/dev/xen/xenbus`, or of the unix
//! socket the simulator's process backend gives an ABD in its place (same bytes, framed by
//! `a3_shared::xenstore`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use a3_shared::xenstore::{Decoder, MsgType, XenstoreError, encode_request};
use anyhow::{Context, bail};

/// Where a guest's xenstore device lives (xenfs).
pub const XENBUS: &str = "/dev/xen/xenbus";
/// The xenstore directory holding the ABD's boot config, relative to the domain's home.
pub const ABD_DIR: &str = "vm-data/abd";
/// Where the ABD reports the address it got.
pub const ASSIGNED_IP: &str = "vm-data/abd/assigned-ip";

/// The nodes through which a guest's PV drivers claim disk and NIC hot-plug; xapi's guest
/// agent reads them into `VM_guest_metrics.can_use_hotplug_vbd`/`_vif`
/// (xen-api `ocaml/xapi/xapi_guest_agent.ml`), and refuses hot-plug into an HVM guest
/// without them (`VM_MISSING_PV_DRIVERS`). The agent's kernel has blkfront and netfront.
pub const PV_FEATURES: [&str; 2] = ["feature/hotplug/vbd", "feature/hotplug/vif"];
/// The console line carrying a xenstore write where there is no xenstore (qemu):
/// `abd-xenstore-write: <path>=<value>`; xapi-sim's qemu backend applies it.
pub const CONSOLE_WRITE: &str = "abd-xenstore-write: ";

/// Claims hot-plug support ([`PV_FEATURES`] = 1): in xenstore, else on the console.
pub fn report_pv_features(xs: Option<&mut Xenstore<Transport>>) {
    match xs {
        Some(xs) => {
            for node in PV_FEATURES {
                if let Err(e) = xs.write(node, "1") {
                    tracing::error!("xenstore: cannot write {node}: {e:#}");
                }
            }
        }
        None => {
            for node in PV_FEATURES {
                eprintln!("{CONSOLE_WRITE}{node}=1");
            }
        }
    }
}

/// A byte stream to xenstored: the xenbus character device or a unix socket.
pub type Transport = Box<dyn ReadWrite + Send>;

/// Read + Write, boxable.
pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A blocking xenstore client over any byte stream.
pub struct Xenstore<S> {
    stream: S,
    decoder: Decoder,
    next_id: u32,
}

/// Opens `path`: a unix socket (the simulator) is connected, a device is opened read-write.
pub fn open(path: &Path) -> anyhow::Result<Xenstore<Transport>> {
    let what = || format!("xenstore {}: cannot open", path.display());
    let meta = std::fs::metadata(path).with_context(what)?;
    let stream: Transport = if meta.file_type().is_socket() {
        Box::new(UnixStream::connect(path).with_context(what)?)
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .with_context(what)?,
        )
    };
    Ok(Xenstore::new(stream))
}

impl<S: Read + Write> Xenstore<S> {
    /// Wraps an open transport.
    pub fn new(stream: S) -> Self {
        Xenstore {
            stream,
            decoder: Decoder::default(),
            next_id: 1,
        }
    }

    fn call(&mut self, kind: MsgType, path: &str, value: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.stream
            .write_all(&encode_request(kind, id, path, value)?)
            .with_context(|| format!("xenstore {path}: write"))?;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(reply) = self.decoder.next_reply()? {
                if reply.req_id != id {
                    continue; // a stale reply; ours follows
                }
                return Ok(match kind {
                    MsgType::Directory => reply.into_children()?.join("\0").into_bytes(),
                    _ => reply.into_value(kind)?,
                });
            }
            let n = self
                .stream
                .read(&mut buf)
                .with_context(|| format!("xenstore {path}: read"))?;
            if n == 0 {
                bail!("xenstore {path}: the connection closed mid-reply");
            }
            self.decoder.feed(&buf[..n]);
        }
    }

    /// A node's value.
    pub fn read(&mut self, path: &str) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&self.call(MsgType::Read, path, None)?).into_owned())
    }

    /// Sets a node's value.
    pub fn write(&mut self, path: &str, value: &str) -> anyhow::Result<()> {
        self.call(MsgType::Write, path, Some(value.as_bytes()))
            .map(drop)
    }

    /// The `vm-data/abd/*` keys; none when the directory does not exist.
    pub fn abd_keys(&mut self) -> anyhow::Result<BTreeMap<String, String>> {
        let children = match self.call(MsgType::Directory, ABD_DIR, None) {
            Ok(list) => list,
            Err(e) if is_enoent(&e) => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let mut keys = BTreeMap::new();
        for name in String::from_utf8_lossy(&children)
            .split('\0')
            .filter(|n| !n.is_empty())
        {
            keys.insert(name.to_owned(), self.read(&format!("{ABD_DIR}/{name}"))?);
        }
        Ok(keys)
    }
}

fn is_enoent(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref(), Some(XenstoreError::Refused(errno)) if errno == "ENOENT")
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use a3_shared::xenstore::{Incoming, ReplyBody, RequestDecoder, encode_error, encode_reply};

    use super::*;

    /// A fake xenstored on a unix socket: answers from a key map, records writes.
    fn fake_xenstored(
        listener: UnixListener,
        nodes: BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let (mut sock, _) = listener.accept().unwrap();
        let mut written = BTreeMap::new();
        let mut dec = RequestDecoder::default();
        let mut buf = [0u8; 7]; // odd reads: the framing must not care
        loop {
            let n = sock.read(&mut buf).unwrap();
            if n == 0 {
                return written;
            }
            dec.feed(&buf[..n]);
            while let Some(incoming) = dec.next_request().unwrap() {
                let Incoming::Request(req) = incoming else {
                    panic!("client sent {incoming:?}")
                };
                let key = req.path.strip_prefix("vm-data/abd/");
                let reply = match req.kind {
                    MsgType::Directory if req.path == ABD_DIR => {
                        let names: Vec<String> = nodes.keys().cloned().collect();
                        encode_reply(&req, ReplyBody::Children(&names)).unwrap()
                    }
                    MsgType::Read => match key.and_then(|k| nodes.get(k)) {
                        Some(v) => encode_reply(&req, ReplyBody::Value(v.as_bytes())).unwrap(),
                        None => encode_error(req.req_id, 0, "ENOENT"),
                    },
                    MsgType::Write => {
                        let value = String::from_utf8(req.value.clone().unwrap()).unwrap();
                        written.insert(req.path.clone(), value);
                        encode_reply(&req, ReplyBody::Ok).unwrap()
                    }
                    _ => encode_error(req.req_id, 0, "ENOENT"),
                };
                sock.write_all(&reply).unwrap();
            }
        }
    }

    #[test]
    fn reads_keys_and_writes_assigned_ip_over_a_socket() {
        let dir = std::env::temp_dir().join(format!("abd-xenbus-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("xenbus.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let nodes: BTreeMap<String, String> = [("a3", "10.0.2.2:2811"), ("ip", "dhcp")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let server = std::thread::spawn(move || fake_xenstored(listener, nodes));
        let mut xs = open(&path).unwrap();
        let keys = xs.abd_keys().unwrap();
        assert_eq!(keys.get("a3").map(String::as_str), Some("10.0.2.2:2811"));
        assert_eq!(keys.len(), 2);
        let err = format!("{:#}", xs.read("vm-data/abd/missing").unwrap_err());
        assert!(err.contains("ENOENT"), "{err}");
        xs.write(ASSIGNED_IP, "10.0.2.15/24").unwrap();
        drop(xs);
        let written = server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            written.get(ASSIGNED_IP).map(String::as_str),
            Some("10.0.2.15/24")
        );
    }

    #[test]
    fn a_missing_config_dir_is_no_keys_and_a_missing_device_is_named() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut theirs = theirs;
            let mut dec = RequestDecoder::default();
            let mut buf = [0u8; 256];
            let n = theirs.read(&mut buf).unwrap();
            dec.feed(&buf[..n]);
            let Some(Incoming::Request(req)) = dec.next_request().unwrap() else {
                panic!("no request")
            };
            theirs
                .write_all(&encode_error(req.req_id, 0, "ENOENT"))
                .unwrap();
        });
        let mut xs = Xenstore::new(ours);
        assert!(xs.abd_keys().unwrap().is_empty());
        server.join().unwrap();
        let err = format!(
            "{:#}",
            open(Path::new("/nonexistent/xenbus")).err().unwrap()
        );
        assert!(err.contains("/nonexistent/xenbus"), "{err}");
    }
}
