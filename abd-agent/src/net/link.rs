//! Netlink (rtnetlink): the links, the NIC's address and the default route.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// A network interface.
#[derive(Debug, Clone)]
pub struct Link {
    /// The kernel's index.
    pub index: u32,
    /// Its name (`eth0`, `lo`).
    pub name: String,
    /// The hardware address (empty for `lo`).
    pub mac: Vec<u8>,
    link_type: LinkLayerType,
}

/// A netlink connection; its I/O runs in a task of the current runtime.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a route netlink socket.
    pub fn open() -> anyhow::Result<Netlink> {
        let (conn, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Every link the kernel has.
    pub async fn links(&self) -> anyhow::Result<Vec<Link>> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream.try_next().await.context("netlink: list links")? {
            let mut link = Link {
                index: msg.header.index,
                name: String::new(),
                mac: Vec::new(),
                link_type: msg.header.link_layer_type,
            };
            for attr in msg.attributes {
                match attr {
                    LinkAttribute::IfName(name) => link.name = name,
                    LinkAttribute::Address(mac) => link.mac = mac,
                    _ => {}
                }
            }
            links.push(link);
        }
        Ok(links)
    }

    /// The loopback link.
    pub async fn loopback(&self) -> anyhow::Result<Link> {
        self.links()
            .await?
            .into_iter()
            .find(|l| l.link_type == LinkLayerType::Loopback)
            .context("the kernel has no loopback link")
    }

    /// The first Ethernet link (lowest index), waiting for its driver to register it.
    pub async fn wait_for_ethernet(&self, wait: Duration) -> anyhow::Result<Link> {
        let deadline = Instant::now() + wait;
        loop {
            let mut nics: Vec<Link> = self
                .links()
                .await?
                .into_iter()
                .filter(|l| l.link_type == LinkLayerType::Ether && l.mac.len() == 6)
                .collect();
            nics.sort_by_key(|l| l.index);
            if let Some(nic) = nics.into_iter().next() {
                return Ok(nic);
            }
            if Instant::now() >= deadline {
                bail!(
                    "no Ethernet NIC appeared within {}s: check that the VM has a VIF and that \
                     its driver (xen-netfront or virtio_net) loaded (see the boot log)",
                    wait.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets a link up.
    pub async fn set_up(&self, index: u32) -> anyhow::Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .context("netlink: set link up")
    }

    /// Makes `addr/prefix` the link's only IPv4 address.
    pub async fn set_address(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut stale = Vec::new();
        while let Some(msg) = stream.try_next().await.context("netlink: list addresses")? {
            let same = msg.header.prefix_len == prefix
                && msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == addr));
            let v4 = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(_))));
            if v4 && !same {
                stale.push(msg);
            }
        }
        for msg in stale {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .context("netlink: remove the previous address")?;
        }
        self.handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .replace()
            .execute()
            .await
            .with_context(|| format!("netlink: add {addr}/{prefix}"))
    }

    /// Points the default route at `gateway` through the link.
    pub async fn set_default_route(&self, index: u32, gateway: Ipv4Addr) -> anyhow::Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .context("netlink: add the default route")
    }
}
