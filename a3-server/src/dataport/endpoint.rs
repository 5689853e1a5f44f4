//! The QUIC endpoint of port 2811: socket, TLS and transport settings.

use std::net::SocketAddr;
use std::sync::Arc;

use a3_shared::proto::transport;

use super::StartError;

/// The names the server certificate carries: `a3`, the host name, and the listen address
/// when it is a specific one.
pub fn server_names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec!["a3".to_owned()];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "a3" {
            names.push(host.to_owned());
        }
    }
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names
}

/// Binds the endpoint. UDP socket buffers are raised to 8 MiB (the kernel clamps them to
/// `net.core.[rw]mem_max`; as root the A3 could force more, but a clamped buffer only costs
/// retransmissions, never correctness), so a burst from several agents is not dropped
/// before quinn reads it.
pub fn bind(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> Result<quinn::Endpoint, StartError> {
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
    ));
    server.transport_config(Arc::new(transport::transport(transport::Side::A3)));
    let udp = || format!("UDP {listen}");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .map_err(|e| StartError::bind(udp(), e))?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket
        .bind(&listen.into())
        .map_err(|e| StartError::bind(udp(), e))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| StartError::bind(udp(), e))?;
    Ok(endpoint)
}
