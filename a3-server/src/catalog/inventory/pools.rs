//! Pools and hosts: what the A3 needs to reach them, and their pinned certificates.

use rusqlite::{Connection, OptionalExtension, ToSql, params};

use super::objects::upsert_host;
use super::*;
use crate::catalog::{Catalog, CatalogError};
use crate::util::clock::unix_now;
use crate::xapi::Fingerprint;

impl Catalog {
    /// Records a newly added pool and its hosts (or refreshes a known one, keeping pins).
    pub fn record_pool(&self, pool: &NewPool<'_>) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        tx.execute(
            "INSERT INTO pools (uuid, ref, name, master_ref, port, username, added_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(uuid) DO UPDATE SET ref = excluded.ref, name = excluded.name,
                master_ref = excluded.master_ref, port = excluded.port,
                username = excluded.username, status = ''",
            params![
                pool.record.uuid,
                pool.reference,
                pool.record.name_label,
                pool.record.master,
                pool.port,
                pool.username,
                unix_now()
            ],
        )
        .map_err(|e| self.error(e))?;
        for (r, host, pin) in pool.hosts {
            upsert_host(&tx, &pool.record.uuid, r, host).map_err(|e| self.error(e))?;
            if let Some(pin) = pin {
                tx.execute(
                    "UPDATE hosts SET cert_sha256 = ?2, pinned_at = ?3
                     WHERE uuid = ?1 AND cert_sha256 IS NULL",
                    params![host.uuid, pin.to_string(), unix_now()],
                )
                .map_err(|e| self.error(e))?;
            }
        }
        tx.commit().map_err(|e| self.error(e))
    }

    /// The uuids of every pool, to start their watchers.
    pub fn pool_uuids(&self) -> Result<Vec<String>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT uuid FROM pools ORDER BY uuid")
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map([], |row| row.get(0))
            .and_then(Iterator::collect)
            .map_err(|e| self.error(e))?;
        Ok(rows)
    }

    /// How to reach a pool, or `None` if it is not (or no longer) recorded.
    pub fn pool_access(&self, pool_uuid: &str) -> Result<Option<PoolAccess>, CatalogError> {
        let conn = self.lock();
        let pool = conn
            .query_row(
                "SELECT uuid, ref, port, username, master_ref FROM pools WHERE uuid = ?1",
                [pool_uuid],
                |row| {
                    Ok(PoolAccess {
                        uuid: row.get(0)?,
                        reference: row.get(1)?,
                        port: row.get(2)?,
                        username: row.get(3)?,
                        master_ref: row.get(4)?,
                        hosts: Vec::new(),
                    })
                },
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let Some(mut pool) = pool else {
            return Ok(None);
        };
        let mut stmt = conn
            .prepare(
                "SELECT uuid, ref, address, cert_sha256 FROM hosts WHERE pool_uuid = ?1
                 ORDER BY name, address",
            )
            .map_err(|e| self.error(e))?;
        pool.hosts = stmt
            .query_map([pool_uuid], |row| {
                let pin: Option<String> = row.get(3)?;
                Ok(HostAccess {
                    uuid: row.get(0)?,
                    reference: row.get(1)?,
                    address: row.get(2)?,
                    pin: pin.and_then(|p| p.parse().ok()),
                })
            })
            .and_then(Iterator::collect)
            .map_err(|e| self.error(e))?;
        Ok(Some(pool))
    }

    /// The pinned certificate of the host at `endpoint`, if the A3 knows it.
    pub fn pin_for(&self, endpoint: &Endpoint) -> Result<Option<Fingerprint>, CatalogError> {
        let conn = self.lock();
        let pin: Option<Option<String>> = conn
            .query_row(
                "SELECT h.cert_sha256 FROM hosts h JOIN pools p ON p.uuid = h.pool_uuid
                 WHERE h.address = ?1 AND p.port = ?2 AND h.cert_sha256 IS NOT NULL",
                params![endpoint.address, endpoint.port],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.error(e))?;
        Ok(pin.flatten().and_then(|p| p.parse().ok()))
    }

    /// Pins `fingerprint` for a host (first contact, or `host trust`).
    pub fn set_pin(&self, host_uuid: &str, fingerprint: Fingerprint) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE hosts SET cert_sha256 = ?2, pinned_at = ?3 WHERE uuid = ?1",
                params![host_uuid, fingerprint.to_string(), unix_now()],
            )
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Records the pool's connection state: the host the A3 talks to and the last problem
    /// (empty when healthy).
    pub fn set_pool_status(
        &self,
        pool_uuid: &str,
        connected_host: Option<&str>,
        status: &str,
    ) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE pools SET connected_host = ?2, status = ?3 WHERE uuid = ?1",
                params![pool_uuid, connected_host, status],
            )
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// Forgets a pool and everything in it; returns how many hosts it had, or `None` if it
    /// was not recorded.
    pub fn remove_pool(&self, pool_uuid: &str) -> Result<Option<u32>, CatalogError> {
        let conn = self.lock();
        let hosts: u32 = conn
            .query_row(
                "SELECT count(*) FROM hosts WHERE pool_uuid = ?1",
                [pool_uuid],
                |row| row.get(0),
            )
            .map_err(|e| self.error(e))?;
        let removed = conn
            .execute("DELETE FROM pools WHERE uuid = ?1", [pool_uuid])
            .map_err(|e| self.error(e))?;
        Ok((removed > 0).then_some(hosts))
    }

    /// Every pool, by name.
    pub fn list_pools(&self) -> Result<Vec<PoolRow>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT p.uuid, p.name, coalesce(m.uuid, ''), coalesce(m.address, ''),
                        coalesce(m.name, ''), p.port, p.username, p.added_at, p.synced_at,
                        p.status,
                        (SELECT count(*) FROM hosts h WHERE h.pool_uuid = p.uuid),
                        (SELECT count(*) FROM vms v WHERE v.pool_uuid = p.uuid
                           AND NOT v.is_template AND NOT v.is_snapshot
                           AND NOT v.is_control_domain)
                 FROM pools p
                 LEFT JOIN hosts m ON m.pool_uuid = p.uuid AND m.ref = p.master_ref
                 ORDER BY p.name, p.uuid",
            )
            .map_err(|e| self.error(e))?;
        stmt.query_map([], |row| {
            let name: String = row.get(1)?;
            let master_name: String = row.get(4)?;
            Ok(PoolRow {
                uuid: row.get(0)?,
                name: if name.is_empty() { master_name } else { name },
                master_uuid: row.get(2)?,
                master_address: row.get(3)?,
                port: row.get(5)?,
                username: row.get(6)?,
                added_at: row.get(7)?,
                synced_at: row.get(8)?,
                status: row.get(9)?,
                hosts: row.get(10)?,
                vms: row.get(11)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(|e| self.error(e))
    }

    /// Every host, by pool and name.
    pub fn list_hosts(&self) -> Result<Vec<HostRow>, CatalogError> {
        let conn = self.lock();
        query_hosts(&conn, "1", &[]).map_err(|e| self.error(e))
    }

    /// The host named by `id`: its uuid, its address, or `address:port`.
    pub fn find_host(&self, id: &str) -> Result<Option<HostRow>, CatalogError> {
        let conn = self.lock();
        let mut rows = query_hosts(&conn, "h.uuid = ?1 OR h.address = ?1", &[&id])
            .map_err(|e| self.error(e))?;
        if rows.is_empty()
            && let Ok(ep) = Endpoint::parse(id)
        {
            rows = query_hosts(
                &conn,
                "h.address = ?1 AND p.port = ?2",
                &[&ep.address, &ep.port],
            )
            .map_err(|e| self.error(e))?;
        }
        Ok(rows.into_iter().next())
    }
}

fn query_hosts(
    conn: &Connection,
    filter: &str,
    args: &[&dyn ToSql],
) -> rusqlite::Result<Vec<HostRow>> {
    let sql = format!(
        "SELECT h.uuid, h.pool_uuid, p.name, h.name, h.address, p.port, h.ref = p.master_ref,
                h.enabled, h.cert_sha256
         FROM hosts h JOIN pools p ON p.uuid = h.pool_uuid
         WHERE {filter} ORDER BY p.name, p.uuid, h.name, h.address"
    );
    let mut stmt = conn.prepare(&sql)?;
    stmt.query_map(args, |row| {
        Ok(HostRow {
            uuid: row.get(0)?,
            pool_uuid: row.get(1)?,
            pool_name: row.get(2)?,
            name: row.get(3)?,
            address: row.get(4)?,
            port: row.get(5)?,
            is_master: row.get(6)?,
            enabled: row.get(7)?,
            cert_sha256: row.get(8)?,
        })
    })?
    .collect()
}
