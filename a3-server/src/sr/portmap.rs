//! The portmapper's sockets on port 111 (UDP and TCP). The protocol, with its bounded decoder,
//! is `a3_shared::portmap`; this file only moves bytes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use a3_shared::portmap::{self, MAX_CALL, Registry, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use a3_shared::portmap::PORT;

/// At most this many TCP connections at once; a client needs one for a few calls.
const MAX_CONNECTIONS: usize = 64;
/// A TCP client that sends nothing for this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The portmapper's bound sockets.
pub struct Portmapper {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Portmapper {
    /// Binds `ip`:111 over UDP and TCP.
    pub async fn bind(ip: IpAddr) -> std::io::Result<Portmapper> {
        let udp = UdpSocket::bind((ip, PORT)).await?;
        let tcp = TcpListener::bind((ip, PORT)).await?;
        Ok(Portmapper { udp, tcp })
    }

    /// Answers calls until `shutdown`, reporting NFS and MOUNT v3 on `nfs_port` at the bound
    /// address. A bad call or a failed connection is dropped; the portmapper keeps serving.
    pub async fn serve(self, nfs_port: u16, shutdown: CancellationToken) {
        let Portmapper { udp, tcp } = self;
        let ip = match udp.local_addr() {
            Ok(addr) => addr.ip(),
            Err(e) => {
                tracing::error!("portmapper: cannot read its own address: {e}; not serving");
                return;
            }
        };
        let registry = Arc::new(Registry::nfs3(ip, nfs_port));
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut buf = [0u8; MAX_CALL + 1];
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = udp.recv_from(&mut buf) => match got {
                    Ok((n, peer)) => {
                        if let Some(call) = portmap::decode_call(&buf[..n]) {
                            let answer = portmap::reply(&call, &registry, Transport::Udp);
                            if let Err(e) = udp.send_to(&answer, peer).await {
                                tracing::debug!(%peer, "portmapper: cannot answer over UDP: {e}");
                            }
                        }
                    }
                    // ICMP errors of earlier sends surface here; they concern that peer only.
                    Err(e) => tracing::debug!("portmapper: UDP receive: {e}"),
                },
                got = tcp.accept() => match got {
                    Ok((stream, peer)) => {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            tracing::warn!(%peer, "portmapper: too many connections; dropping one");
                            continue;
                        };
                        let stop = shutdown.clone();
                        let registry = registry.clone();
                        tokio::spawn(async move {
                            let _slot = slot;
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                r = serve_tcp(stream, &registry) => {
                                    if let Err(e) = r {
                                        tracing::debug!(%peer, "portmapper connection: {e}");
                                    }
                                }
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("portmapper: accept failed: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

/// One TCP connection: calls in records, one fragment each, answered in order.
async fn serve_tcp(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = [0u8; MAX_CALL];
    loop {
        let mut mark = [0u8; 4];
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut mark)).await {
            Err(_) => return Ok(()), // idle
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let len = portmap::record_len(mark).map_err(std::io::Error::other)?;
        tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| std::io::Error::other("RPC record not completed in time"))??;
        let Some(call) = portmap::decode_call(&buf[..len]) else {
            return Err(std::io::Error::other("malformed RPC call"));
        };
        let answer = portmap::record(&portmap::reply(&call, registry, Transport::Tcp));
        stream.write_all(&answer).await?;
    }
}
