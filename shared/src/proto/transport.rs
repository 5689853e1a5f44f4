//! QUIC transport settings of port 2811, for both ends in one place: each end's numbers
//! lean on the other's (a send window is only useful up to the peer's receive window), so
//! they are chosen together. `quinn-proto` is sans-IO; the runtimes hand the config to
//! `quinn` (`quinn::TransportConfig` is this type).
//!
//! Shared by both ends:
//! - MTU discovery up to 8952 bytes (9000-byte jumbo frames less IP and UDP headers).
//!   Per-packet work (header protection, ACKs, syscalls) is a large share of QUIC's CPU;
//!   loopback and jumbo LANs carry big datagrams, and discovery falls back to whatever the
//!   path allows.
//! - Liveness: a keep-alive every 2 s and an idle timeout of 10 s, so that a peer killed
//!   mid-job fails its job within seconds (and the A3 commits no version), not minutes.
//!   Either end would keep the connection alive; both do, so that neither depends on the
//!   other's settings.
//! - No unidirectional streams: neither end opens one.
//!
//! What differs is [`Side`]: memory, and who opens streams.

use std::time::Duration;

use quinn_proto::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

/// Which end of port 2811 a [`transport`] config is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The A3: receives backups, sends restores, accepts every stream.
    A3,
    /// The ABD agent (128 MiB VM): sends backups, receives restores, opens every stream.
    Agent,
}

/// What one end buffers and allows.
struct Limits {
    /// Bytes a peer may send on one stream beyond what this end has read.
    stream_receive_window: u32,
    /// The same, summed over the connection's streams.
    receive_window: u32,
    /// Bytes this end keeps sent but unacknowledged.
    send_window: u64,
    /// Bidirectional streams the peer may have open at once.
    peer_bidi_streams: u32,
}

impl Side {
    fn limits(self) -> Limits {
        match self {
            // Receive windows as measured at ~500 MB/s on loopback (DESIGN.md §7); a LAN's
            // bandwidth-delay product (10 Gbit/s × 1 ms ≈ 1.25 MB) fits many times, so
            // they never throttle an agent. What bounds the A3's memory is the number of
            // connections times 64 MiB. The send window (restores) is the agent's
            // connection receive window: a wider one could never fill. 64 streams: an
            // agent opens a control stream and 3 data streams per job.
            Side::A3 => Limits {
                stream_receive_window: 16 << 20,
                receive_window: 64 << 20,
                send_window: AGENT_RECEIVE_WINDOW.into(),
                peer_bidi_streams: 64,
            },
            // Inside the 48 MiB the agent may use in its 128 MiB VM: 8 MiB in flight for a
            // backup (the LAN's bandwidth-delay product fits many times over), 4 MiB per
            // stream and 12 MiB per connection buffered for a restore. The A3 opens no
            // stream towards the agent.
            Side::Agent => Limits {
                stream_receive_window: 4 << 20,
                receive_window: AGENT_RECEIVE_WINDOW,
                send_window: 8 << 20,
                peer_bidi_streams: 0,
            },
        }
    }
}

/// The agent's connection receive window, which also caps the A3's useful send window.
const AGENT_RECEIVE_WINDOW: u32 = 12 << 20;

/// The transport settings of port 2811 for `side`.
pub fn transport(side: Side) -> TransportConfig {
    let limits = side.limits();
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(limits.stream_receive_window))
        .receive_window(VarInt::from_u32(limits.receive_window))
        .send_window(limits.send_window)
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.peer_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(10_000))));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(8952);
    t.mtu_discovery_config(Some(mtu));
    t
}
