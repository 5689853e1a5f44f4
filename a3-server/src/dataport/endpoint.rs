//! The QUIC endpoint of port 2811: socket, TLS and transport settings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Transport settings for bulk transfer on loopback and LAN.
///
/// - Receive windows: 16 MiB per stream, 64 MiB per connection, the settings DESIGN.md §7
///   measured at ~500 MB/s on loopback. A LAN's bandwidth-delay product (10 Gbit/s × 1 ms
///   ≈ 1.25 MB) fits many times, so the window never throttles an agent; what bounds the
///   A3's memory is the number of connections (the semaphore) times 64 MiB.
/// - Send window 32 MiB (restores): the agent's own receive windows (8/24 MiB) bound the
///   flight anyway; this only lets several streams keep data queued.
/// - MTU discovery up to 8952 bytes (9000-byte jumbo frames less IP/UDP headers): per-packet
///   work is a large share of QUIC's CPU, and loopback or a jumbo LAN carries big datagrams;
///   discovery falls back to whatever the path allows.
/// - Keep-alive 2 s, idle timeout 10 s: an agent killed mid-job fails its job within
///   seconds, with no version committed.
pub fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20))
        .receive_window(quinn::VarInt::from_u32(64 << 20))
        .send_window(32 << 20)
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(64))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            10_000,
        ))));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(8952);
    t.mtu_discovery_config(Some(mtu));
    t
}

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
pub fn bind(listen: SocketAddr, tls: Arc<rustls::ServerConfig>) -> anyhow::Result<quinn::Endpoint> {
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
    ));
    server.transport_config(Arc::new(transport()));
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket
        .bind(&listen.into())
        .with_context(|| format!("port 2811: cannot listen on UDP {listen}"))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(endpoint)
}
