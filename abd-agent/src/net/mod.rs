//! The appliance's network: the NIC's address (static through netlink, or a DHCP lease),
//! the default route, and the resolvers (DESIGN.md §5).
//!
//! Who does what:
//! - [`link`]: netlink (links up, addresses, routes);
//! - [`dhcp`]: drives `a3_shared::dhcp`'s state machine over a UDP socket on the NIC;
//! - [`dns`]: a small DNS client that asks exactly the configured servers, on their port.

pub mod dhcp;
pub mod dns;
pub mod link;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;

use crate::bootcfg::{Addressing, NetConfig};

/// How long to wait for the NIC's driver to register it after the modules load.
const NIC_WAIT: Duration = Duration::from_secs(30);

/// How the appliance is addressed once the network is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The NIC's name.
    pub nic: String,
    /// The address and prefix.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
    /// The default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// `static` or `dhcp from <server>`.
    pub source: String,
    /// The DNS servers in use: the configured ones (never the network's own unless given).
    pub dns: Vec<SocketAddr>,
}

impl Configured {
    /// `addr/prefix`, as `vm-data/abd/assigned-ip` carries it.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }
}

/// Brings up `lo` and the first Ethernet NIC, addresses it as `cfg` says, adds the default
/// route and writes `/etc/resolv.conf`. With DHCP it keeps renewing the lease in a task.
pub async fn configure(cfg: &NetConfig) -> anyhow::Result<Configured> {
    let nl = link::Netlink::open()?;
    let lo = nl.loopback().await?;
    nl.set_up(lo.index).await.context("bring up lo")?;
    let nic = nl.wait_for_ethernet(NIC_WAIT).await?;
    nl.set_up(nic.index)
        .await
        .with_context(|| format!("bring up {}", nic.name))?;
    let (addr, prefix, gateway, source) = match &cfg.addressing {
        Addressing::Static {
            addr,
            prefix,
            gateway,
        } => {
            nl.set_address(nic.index, *addr, *prefix).await?;
            (*addr, *prefix, *gateway, "static".to_owned())
        }
        Addressing::Dhcp => {
            let lease = dhcp::obtain(&nl, &nic).await?;
            (
                lease.addr,
                lease.prefix,
                lease.gateway,
                format!("dhcp from {}", lease.server),
            )
        }
    };
    if let Some(gw) = gateway {
        nl.set_default_route(nic.index, gw)
            .await
            .with_context(|| format!("default route via {gw}"))?;
    }
    if let Err(e) = dns::write_resolv_conf(&cfg.dns) {
        tracing::warn!("{e:#}");
    }
    Ok(Configured {
        nic: nic.name,
        addr,
        prefix,
        gateway,
        source,
        dns: cfg.dns.clone(),
    })
}
