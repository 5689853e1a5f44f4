//! Each pool's static IP list for its ABDs (DESIGN.md §1.4): the addresses, their prefix and
//! gateway, and the network the ABDs that take them go on (by default the management one).

use std::net::Ipv4Addr;

use crate::catalog::ip_pool::{AbdIp, IpListError};
use crate::catalog::{Catalog, CatalogError};
use crate::inventory::{Inventory, InventoryError};
use crate::xapi::{XapiError, ops};

/// Why a pool's list cannot be read or replaced.
#[derive(Debug, thiserror::Error)]
pub enum IpsError {
    /// No such pool in the catalog.
    #[error("no pool '{0}'; see `a3-server pool list`")]
    UnknownPool(String),
    /// No such network in the pool.
    #[error("no network '{network}' in pool {pool}; see the pool's networks in XAPI")]
    UnknownNetwork {
        /// The network asked for.
        network: String,
        /// The pool's uuid.
        pool: String,
    },
    /// An address or the gateway does not parse.
    #[error("{0}")]
    BadAddress(String),
    /// The list cannot replace the current one.
    #[error(transparent)]
    List(#[from] IpListError),
    /// The pool could not be reached.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// A call to the pool failed.
    #[error(transparent)]
    Xapi(#[from] XapiError),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// The uuid of the pool `pool` names (uuid or name).
pub fn pool_uuid(catalog: &Catalog, pool: &str) -> Result<String, IpsError> {
    catalog
        .list_pools()?
        .into_iter()
        .find(|p| p.uuid == pool || p.name == pool)
        .map(|p| p.uuid)
        .ok_or_else(|| IpsError::UnknownPool(pool.to_owned()))
}

/// The list of the pool `pool` names.
pub fn list(catalog: &Catalog, pool: &str) -> Result<Vec<AbdIp>, IpsError> {
    Ok(catalog.abd_ips(&pool_uuid(catalog, pool)?)?)
}

/// Replaces the list of the pool `pool` names with `addresses` (`addr/prefix` each), on
/// `network` (uuid or name; the management network when absent). Returns the new list.
pub async fn set(
    catalog: &Catalog,
    inventory: &Inventory,
    pool: &str,
    network: Option<&str>,
    addresses: &[String],
    gateway: Option<&str>,
) -> Result<Vec<AbdIp>, IpsError> {
    let pool = pool_uuid(catalog, pool)?;
    // Parse everything before the pool is asked anything.
    if let Some(gw) = gateway {
        gw.parse::<Ipv4Addr>()
            .map_err(|_| IpsError::BadAddress(format!("gateway {gw:?} is not an IPv4 address")))?;
    }
    let mut parsed = Vec::new();
    for a in addresses {
        let (addr, prefix) = a.split_once('/').ok_or_else(|| {
            IpsError::BadAddress(format!(
                "address {a:?}: write it as addr/prefix, e.g. 10.0.0.5/24"
            ))
        })?;
        addr.parse::<Ipv4Addr>()
            .map_err(|_| IpsError::BadAddress(format!("address {a:?}: not an IPv4 address")))?;
        let prefix: u8 =
            prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
                IpsError::BadAddress(format!("address {a:?}: prefix must be 0..=32"))
            })?;
        parsed.push((addr.to_owned(), prefix));
    }
    let network = network_uuid(inventory, &pool, network).await?;
    let entries: Vec<AbdIp> = parsed
        .into_iter()
        .map(|(address, prefix)| AbdIp {
            pool_uuid: pool.clone(),
            network_uuid: network.clone(),
            address,
            prefix,
            gateway: gateway.map(str::to_owned),
            assigned_to: None,
        })
        .collect();
    catalog.abd_ips_set(&pool, &entries)?;
    Ok(catalog.abd_ips(&pool)?)
}

/// The uuid of `network` (uuid or name) in the pool, or of its management network.
async fn network_uuid(
    inventory: &Inventory,
    pool: &str,
    network: Option<&str>,
) -> Result<String, IpsError> {
    let (s, _) = inventory.connect(pool).await?;
    let found = match network {
        Some(n) => ops::all_records(&s, "network").await.map(|nets| {
            nets.iter()
                .map(|(_, r)| r)
                .find(|r| ops::text(r, "uuid") == n || ops::text(r, "name_label") == n)
                .map(|r| ops::text(r, "uuid").to_owned())
        }),
        None => ops::management_network(&s)
            .await
            .map(|(_, rec)| Some(ops::text(&rec, "uuid").to_owned())),
    };
    s.logout().await;
    found?.ok_or_else(|| IpsError::UnknownNetwork {
        network: network.unwrap_or_default().to_owned(),
        pool: pool.to_owned(),
    })
}
