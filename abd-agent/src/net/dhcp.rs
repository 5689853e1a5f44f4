//! The DHCP client's I/O: a UDP socket on port 68 bound to the NIC, broadcasting the
//! messages of `a3_shared::dhcp::Client` and feeding it the replies (which it asks to be
//! broadcast, so no raw socket is needed while the NIC has no address).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime};

use a3_shared::dhcp::{CLIENT_PORT, Client, DhcpError, Event, Lease, SERVER_PORT};
use anyhow::Context;
use tokio::net::UdpSocket;

use super::link::{Link, Netlink};

/// How long to ask before telling the operator (the client keeps asking after that).
const WARN_AFTER: Duration = Duration::from_secs(30);

/// Runs DHCP on `nic` until a lease is bound and configured, then keeps renewing it in a
/// task for as long as the appliance runs.
pub async fn obtain(nl: &Netlink, nic: &Link) -> anyhow::Result<Lease> {
    let socket = open_socket(&nic.name)?;
    let mac: [u8; 6] = nic.mac[..6]
        .try_into()
        .context("the NIC's MAC is not 6 bytes")?;
    let mut client = Client::new(mac, transaction_id(&mac), Instant::now());
    let started = Instant::now();
    let mut warned = false;
    loop {
        if let Some(lease) = step(&socket, &mut client, nl, nic.index).await? {
            tracing::info!(
                "DHCP: {}/{} from {} (gateway {:?}, lease {}s)",
                lease.addr,
                lease.prefix,
                lease.server,
                lease.gateway,
                lease.duration.as_secs()
            );
            let nl = nl.clone();
            let index = nic.index;
            tokio::spawn(async move {
                loop {
                    if let Err(e) = step(&socket, &mut client, &nl, index).await {
                        tracing::warn!("DHCP renewal: {e:#}");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            });
            return Ok(lease);
        }
        if !warned && started.elapsed() > WARN_AFTER {
            warned = true;
            tracing::warn!(
                "DHCP: no lease on {} after {}s; still asking (is a DHCP server on this \
                 network? otherwise give a static ip in the boot config)",
                nic.name,
                WARN_AFTER.as_secs()
            );
        }
    }
}

/// Sends what is due, waits for a reply or the next timer, and applies a new lease.
/// Returns the lease when one was just bound.
async fn step(
    socket: &UdpSocket,
    client: &mut Client,
    nl: &Netlink,
    index: u32,
) -> anyhow::Result<Option<Lease>> {
    while let Some(msg) = client.poll_transmit() {
        let msg = msg?;
        let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
        if let Err(e) = socket.send_to(&msg, to).await {
            // The link may still be coming up: the retransmission timer tries again.
            tracing::debug!("DHCP: send: {e}");
        }
    }
    let deadline = tokio::time::Instant::from_std(client.poll_timeout());
    let mut buf = [0u8; 1500];
    tokio::select! {
        got = socket.recv_from(&mut buf) => {
            let (n, from) = got.context("DHCP: receive")?;
            match client.handle_datagram(Instant::now(), &buf[..n]) {
                Ok(()) => {}
                Err(e @ (DhcpError::Malformed(_) | DhcpError::Ignored(_))) => {
                    tracing::debug!("DHCP: datagram from {from}: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        () = tokio::time::sleep_until(deadline) => client.handle_timeout(Instant::now()),
    }
    let mut bound = None;
    while let Some(event) = client.poll_event() {
        match event {
            Event::Bound(lease) => {
                nl.set_address(index, lease.addr, lease.prefix).await?;
                if let Some(gw) = lease.gateway {
                    nl.set_default_route(index, gw).await?;
                }
                bound = Some(lease);
            }
            Event::Lost => tracing::warn!("DHCP: the lease was lost; asking again"),
        }
    }
    Ok(bound)
}

fn open_socket(nic: &str) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket
        .bind_device(Some(nic.as_bytes()))
        .with_context(|| format!("DHCP: bind to {nic}"))?;
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, CLIENT_PORT));
    socket
        .bind(&any.into())
        .with_context(|| format!("DHCP: bind {any}"))?;
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket.into())?)
}

/// A transaction id that differs between boots and between NICs.
fn transaction_id(mac: &[u8; 6]) -> u32 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ d.as_secs() as u32);
    nanos ^ u32::from_le_bytes([mac[2], mac[3], mac[4], mac[5]])
}
