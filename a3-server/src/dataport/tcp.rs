//! The TLS/TCP fallback on port 2811, for networks that drop UDP (DESIGN.md §4).
//!
//! Each TCP connection carries one stream: its first byte after the TLS handshake says
//! which (`proto::tcp`), and its frames are those of the QUIC stream it stands for. A
//! control connection goes through the same enrollment and session code as QUIC; a data
//! connection is authenticated by its own client certificate and names its job in its first
//! frame, exactly as a QUIC data stream does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use a3_shared::proto::tcp;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::conn::{self, Carrier, FIRST_MESSAGE_TIMEOUT, Peer};
use super::{ConnError, DataPort};

/// At most this many TCP connections at once: a session holds one, plus one per data
/// stream of its running jobs.
const MAX_CONNECTIONS: usize = 1024;

/// Binds TCP `addr` (the port the QUIC endpoint got).
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts fallback connections until shutdown; each runs as a task of the data port.
pub async fn accept_loop(port: DataPort, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let shutdown = port.inner.shutdown.clone();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => p.expect("never closed"),
        };
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: the next accept may work.
                    tracing::warn!("port 2811 (TCP): accept: {e}");
                    continue;
                }
            },
        };
        let port = port.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        let conn_id = port.next_conn_id();
        port.inner.tasks.clone().spawn(async move {
            // The session loop watches shutdown itself; the opening and data streams do not.
            let ended = tokio::select! {
                r = handle(port, acceptor, stream, remote, conn_id) => r,
                _ = shutdown.cancelled() => Err(ConnError::Ended("the A3 is shutting down".into())),
            };
            if let Err(e) = ended {
                tracing::info!(%remote, "port 2811 (TCP) connection ended: {e}");
            }
            drop(permit);
        });
    }
    tracing::info!("port 2811 (TCP) stopped");
}

async fn handle(
    port: DataPort,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
    conn_id: usize,
) -> Result<(), ConnError> {
    let _ = stream.set_nodelay(true);
    // A vanished agent fails its jobs within ~11 s (after 2 s of silence, nine unanswered
    // probes a second apart), as QUIC's 10 s idle timeout does.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(2))
        .with_interval(Duration::from_secs(1));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    // Opening: the handshake and the stream kind, promptly.
    let failed = |what| {
        move |source| ConnError::Opening {
            remote,
            what,
            source,
        }
    };
    let opening = async {
        let mut tls = acceptor
            .accept(stream)
            .await
            .map_err(failed("TLS handshake"))?;
        let mut kind = [0u8; 1];
        tls.read_exact(&mut kind)
            .await
            .map_err(failed("stream kind"))?;
        Ok::<_, ConnError>((tls, kind[0]))
    };
    let (tls, kind) = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, opening)
        .await
        .map_err(|_| {
            ConnError::Ended(format!(
                "{remote}: said nothing within {FIRST_MESSAGE_TIMEOUT:?}"
            ))
        })??;
    let peer = Peer::new(&port, remote, tls.get_ref().1.peer_certificates(), conn_id);
    let (recv, send) = tokio::io::split(tls);
    match kind {
        tcp::CONTROL => {
            conn::handle_control(port, peer, Carrier::Tcp, Box::new(send), Box::new(recv)).await
        }
        tcp::DATA => {
            let Some(abd) = peer.abd else {
                return Err(ConnError::Ended(format!(
                    "{remote}: a data stream without an enrolled certificate"
                )));
            };
            conn::data_stream(&port, &abd, Box::new(send), Box::new(recv)).await
        }
        other => Err(ConnError::Ended(format!(
            "{remote}: unknown stream kind {other:#04x}"
        ))),
    }
}
