//! The A3 SR: the A3 serves `<state-dir>/sr/` over NFS v3 (NFS and MOUNT on 2049) with a
//! portmapper on 111 that points XCP-ng's `mount` (and libnfs) at it.
//!
//! - [`dirfs`]: the SR directory as an NFS file system.
//! - [`portmap`]: the portmapper's sockets (its protocol is `a3_shared::portmap`).
//! - [`lifecycle`]: each pool's `Alike_SR` in XAPI: created once, found again by uuid,
//!   plugged at start, unplugged at a clean shutdown.

pub mod dirfs;
pub mod lifecycle;
pub mod portmap;

pub use lifecycle::{HostPbd, PoolSr, SR_NAME, SrError, SrService, alike_sr};

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nfs3_server::tcp::{NFSTcp, NFSTcpListener};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The NFS port (NFS and MOUNT share it).
pub const NFS_PORT: u16 = 2049;
/// The MOUNT path of the SR directory (the PBDs' `serverpath`).
pub const EXPORT: &str = "/alike";

/// Why the A3 SR could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The SR directory cannot be made or read.
    #[error("SR directory {}: {source}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Port 2049 is taken.
    #[error(
        "NFS server: cannot listen on {ip}:{NFS_PORT}: {source}; stop the other NFS server \
         or set sr_address"
    )]
    Nfs {
        /// The address.
        ip: IpAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Port 111 is taken.
    #[error(
        "portmapper: cannot listen on {ip}:{}: {source}; is rpcbind running? stop it or set \
         sr_address",
        portmap::PORT
    )]
    Portmap {
        /// The address.
        ip: IpAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Starts the NFS server and the portmapper on `ip`, serving `sr_dir` (created if missing),
/// until `shutdown`. Binding errors are reported here, before anything runs.
pub async fn start(
    ip: IpAddr,
    sr_dir: &Path,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, ServeError> {
    let dir_error = |source| ServeError::Dir {
        dir: sr_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(sr_dir).map_err(dir_error)?;
    let fs = dirfs::DirFs::new(sr_dir).map_err(dir_error)?;
    let generation = fs.generation();
    let mut nfs = NFSTcpListener::bind_with_generation(&format!("{ip}:{NFS_PORT}"), fs, generation)
        .await
        .map_err(|source| ServeError::Nfs { ip, source })?;
    nfs.with_export_name(EXPORT);
    // Bind the portmapper's sockets now, so that a clash fails the start, not a task.
    let pmap = portmap::Portmapper::bind(ip)
        .await
        .map_err(|source| ServeError::Portmap { ip, source })?;
    tracing::info!(%ip, port = NFS_PORT, dir = %sr_dir.display(), "A3 SR served over NFS v3");
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            () = serve_nfs(&nfs) => {}
            () = pmap.serve(NFS_PORT, shutdown.clone()) => {}
        }
    }))
}

/// Accepts NFS connections for ever; an accept error (out of file descriptors) backs off.
async fn serve_nfs(nfs: &NFSTcpListener<dirfs::DirFs>) {
    loop {
        if let Err(e) = nfs.handle_forever().await {
            tracing::warn!("NFS server: accept failed: {e}; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
