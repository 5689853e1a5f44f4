//! The static addresses ABDs of a pool may take (DESIGN.md §1.4), with the network they
//! are on. Each new ABD takes a free one; with none free it uses DHCP. An address is freed
//! when its ABD is destroyed ([`Catalog::abd_vm_remove`]).

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};

/// The table.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS abd_ips (
    pool_uuid TEXT NOT NULL,
    network_uuid TEXT NOT NULL,
    address TEXT NOT NULL,
    prefix INTEGER NOT NULL,
    gateway TEXT,
    assigned_to TEXT,
    PRIMARY KEY (pool_uuid, address)
);
";

/// One address of a pool's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbdIp {
    /// The pool.
    pub pool_uuid: String,
    /// The network ABDs with this address are put on.
    pub network_uuid: String,
    /// The IPv4 address.
    pub address: String,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway.
    pub gateway: Option<String>,
    /// The ABD holding it.
    pub assigned_to: Option<String>,
}

impl Catalog {
    /// Replaces a pool's list. Addresses kept keep their assignment; an address still
    /// assigned cannot be dropped (the error names it and its ABD).
    pub fn abd_ips_set(&self, pool_uuid: &str, ips: &[AbdIp]) -> Result<(), IpListError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        let held: Vec<(String, String)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT address, assigned_to FROM abd_ips
                     WHERE pool_uuid = ?1 AND assigned_to IS NOT NULL",
                )
                .map_err(|e| self.error(e))?;
            stmt.query_map([pool_uuid], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.error(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.error(e))?
        };
        for (address, abd) in &held {
            if !ips.iter().any(|ip| &ip.address == address) {
                return Err(IpListError::InUse {
                    address: address.clone(),
                    abd: abd.clone(),
                });
            }
        }
        tx.execute("DELETE FROM abd_ips WHERE pool_uuid = ?1", [pool_uuid])
            .map_err(|e| self.error(e))?;
        for ip in ips {
            let assigned = held
                .iter()
                .find(|(a, _)| a == &ip.address)
                .map(|(_, abd)| abd.clone());
            tx.execute(
                "INSERT INTO abd_ips (pool_uuid, network_uuid, address, prefix, gateway,
                     assigned_to) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    pool_uuid,
                    ip.network_uuid,
                    ip.address,
                    ip.prefix,
                    ip.gateway,
                    assigned
                ],
            )
            .map_err(|e| self.error(e))?;
        }
        tx.commit().map_err(|e| self.error(e))?;
        Ok(())
    }

    /// A pool's list, in the order given.
    pub fn abd_ips(&self, pool_uuid: &str) -> Result<Vec<AbdIp>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT pool_uuid, network_uuid, address, prefix, gateway, assigned_to
                 FROM abd_ips WHERE pool_uuid = ?1 ORDER BY rowid",
            )
            .map_err(|e| self.error(e))?;
        stmt.query_map([pool_uuid], ip_from_row)
            .map_err(|e| self.error(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(e))
    }

    /// Gives the first free address of `pool_uuid` to `abd`, atomically; `None` when every
    /// address is taken (the ABD then uses DHCP).
    pub fn abd_ip_take(&self, pool_uuid: &str, abd: &str) -> Result<Option<AbdIp>, CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        let ip = tx
            .query_row(
                "SELECT pool_uuid, network_uuid, address, prefix, gateway, assigned_to
                 FROM abd_ips WHERE pool_uuid = ?1 AND assigned_to IS NULL
                 ORDER BY rowid LIMIT 1",
                [pool_uuid],
                ip_from_row,
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let Some(mut ip) = ip else { return Ok(None) };
        tx.execute(
            "UPDATE abd_ips SET assigned_to = ?3 WHERE pool_uuid = ?1 AND address = ?2",
            params![pool_uuid, ip.address, abd],
        )
        .map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        ip.assigned_to = Some(abd.to_owned());
        Ok(Some(ip))
    }
}

/// Why a list cannot be replaced.
#[derive(Debug, thiserror::Error)]
pub enum IpListError {
    /// An address to drop is held by an ABD.
    #[error(
        "address {address} is in use by ABD '{abd}'; keep it in the list, or destroy that ABD first (`a3-server abd destroy {abd}`)"
    )]
    InUse {
        /// The address.
        address: String,
        /// Its ABD.
        abd: String,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

fn ip_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AbdIp> {
    Ok(AbdIp {
        pool_uuid: r.get(0)?,
        network_uuid: r.get(1)?,
        address: r.get(2)?,
        prefix: r.get(3)?,
        gateway: r.get(4)?,
        assigned_to: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(address: &str) -> AbdIp {
        AbdIp {
            pool_uuid: "p".into(),
            network_uuid: "n".into(),
            address: address.into(),
            prefix: 24,
            gateway: Some("10.0.0.1".into()),
            assigned_to: None,
        }
    }

    #[test]
    fn addresses_are_taken_in_order_then_none_and_held_ones_stay() {
        let c = Catalog::in_memory().unwrap();
        c.abd_ips_set("p", &[ip("10.0.0.5"), ip("10.0.0.6")])
            .unwrap();
        assert_eq!(
            c.abd_ip_take("p", "a").unwrap().unwrap().address,
            "10.0.0.5"
        );
        assert_eq!(
            c.abd_ip_take("p", "b").unwrap().unwrap().address,
            "10.0.0.6"
        );
        assert!(c.abd_ip_take("p", "c").unwrap().is_none(), "then DHCP");
        let e = c.abd_ips_set("p", &[ip("10.0.0.6")]).unwrap_err();
        assert!(
            e.to_string().contains("10.0.0.5") && e.to_string().contains("'a'"),
            "{e}"
        );
        c.abd_ips_set("p", &[ip("10.0.0.5"), ip("10.0.0.6"), ip("10.0.0.7")])
            .unwrap();
        assert_eq!(c.abd_ips("p").unwrap()[1].assigned_to.as_deref(), Some("b"));
        // Destroying an ABD frees its address.
        c.abd_vm_remove("a").unwrap();
        assert_eq!(
            c.abd_ip_take("p", "d").unwrap().unwrap().address,
            "10.0.0.5"
        );
    }
}
