//! The simulator's NFSv3 client: a mounted export as a [`FileStore`].
//!
//! [`NfsMount::mount`] does what XCP-ng's `mount.nfs` does for an NFS SR: it asks the
//! server's portmapper (port 111) for the MOUNT and NFS v3 ports, mounts the export with
//! AUTH_UNIX root credentials, and talks NFSv3 over TCP (the `nfs3_client` crate). Each
//! mount is a task on one background runtime thread shared by all mounts; the blocking
//! [`FileStore`] calls send it requests and wait for the reply, inside
//! `tokio::task::block_in_place` when called from a multi-threaded runtime, so the
//! simulator's async workers keep serving while the NFS round trips run.
//!
//! Like a soft mount, an operation gives up after [`OP_TIMEOUT`]; a broken connection is
//! re-established (portmapper, MOUNT, NFS) on the next operation, as the kernel client
//! reconnects after a server restart. Dropping the mount sends UMNT.

use std::collections::HashMap;
use std::io;
use std::sync::{LazyLock, mpsc as std_mpsc};
use std::time::Duration;

use nfs3_client::nfs3_types::nfs3::{
    CREATE3args, GETATTR3args, LOOKUP3args, MKDIR3args, Nfs3Option, Nfs3Result, READ3args,
    READDIR3args, REMOVE3args, RMDIR3args, WRITE3args, cookieverf3, createhow3, diropargs3,
    filename3, nfs_fh3, nfsstat3, sattr3, stable_how,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{ConnectError, Nfs3Connection, Nfs3ConnectionBuilder, RpcError};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::file_store::{FileStore, components};
use crate::sim::blocking;

/// How long one NFS operation may take before it fails (XCP-ng mounts soft, timeo=200).
pub const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest READ/WRITE sent, whatever the server allows.
const MAX_IO: u32 = 1 << 20;

/// What an NFS SR's `device_config` names: the server and the exported path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfsTarget {
    /// `device_config:server`, an IP address.
    pub server: String,
    /// `device_config:serverpath`, the export.
    pub export: String,
}

impl std::fmt::Display for NfsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nfs://{}{}", self.server, self.export)
    }
}

/// The runtime thread that runs every mount's task.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("xapi-sim-nfs")
        .enable_all()
        .build()
        .expect("the NFS client's runtime thread starts")
});

/// Runs `fut` on the NFS runtime and waits for its output.
fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> io::Result<T> {
    let (tx, rx) = std_mpsc::sync_channel(1);
    RUNTIME.spawn(async move {
        let _ = tx.send(fut.await);
    });
    blocking(|| rx.recv()).map_err(|_| io::Error::other("the NFS client's runtime stopped"))
}

type Conn = Nfs3Connection<TokioIo<TcpStream>>;

enum Op {
    Read(String, u64, usize),
    Write(String, u64, Vec<u8>),
    Create(String),
    Len(String),
    Remove(String),
    List(String),
    Mkdir(String),
    Rmdir(String),
}

enum Reply {
    Data(Vec<u8>),
    Len(u64),
    Names(Vec<String>),
    Done,
}

struct Job {
    op: Op,
    reply: std_mpsc::SyncSender<io::Result<Reply>>,
}

/// A mounted NFS export.
#[derive(Debug)]
pub struct NfsMount {
    target: NfsTarget,
    jobs: mpsc::UnboundedSender<Job>,
}

/// Why a mount failed, in the words `mount.nfs` would use.
#[derive(Debug, thiserror::Error)]
#[error("mount of {target} failed: {reason}")]
pub struct MountError {
    /// What was mounted.
    pub target: NfsTarget,
    /// Why it failed.
    pub reason: String,
}

impl NfsMount {
    /// Mounts `target` through the portmapper on port 111 of the server.
    pub fn mount(target: &NfsTarget) -> Result<NfsMount, MountError> {
        let t = target.clone();
        let connected = run(async move { Session::connect(&t).await })
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        let session = connected.map_err(|reason| MountError {
            target: target.clone(),
            reason,
        })?;
        let (jobs, rx) = mpsc::unbounded_channel();
        RUNTIME.spawn(serve(session, rx));
        Ok(NfsMount {
            target: target.clone(),
            jobs,
        })
    }

    /// What this mount mounted.
    pub fn target(&self) -> &NfsTarget {
        &self.target
    }

