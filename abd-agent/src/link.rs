//! The agent's connection to its A3, over QUIC or the TLS/TCP fallback (DESIGN.md §4): the
//! jobs open streams on a [`Link`] and do not know which carries them.
//!
//! TCP has no streams, so each stream of the fallback is a TLS connection of its own with
//! the same client certificate, named by its first byte (`proto::tcp`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use a3_shared::proto::tcp;
use anyhow::Context;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// The sending half of a stream, whichever transport carries it.
pub type SendStream = Box<dyn AsyncWrite + Send + Unpin>;
/// The receiving half of a stream, whichever transport carries it.
pub type RecvStream = Box<dyn AsyncRead + Send + Unpin>;

/// How long a TCP connection and its TLS handshake may take.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection to the A3.
#[derive(Clone)]
pub enum Link {
    /// QUIC: streams of one connection.
    Quic(quinn::Connection),
    /// The fallback: a TLS/TCP connection per stream.
    Tcp(Arc<TcpDialer>),
}

impl Link {
    /// Opens a data stream.
    pub async fn open_data(&self) -> anyhow::Result<(SendStream, RecvStream)> {
        match self {
            Link::Quic(conn) => {
                let (s, r) = conn.open_bi().await?;
                Ok((Box::new(s), Box::new(r)))
            }
            Link::Tcp(dialer) => dialer.open(tcp::DATA).await,
        }
    }

    /// Closes the connection (QUIC); a TCP stream closes when its halves are dropped.
    pub fn close(&self, why: &'static [u8]) {
        if let Link::Quic(conn) = self {
            conn.close(0u32.into(), why);
        }
    }

    /// The transport's name, for logs and the status.
    pub fn name(&self) -> &'static str {
        match self {
            Link::Quic(_) => "QUIC",
            Link::Tcp(_) => "TLS/TCP",
        }
    }
}

/// Opens TLS/TCP streams to the A3.
pub struct TcpDialer {
    a3: SocketAddr,
    bind: Option<SocketAddr>,
    name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

impl TcpDialer {
    /// A dialer to `a3`, checking its certificate for `name`, from `bind` if given.
    pub fn new(
        a3: SocketAddr,
        name: &str,
        bind: Option<SocketAddr>,
        tls: rustls::ClientConfig,
    ) -> anyhow::Result<TcpDialer> {
        Ok(TcpDialer {
            a3,
            bind,
            name: ServerName::try_from(name.to_owned())
                .with_context(|| format!("'{name}' is not a valid server name"))?,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        })
    }

    /// Connects, handshakes and names the stream `kind`.
    pub async fn open(&self, kind: u8) -> anyhow::Result<(SendStream, RecvStream)> {
        let a3 = self.a3;
        let connecting = async {
            let socket = match a3 {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            if let Some(bind) = self.bind {
                socket.bind(SocketAddr::new(bind.ip(), 0))?;
            }
            let stream = socket.connect(a3).await?;
            let _ = stream.set_nodelay(true);
            // A vanished A3 ends the session within ~11 s, as QUIC's idle timeout does.
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(2))
                .with_interval(Duration::from_secs(1));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            let mut tls = self.tls.connect(self.name.clone(), stream).await?;
            tls.write_all(&[kind]).await?;
            tls.flush().await?;
            std::io::Result::Ok(tls)
        };
        let tls = tokio::time::timeout(TCP_CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "A3 at {a3} (TCP): no connection within {} s",
                    TCP_CONNECT_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("A3 at {a3} (TCP): cannot connect"))?;
        let (recv, send) = tokio::io::split(tls);
        Ok((Box::new(send), Box::new(recv)))
    }
}