    fn call(&self, op: Op) -> io::Result<Reply> {
        let (reply, rx) = std_mpsc::sync_channel(1);
        self.jobs
            .send(Job { op, reply })
            .map_err(|_| io::Error::other(format!("{}: the mount is gone", self.target)))?;
        blocking(|| rx.recv())
            .map_err(|_| io::Error::other(format!("{}: the mount is gone", self.target)))?
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.target)))
    }
}

fn unexpected() -> io::Error {
    io::Error::other("the NFS client got a reply of the wrong kind")
}

impl FileStore for NfsMount {
    fn describe(&self) -> String {
        self.target.to_string()
    }

    fn read_at(&self, path: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.call(Op::Read(path.to_owned(), offset, buf.len()))? {
            Reply::Data(d) if d.len() == buf.len() => {
                buf.copy_from_slice(&d);
                Ok(())
            }
            _ => Err(unexpected()),
        }
    }

    fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.call(Op::Write(path.to_owned(), offset, data.to_vec()))
            .map(drop)
    }

    fn create(&self, path: &str) -> io::Result<()> {
        self.call(Op::Create(path.to_owned())).map(drop)
    }

    fn len(&self, path: &str) -> io::Result<u64> {
        match self.call(Op::Len(path.to_owned()))? {
            Reply::Len(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.call(Op::Remove(path.to_owned())).map(drop)
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        match self.call(Op::List(dir.to_owned()))? {
            Reply::Names(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    fn mkdir(&self, dir: &str) -> io::Result<()> {
        self.call(Op::Mkdir(dir.to_owned())).map(drop)
    }

    fn rmdir(&self, dir: &str) -> io::Result<()> {
        self.call(Op::Rmdir(dir.to_owned())).map(drop)
    }
}

/// The mount's task: runs jobs one at a time until the mount is dropped, then unmounts.
async fn serve(mut session: Session, mut jobs: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = jobs.recv().await {
        let out = session.run(job.op).await;
        let _ = job.reply.send(out);
    }
    if let Some(conn) = session.conn.take() {
        let _ = tokio::time::timeout(OP_TIMEOUT, conn.unmount()).await;
    }
}

/// One mount's connection and what it learned.
struct Session {
    target: NfsTarget,
    conn: Option<Conn>,
    root: nfs_fh3,
    /// File handles by path, so a path is looked up once.
    handles: HashMap<String, nfs_fh3>,
    rtmax: u32,
    wtmax: u32,
}

/// An operation's failure: whether the connection is still good decides a retry.
enum Failure {
    /// The server answered with an NFS error.
    Nfs(io::Error),
    /// The transport failed: reconnect.
    Transport(String),
}

impl From<RpcError> for Failure {
    fn from(e: RpcError) -> Self {
        Failure::Transport(e.to_string())
    }
}

fn nfs_err(what: &str, path: &str, stat: nfsstat3) -> Failure {
    use io::ErrorKind as K;
    let kind = match stat {
        nfsstat3::NFS3ERR_NOENT => K::NotFound,
        nfsstat3::NFS3ERR_EXIST => K::AlreadyExists,
        nfsstat3::NFS3ERR_PERM | nfsstat3::NFS3ERR_ACCES | nfsstat3::NFS3ERR_ROFS => {
            K::PermissionDenied
        }
        nfsstat3::NFS3ERR_NOSPC => K::StorageFull,
        _ => K::Other,
    };
    Failure::Nfs(io::Error::new(kind, format!("{what} {path:?}: {stat:?}")))
}

fn name(n: &str) -> filename3<'_> {
    filename3(Opaque::borrowed(n.as_bytes()))
}

fn credential() -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 0,
        machinename: Opaque::borrowed(b"xapi-sim"),
        uid: 0,
        gid: 0,
        gids: vec![],
    })
}

impl Session {
    async fn connect(target: &NfsTarget) -> Result<Session, String> {
        let mut s = Session {
            target: target.clone(),
            conn: None,
            root: nfs_fh3::default(),
            handles: HashMap::new(),
            rtmax: MAX_IO,
            wtmax: MAX_IO,
        };
        s.reconnect().await?;
        Ok(s)
    }

    async fn reconnect(&mut self) -> Result<(), String> {
        self.conn = None;
        self.handles.clear();
        let t = &self.target;
        // Unprivileged source ports: this simulator mounts and unmounts often, and a
        // privileged port in TIME_WAIT cannot connect to the same server again at once.
        let builder = Nfs3ConnectionBuilder::new(TokioConnector, &t.server, &t.export)
            .connect_from_privileged_port(false)
            .credential(credential());
        let mut conn = match tokio::time::timeout(OP_TIMEOUT, builder.mount()).await {
            Err(_) => return Err(format!("no answer within {OP_TIMEOUT:?}")),
            Ok(Err(ConnectError::Io(e))) => {
                return Err(format!(
                    "cannot reach the portmapper or NFS service on {}: {e}",
                    t.server
                ));
            }
            Ok(Err(ConnectError::Portmap(e))) => {
                return Err(format!("portmapper on {}:111: {e}", t.server));
            }
            Ok(Err(ConnectError::Mount(e))) => {
                return Err(format!("export {}: {e}", t.export));
            }
            Ok(Ok(c)) => c,
        };
        self.root = conn.root_nfs_fh3();
        let info = conn
            .fsinfo(&nfs3_client::nfs3_types::nfs3::FSINFO3args {
                fsroot: self.root.clone(),
            })
            .await
            .map_err(|e| format!("FSINFO on {t}: {e}"))?;
        if let Nfs3Result::Ok(info) = info {
            self.rtmax = info.rtmax.clamp(4096, MAX_IO);
            self.wtmax = info.wtmax.clamp(4096, MAX_IO);
        }
        self.conn = Some(conn);
        Ok(())
    }

    async fn run(&mut self, op: Op) -> io::Result<Reply> {
        for attempt in 0..2 {
            if self.conn.is_none()
                && let Err(e) = self.reconnect().await
            {
                return Err(io::Error::other(format!("reconnecting: {e}")));
            }
            match tokio::time::timeout(OP_TIMEOUT, self.run_once(&op)).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(Failure::Nfs(e))) => {
                    // A handle may have gone stale behind our back.
                    self.handles.clear();
                    return Err(e);
                }
                Ok(Err(Failure::Transport(e))) if attempt == 1 => {
                    self.conn = None;
                    return Err(io::Error::other(e));
                }
                Err(_) if attempt == 1 => {
                    self.conn = None;
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {OP_TIMEOUT:?}"),
                    ));
                }
                _ => self.conn = None,
            }
        }
        unreachable!("the second attempt returns")
    }

    fn conn(&mut self) -> Result<&mut Conn, Failure> {
        self.conn
            .as_mut()
            .ok_or_else(|| Failure::Transport("not connected".into()))
    }

    /// The handle of `path` (the root for "").
    async fn resolve(&mut self, path: &str) -> Result<nfs_fh3, Failure> {
        let parts = components(path).map_err(Failure::Nfs)?;
        let mut fh = self.root.clone();
        let mut so_far = String::new();
        for p in parts {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(p);
            if let Some(h) = self.handles.get(&so_far) {
                fh = h.clone();
                continue;
            }
            let args = LOOKUP3args {
                what: diropargs3 {
                    dir: fh,
                    name: name(p),
                },
            };
            fh = match self.conn()?.lookup(&args).await? {
                Nfs3Result::Ok(ok) => ok.object,
                Nfs3Result::Err((stat, _)) => return Err(nfs_err("lookup", &so_far, stat)),
            };
            self.handles.insert(so_far.clone(), fh.clone());
        }
        Ok(fh)
    }

    /// The handle of `path`'s directory and its last name.
    async fn parent<'p>(&mut self, path: &'p str) -> Result<(nfs_fh3, &'p str), Failure> {
        let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
        if file.is_empty() || file == "." || file == ".." {
            return Err(Failure::Nfs(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?} does not name a file"),
            )));
        }
        Ok((self.resolve(dir).await?, file))
    }

    async fn run_once(&mut self, op: &Op) -> Result<Reply, Failure> {
        match op {
            Op::Read(path, offset, len) => self.read(path, *offset, *len).await,
            Op::Write(path, offset, data) => self.write(path, *offset, data).await,
            Op::Create(path) => {
                let (dir, file) = self.parent(path).await?;
                let args = CREATE3args {
                    where_: diropargs3 {
                        dir,
                        name: name(file),
                    },
                    how: createhow3::UNCHECKED(sattr3 {
                        mode: Nfs3Option::Some(0o644),
                        size: Nfs3Option::Some(0),
                        ..Default::default()
                    }),
                };
                match self.conn()?.create(&args).await? {
                    Nfs3Result::Ok(_) => Ok(Reply::Done),
                    Nfs3Result::Err((stat, _)) => Err(nfs_err("create", path, stat)),
                }
            }
            Op::Len(path) => {
                let object = self.resolve(path).await?;
                match self.conn()?.getattr(&GETATTR3args { object }).await? {
                    Nfs3Result::Ok(ok) => Ok(Reply::Len(ok.obj_attributes.size)),
                    Nfs3Result::Err((stat, _)) => Err(nfs_err("getattr", path, stat)),
                }
            }
            Op::Remove(path) | Op::Rmdir(path) => {
                let (dir, file) = self.parent(path).await?;
                let object = diropargs3 {
                    dir,
                    name: name(file),
                };
                let is_dir = matches!(op, Op::Rmdir(_));
                let conn = self.conn()?;
                let res = if is_dir {
                    match conn.rmdir(&RMDIR3args { object }).await? {
                        Nfs3Result::Ok(_) => Ok(()),
                        Nfs3Result::Err((stat, _)) => Err(stat),
                    }
                } else {
                    match conn.remove(&REMOVE3args { object }).await? {
                        Nfs3Result::Ok(_) => Ok(()),
                        Nfs3Result::Err((stat, _)) => Err(stat),
                    }
                };
                self.handles.remove(path.as_str());
                res.map(|()| Reply::Done)
                    .map_err(|stat| nfs_err("remove", path, stat))
            }
            Op::List(dir) => self.list(dir).await,
            Op::Mkdir(path) => {
                let (dir, file) = self.parent(path).await?;
                let args = MKDIR3args {
                    where_: diropargs3 {
                        dir,
                        name: name(file),
                    },
                    attributes: sattr3 {
                        mode: Nfs3Option::Some(0o755),
                        ..Default::default()
                    },
                };
                match self.conn()?.mkdir(&args).await? {
                    Nfs3Result::Ok(_) | Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => {
                        Ok(Reply::Done)
                    }
                    Nfs3Result::Err((stat, _)) => Err(nfs_err("mkdir", path, stat)),
                }
            }
        }
    }

    async fn read(&mut self, path: &str, offset: u64, len: usize) -> Result<Reply, Failure> {
        let file = self.resolve(path).await?;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let count = ((len - out.len()) as u32).min(self.rtmax);
            let args = READ3args {
                file: file.clone(),
                offset: offset + out.len() as u64,
                count,
            };
            match self.conn()?.read(&args).await? {
                Nfs3Result::Ok(ok) => {
                    if ok.data.is_empty() {
                        return Err(Failure::Nfs(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{path:?} ends before {}", offset + len as u64),
                        )));
                    }
                    let take = ok.data.len().min(len - out.len());
                    out.extend_from_slice(&ok.data[..take]);
                }
                Nfs3Result::Err((stat, _)) => return Err(nfs_err("read", path, stat)),
            }
        }
        Ok(Reply::Data(out))
    }

    async fn write(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<Reply, Failure> {
        let file = self.resolve(path).await?;
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(self.wtmax as usize);
            let args = WRITE3args {
                file: file.clone(),
                offset: offset + done as u64,
                count: n as u32,
                // FILE_SYNC: the data is on the server's disk when the reply comes, so no
                // COMMIT is needed and a server crash loses nothing acknowledged.
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(&data[done..done + n]),
            };
            match self.conn()?.write(&args).await? {
                Nfs3Result::Ok(ok) if ok.count > 0 => done += (ok.count as usize).min(n),
                Nfs3Result::Ok(_) => {
                    return Err(Failure::Nfs(io::Error::other(format!(
                        "write {path:?}: the server wrote nothing"
                    ))));
                }
                Nfs3Result::Err((stat, _)) => return Err(nfs_err("write", path, stat)),
            }
        }
        Ok(Reply::Done)
    }

    async fn list(&mut self, path: &str) -> Result<Reply, Failure> {
        let dir = self.resolve(path).await?;
        let (mut cookie, mut cookieverf) = (0u64, cookieverf3::default());
        let mut names = Vec::new();
        loop {
            let args = READDIR3args {
                dir: dir.clone(),
                cookie,
                cookieverf,
                count: 32 * 1024,
            };
            match self.conn()?.readdir(&args).await? {
                Nfs3Result::Ok(ok) => {
                    cookieverf = ok.cookieverf;
                    for e in &ok.reply.entries.0 {
                        cookie = e.cookie;
                        let n = String::from_utf8_lossy(&e.name.0).into_owned();
                        if n != "." && n != ".." {
                            names.push(n);
                        }
                    }
                    if ok.reply.eof || ok.reply.entries.0.is_empty() {
                        break;
                    }
                }
                Nfs3Result::Err((stat, _)) => return Err(nfs_err("readdir", path, stat)),
            }
        }
        names.sort();
        Ok(Reply::Names(names))
    }
}
