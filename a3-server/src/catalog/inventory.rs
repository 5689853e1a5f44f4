//! The pools the A3 manages and their inventory: hosts (with pinned certificates), VMs,
//! VBDs, VDIs, SRs, networks and VIFs, as XAPI last reported them.
//!
//! Objects are keyed by uuid and also carry their XAPI ref, unique within a pool, because
//! events name objects by ref. A full sync upserts every object and sweeps what the pool
//! no longer has; events upsert or delete one object at a time. Pins live in `hosts` and
//! are never overwritten by a sync: only first contact and `host trust` set them.
//! Passwords are not stored here (see `inventory::secrets`).

use crate::util::clock::unix_now;
use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, ToSql, Transaction, params};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};
use crate::xapi::records::{
    HostRecord, NetworkRecord, PoolRecord, SrRecord, VbdRecord, VdiRecord, VifRecord, VmRecord,
};
use crate::xapi::{Endpoint, Fingerprint};

/// The inventory's tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pools (
    uuid TEXT PRIMARY KEY,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    master_ref TEXT NOT NULL,
    port INTEGER NOT NULL,
    username TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    synced_at INTEGER,
    connected_host TEXT,
    status TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS hosts (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    cert_sha256 TEXT,
    pinned_at INTEGER
);
CREATE INDEX IF NOT EXISTS hosts_ref ON hosts(pool_uuid, ref);
CREATE INDEX IF NOT EXISTS hosts_address ON hosts(address);
CREATE TABLE IF NOT EXISTS vms (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    power_state TEXT NOT NULL,
    is_template INTEGER NOT NULL,
    is_snapshot INTEGER NOT NULL,
    is_control_domain INTEGER NOT NULL,
    snapshot_of TEXT NOT NULL,
    resident_on TEXT NOT NULL,
    memory_bytes INTEGER NOT NULL,
    vcpus INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vms_ref ON vms(pool_uuid, ref);
CREATE TABLE IF NOT EXISTS vbds (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    vm_ref TEXT NOT NULL,
    vdi_ref TEXT NOT NULL,
    device TEXT NOT NULL,
    userdevice TEXT NOT NULL,
    type TEXT NOT NULL,
    mode TEXT NOT NULL,
    attached INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vbds_ref ON vbds(pool_uuid, ref);
CREATE INDEX IF NOT EXISTS vbds_vm ON vbds(pool_uuid, vm_ref);
CREATE TABLE IF NOT EXISTS vdis (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    sr_ref TEXT NOT NULL,
    virtual_size INTEGER NOT NULL,
    physical_utilisation INTEGER NOT NULL,
    type TEXT NOT NULL,
    cbt_enabled INTEGER NOT NULL,
    is_snapshot INTEGER NOT NULL,
    read_only INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vdis_ref ON vdis(pool_uuid, ref);
CREATE TABLE IF NOT EXISTS srs (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    content_type TEXT NOT NULL,
    shared INTEGER NOT NULL,
    physical_size INTEGER NOT NULL,
    physical_utilisation INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS srs_ref ON srs(pool_uuid, ref);
CREATE TABLE IF NOT EXISTS networks (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    name TEXT NOT NULL,
    bridge TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS networks_ref ON networks(pool_uuid, ref);
CREATE TABLE IF NOT EXISTS vifs (
    uuid TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL REFERENCES pools(uuid) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    vm_ref TEXT NOT NULL,
    network_ref TEXT NOT NULL,
    device TEXT NOT NULL,
    mac TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS vifs_ref ON vifs(pool_uuid, ref);
CREATE INDEX IF NOT EXISTS vifs_vm ON vifs(pool_uuid, vm_ref);
";

/// Every object of one pool, as a full sync reads them: `(ref, record)` per class.
#[derive(Debug, Default)]
pub struct PoolObjects {
    /// Hosts.
    pub hosts: Vec<(String, HostRecord)>,
    /// VMs, templates, snapshots and control domains.
    pub vms: Vec<(String, VmRecord)>,
    /// VBDs.
    pub vbds: Vec<(String, VbdRecord)>,
    /// VDIs.
    pub vdis: Vec<(String, VdiRecord)>,
    /// SRs.
    pub srs: Vec<(String, SrRecord)>,
    /// Networks.
    pub networks: Vec<(String, NetworkRecord)>,
    /// VIFs.
    pub vifs: Vec<(String, VifRecord)>,
}

/// One object's change, from an event.
#[derive(Debug)]
pub enum Change {
    /// The pool record changed (its master, its name).
    Pool(PoolRecord),
    /// A host was added or changed.
    Host(String, HostRecord),
    /// A VM was added or changed.
    Vm(String, VmRecord),
    /// A VBD was added or changed.
    Vbd(String, VbdRecord),
    /// A VDI was added or changed.
    Vdi(String, VdiRecord),
    /// An SR was added or changed.
    Sr(String, SrRecord),
    /// A network was added or changed.
    Network(String, NetworkRecord),
    /// A VIF was added or changed.
    Vif(String, VifRecord),
    /// An object of `class` (lower case, as events name it) was destroyed.
    Deleted {
        /// `vm`, `vbd`, …
        class: String,
        /// Its ref.
        reference: String,
    },
}

/// A new pool as host add records it.
#[derive(Debug)]
pub struct NewPool<'a> {
    /// The pool's ref.
    pub reference: &'a str,
    /// The pool record.
    pub record: &'a PoolRecord,
    /// The XAPI port every host of the pool uses.
    pub port: u16,
    /// The XAPI user.
    pub username: &'a str,
    /// Every host, with the certificate pinned at first contact (`None` when it could not
    /// be reached yet).
    pub hosts: &'a [(String, HostRecord, Option<Fingerprint>)],
}

/// A pool as the API lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolRow {
    /// The pool's uuid.
    pub uuid: String,
    /// Its name (the master's name when the pool has none).
    pub name: String,
    /// The master host's uuid (empty when not known yet).
    pub master_uuid: String,
    /// The master's address.
    pub master_address: String,
    /// The XAPI port.
    pub port: u16,
    /// The XAPI user.
    pub username: String,
    /// How many hosts it has.
    pub hosts: u32,
    /// How many VMs it has (not counting templates, snapshots and control domains).
    pub vms: u32,
    /// When the pool was added (Unix seconds).
    pub added_at: i64,
    /// The last full inventory sync (Unix seconds).
    pub synced_at: Option<i64>,
    /// The last connection problem, empty when the A3 is in sync.
    pub status: String,
}

/// A host as the API lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostRow {
    /// The host's uuid.
    pub uuid: String,
    /// Its pool's uuid.
    pub pool_uuid: String,
    /// Its pool's name.
    pub pool_name: String,
    /// Its name.
    pub name: String,
    /// Its management address.
    pub address: String,
    /// The XAPI port.
    pub port: u16,
    /// Whether it is the pool master.
    pub is_master: bool,
    /// Whether it accepts VMs.
    pub enabled: bool,
    /// The pinned certificate fingerprint (`None` until the A3 first reaches it).
    pub cert_sha256: Option<String>,
}

impl HostRow {
    /// Where its XAPI listens.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(&self.address, self.port)
    }
}

/// A VM with its disks and network interfaces.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmRow {
    /// The VM's uuid.
    pub uuid: String,
    /// Its XAPI ref.
    pub xapi_ref: String,
    /// Its pool's uuid.
    pub pool_uuid: String,
    /// Its pool's name.
    pub pool_name: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// `Running`, `Halted`, …
    pub power_state: String,
    /// The host it runs on, when running.
    pub host: Option<String>,
    /// Static memory maximum in bytes.
    pub memory_bytes: i64,
    /// vCPUs.
    pub vcpus: i64,
    /// Its disks (VBDs of type `Disk`), by device number.
    pub disks: Vec<DiskRow>,
    /// Its network interfaces, by device number.
    pub nics: Vec<NicRow>,
}

/// One disk of a VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskRow {
    /// The VBD's device number (`0`, `1`, …).
    pub userdevice: String,
    /// `RW` or `RO`.
    pub mode: String,
    /// The VDI's uuid (`None` when the VBD's VDI is not known).
    pub vdi_uuid: Option<String>,
    /// The VDI's XAPI ref.
    pub vdi_ref: String,
    /// The VDI's name.
    pub vdi_name: Option<String>,
    /// The VDI's size in bytes.
    pub virtual_size: Option<i64>,
    /// The SR's uuid.
    pub sr_uuid: Option<String>,
    /// The SR's name.
    pub sr_name: Option<String>,
}

/// One network interface of a VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NicRow {
    /// The VIF's device number.
    pub device: String,
    /// Its MAC address.
    pub mac: String,
    /// The network's uuid.
    pub network_uuid: Option<String>,
    /// The network's name.
    pub network_name: Option<String>,
}

/// What the A3 needs to connect to a pool.
#[derive(Clone, Debug)]
pub struct PoolAccess {
    /// The pool's uuid.
    pub uuid: String,
    /// The pool's ref.
    pub reference: String,
    /// The XAPI port.
    pub port: u16,
    /// The XAPI user.
    pub username: String,
    /// The master host's ref, as last known.
    pub master_ref: String,
    /// Every known host.
    pub hosts: Vec<HostAccess>,
}

/// One host of a [`PoolAccess`].
#[derive(Clone, Debug)]
pub struct HostAccess {
    /// The host's uuid.
    pub uuid: String,
    /// Its ref.
    pub reference: String,
    /// Its address.
    pub address: String,
    /// Its pinned certificate.
    pub pin: Option<Fingerprint>,
}

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

    /// Replaces a pool's inventory with a full sync's result: upserts every object and
    /// deletes those the pool no longer has.
    pub fn replace_inventory(
        &self,
        pool_uuid: &str,
        pool: &PoolRecord,
        objects: &PoolObjects,
    ) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        let run = |tx: &Transaction<'_>| -> rusqlite::Result<()> {
            update_pool(tx, pool_uuid, pool)?;
            tx.execute(
                "UPDATE pools SET synced_at = ?2 WHERE uuid = ?1",
                params![pool_uuid, unix_now()],
            )?;
            for (r, h) in &objects.hosts {
                upsert_host(tx, pool_uuid, r, h)?;
            }
            for (r, v) in &objects.vms {
                upsert_vm(tx, pool_uuid, r, v)?;
            }
            for (r, v) in &objects.vbds {
                upsert_vbd(tx, pool_uuid, r, v)?;
            }
            for (r, v) in &objects.vdis {
                upsert_vdi(tx, pool_uuid, r, v)?;
            }
            for (r, v) in &objects.srs {
                upsert_sr(tx, pool_uuid, r, v)?;
            }
            for (r, v) in &objects.networks {
                upsert_network(tx, pool_uuid, r, v)?;
            }
            for (r, v) in &objects.vifs {
                upsert_vif(tx, pool_uuid, r, v)?;
            }
            sweep(
                tx,
                "hosts",
                pool_uuid,
                objects.hosts.iter().map(|(_, h)| &h.uuid),
            )?;
            sweep(
                tx,
                "vms",
                pool_uuid,
                objects.vms.iter().map(|(_, v)| &v.uuid),
            )?;
            sweep(
                tx,
                "vbds",
                pool_uuid,
                objects.vbds.iter().map(|(_, v)| &v.uuid),
            )?;
            sweep(
                tx,
                "vdis",
                pool_uuid,
                objects.vdis.iter().map(|(_, v)| &v.uuid),
            )?;
            sweep(
                tx,
                "srs",
                pool_uuid,
                objects.srs.iter().map(|(_, v)| &v.uuid),
            )?;
            sweep(
                tx,
                "networks",
                pool_uuid,
                objects.networks.iter().map(|(_, v)| &v.uuid),
            )?;
            sweep(
                tx,
                "vifs",
                pool_uuid,
                objects.vifs.iter().map(|(_, v)| &v.uuid),
            )?;
            Ok(())
        };
        run(&tx).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    /// Applies a batch of event changes in one transaction.
    pub fn apply_changes(&self, pool_uuid: &str, changes: &[Change]) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        for change in changes {
            let r = match change {
                Change::Pool(p) => update_pool(&tx, pool_uuid, p),
                Change::Host(r, h) => upsert_host(&tx, pool_uuid, r, h),
                Change::Vm(r, v) => upsert_vm(&tx, pool_uuid, r, v),
                Change::Vbd(r, v) => upsert_vbd(&tx, pool_uuid, r, v),
                Change::Vdi(r, v) => upsert_vdi(&tx, pool_uuid, r, v),
                Change::Sr(r, v) => upsert_sr(&tx, pool_uuid, r, v),
                Change::Network(r, v) => upsert_network(&tx, pool_uuid, r, v),
                Change::Vif(r, v) => upsert_vif(&tx, pool_uuid, r, v),
                Change::Deleted { class, reference } => match table_of(class) {
                    Some(table) => tx
                        .execute(
                            &format!("DELETE FROM {table} WHERE pool_uuid = ?1 AND ref = ?2"),
                            params![pool_uuid, reference],
                        )
                        .map(drop),
                    None => Ok(()),
                },
            };
            r.map_err(|e| self.error(e))?;
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

    /// VMs (not templates, snapshots or control domains) with their disks and NICs, of one
    /// pool or of all.
    pub fn list_vms(&self, pool_uuid: Option<&str>) -> Result<Vec<VmRow>, CatalogError> {
        let conn = self.lock();
        list_vms(&conn, pool_uuid).map_err(|e| self.error(e))
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

fn list_vms(conn: &Connection, pool_uuid: Option<&str>) -> rusqlite::Result<Vec<VmRow>> {
    type Key = (String, String);
    let mut disks: HashMap<Key, Vec<DiskRow>> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT b.pool_uuid, b.vm_ref, b.userdevice, b.mode, d.uuid, b.vdi_ref, d.name,
                d.virtual_size, s.uuid, s.name
         FROM vbds b
         LEFT JOIN vdis d ON d.pool_uuid = b.pool_uuid AND d.ref = b.vdi_ref
         LEFT JOIN srs s ON s.pool_uuid = d.pool_uuid AND s.ref = d.sr_ref
         WHERE b.type = 'Disk' AND (?1 IS NULL OR b.pool_uuid = ?1)
         ORDER BY CAST(b.userdevice AS INTEGER), b.userdevice",
    )?;
    let mut rows = stmt.query([pool_uuid])?;
    while let Some(row) = rows.next()? {
        disks
            .entry((row.get(0)?, row.get(1)?))
            .or_default()
            .push(DiskRow {
                userdevice: row.get(2)?,
                mode: row.get(3)?,
                vdi_uuid: row.get(4)?,
                vdi_ref: row.get(5)?,
                vdi_name: row.get(6)?,
                virtual_size: row.get(7)?,
                sr_uuid: row.get(8)?,
                sr_name: row.get(9)?,
            });
    }
    let mut nics: HashMap<Key, Vec<NicRow>> = HashMap::new();
    let mut stmt = conn.prepare(
        "SELECT f.pool_uuid, f.vm_ref, f.device, f.mac, n.uuid, n.name
         FROM vifs f
         LEFT JOIN networks n ON n.pool_uuid = f.pool_uuid AND n.ref = f.network_ref
         WHERE (?1 IS NULL OR f.pool_uuid = ?1)
         ORDER BY CAST(f.device AS INTEGER), f.device",
    )?;
    let mut rows = stmt.query([pool_uuid])?;
    while let Some(row) = rows.next()? {
        nics.entry((row.get(0)?, row.get(1)?))
            .or_default()
            .push(NicRow {
                device: row.get(2)?,
                mac: row.get(3)?,
                network_uuid: row.get(4)?,
                network_name: row.get(5)?,
            });
    }
    let mut stmt = conn.prepare(
        "SELECT v.uuid, v.ref, v.pool_uuid, p.name, v.name, v.description, v.power_state,
                h.name, v.memory_bytes, v.vcpus
         FROM vms v
         JOIN pools p ON p.uuid = v.pool_uuid
         LEFT JOIN hosts h ON h.pool_uuid = v.pool_uuid AND h.ref = v.resident_on
         WHERE NOT v.is_template AND NOT v.is_snapshot AND NOT v.is_control_domain
           AND (?1 IS NULL OR v.pool_uuid = ?1)
         ORDER BY p.name, v.name, v.uuid",
    )?;
    stmt.query_map([pool_uuid], |row| {
        let key: Key = (row.get(2)?, row.get(1)?);
        Ok(VmRow {
            uuid: row.get(0)?,
            disks: disks.remove(&key).unwrap_or_default(),
            nics: nics.remove(&key).unwrap_or_default(),
            xapi_ref: key.1,
            pool_uuid: key.0,
            pool_name: row.get(3)?,
            name: row.get(4)?,
            description: row.get(5)?,
            power_state: row.get(6)?,
            host: row.get(7)?,
            memory_bytes: row.get(8)?,
            vcpus: row.get(9)?,
        })
    })?
    .collect()
}

/// The table of an event class, for deletions.
fn table_of(class: &str) -> Option<&'static str> {
    Some(match class {
        "host" => "hosts",
        "vm" => "vms",
        "vbd" => "vbds",
        "vdi" => "vdis",
        "sr" => "srs",
        "network" => "networks",
        "vif" => "vifs",
        _ => return None,
    })
}

fn update_pool(tx: &Connection, pool_uuid: &str, pool: &PoolRecord) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE pools SET name = ?2, master_ref = ?3 WHERE uuid = ?1",
        params![pool_uuid, pool.name_label, pool.master],
    )
    .map(drop)
}

/// Inserts or updates one object row. A ref reused under another uuid (the object was
/// recreated) replaces the old row.
fn upsert(
    tx: &Connection,
    table: &str,
    pool_uuid: &str,
    reference: &str,
    uuid: &str,
    columns: &[&str],
    values: &[&dyn ToSql],
) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!(
        "DELETE FROM {table} WHERE pool_uuid = ?1 AND ref = ?2 AND uuid <> ?3"
    ))?
    .execute(params![pool_uuid, reference, uuid])?;
    let names = columns.join(", ");
    let marks: Vec<String> = (4..4 + columns.len()).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = columns
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let sql = format!(
        "INSERT INTO {table} (pool_uuid, ref, uuid, {names}) VALUES (?1, ?2, ?3, {})
         ON CONFLICT(uuid) DO UPDATE SET pool_uuid = excluded.pool_uuid, ref = excluded.ref, {}",
        marks.join(", "),
        updates.join(", ")
    );
    let mut all: Vec<&dyn ToSql> = vec![&pool_uuid, &reference, &uuid];
    all.extend_from_slice(values);
    tx.prepare_cached(&sql)?.execute(all.as_slice()).map(drop)
}

fn upsert_host(tx: &Connection, pool: &str, r: &str, h: &HostRecord) -> rusqlite::Result<()> {
    upsert(
        tx,
        "hosts",
        pool,
        r,
        &h.uuid,
        &["name", "address", "enabled"],
        &[&h.name_label, &h.address, &h.enabled],
    )
}

fn upsert_vm(tx: &Connection, pool: &str, r: &str, v: &VmRecord) -> rusqlite::Result<()> {
    upsert(
        tx,
        "vms",
        pool,
        r,
        &v.uuid,
        &[
            "name",
            "description",
            "power_state",
            "is_template",
            "is_snapshot",
            "is_control_domain",
            "snapshot_of",
            "resident_on",
            "memory_bytes",
            "vcpus",
        ],
        &[
            &v.name_label,
            &v.name_description,
            &v.power_state,
            &v.is_a_template,
            &v.is_a_snapshot,
            &v.is_control_domain,
            &v.snapshot_of,
            &v.resident_on,
            &v.memory_static_max,
            &v.vcpus_max,
        ],
    )
}

fn upsert_vbd(tx: &Connection, pool: &str, r: &str, v: &VbdRecord) -> rusqlite::Result<()> {
    upsert(
        tx,
        "vbds",
        pool,
        r,
        &v.uuid,
        &[
            "vm_ref",
            "vdi_ref",
            "device",
            "userdevice",
            "type",
            "mode",
            "attached",
        ],
        &[
            &v.vm,
            &v.vdi,
            &v.device,
            &v.userdevice,
            &v.kind,
            &v.mode,
            &v.currently_attached,
        ],
    )
}

fn upsert_vdi(tx: &Connection, pool: &str, r: &str, v: &VdiRecord) -> rusqlite::Result<()> {
    upsert(
        tx,
        "vdis",
        pool,
        r,
        &v.uuid,
        &[
            "name",
            "sr_ref",
            "virtual_size",
            "physical_utilisation",
            "type",
            "cbt_enabled",
            "is_snapshot",
            "read_only",
        ],
        &[
            &v.name_label,
            &v.sr,
            &v.virtual_size,
            &v.physical_utilisation,
            &v.kind,
            &v.cbt_enabled,
            &v.is_a_snapshot,
            &v.read_only,
        ],
    )
}

fn upsert_sr(tx: &Connection, pool: &str, r: &str, v: &SrRecord) -> rusqlite::Result<()> {
    upsert(
        tx,
        "srs",
        pool,
        r,
        &v.uuid,
        &[
            "name",
            "type",
            "content_type",
            "shared",
            "physical_size",
            "physical_utilisation",
        ],
        &[
            &v.name_label,
            &v.kind,
            &v.content_type,
            &v.shared,
            &v.physical_size,
            &v.physical_utilisation,
        ],
    )
}

fn upsert_network(tx: &Connection, pool: &str, r: &str, v: &NetworkRecord) -> rusqlite::Result<()> {
    upsert(
        tx,
        "networks",
        pool,
        r,
        &v.uuid,
        &["name", "bridge"],
        &[&v.name_label, &v.bridge],
    )
}

fn upsert_vif(tx: &Connection, pool: &str, r: &str, v: &VifRecord) -> rusqlite::Result<()> {
    upsert(
        tx,
        "vifs",
        pool,
        r,
        &v.uuid,
        &["vm_ref", "network_ref", "device", "mac"],
        &[&v.vm, &v.network, &v.device, &v.mac],
    )
}

/// Deletes the pool's rows of `table` whose uuid is not in `keep`.
fn sweep<'a>(
    tx: &Connection,
    table: &str,
    pool_uuid: &str,
    keep: impl Iterator<Item = &'a String>,
) -> rusqlite::Result<()> {
    let keep: HashSet<&str> = keep.map(String::as_str).collect();
    let existing: Vec<String> = tx
        .prepare(&format!("SELECT uuid FROM {table} WHERE pool_uuid = ?1"))?
        .query_map([pool_uuid], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut delete = tx.prepare(&format!("DELETE FROM {table} WHERE uuid = ?1"))?;
    for uuid in existing.iter().filter(|u| !keep.contains(u.as_str())) {
        delete.execute([uuid])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(uuid: &str, address: &str) -> HostRecord {
        HostRecord {
            uuid: uuid.into(),
            name_label: format!("host-{address}"),
            address: address.into(),
            enabled: true,
        }
    }

    fn pool_record() -> PoolRecord {
        PoolRecord {
            uuid: "p1".into(),
            name_label: "prod".into(),
            master: "OpaqueRef:h1".into(),
            default_sr: String::new(),
        }
    }

    fn vm(uuid: &str, name: &str) -> VmRecord {
        VmRecord {
            uuid: uuid.into(),
            name_label: name.into(),
            name_description: String::new(),
            power_state: "Running".into(),
            is_a_template: false,
            is_a_snapshot: false,
            is_control_domain: false,
            snapshot_of: "OpaqueRef:NULL".into(),
            resident_on: "OpaqueRef:h1".into(),
            memory_static_max: 1 << 30,
            vcpus_max: 2,
            vbds: vec![],
            vifs: vec![],
        }
    }

    fn catalog_with_pool() -> Catalog {
        let cat = Catalog::in_memory().unwrap();
        let pin = Fingerprint::of(b"cert-1");
        let hosts = vec![
            (
                "OpaqueRef:h1".to_string(),
                host("hu1", "127.0.0.11"),
                Some(pin),
            ),
            ("OpaqueRef:h2".to_string(), host("hu2", "127.0.0.12"), None),
        ];
        cat.record_pool(&NewPool {
            reference: "OpaqueRef:p1",
            record: &pool_record(),
            port: 4443,
            username: "root",
            hosts: &hosts,
        })
        .unwrap();
        cat
    }

    #[test]
    fn pools_hosts_and_pins() {
        let cat = catalog_with_pool();
        let pools = cat.list_pools().unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].hosts, 2);
        assert_eq!(pools[0].master_address, "127.0.0.11");
        let hosts = cat.list_hosts().unwrap();
        assert!(hosts[0].is_master && !hosts[1].is_master);
        let ep = Endpoint::new("127.0.0.11", 4443);
        assert_eq!(cat.pin_for(&ep).unwrap(), Some(Fingerprint::of(b"cert-1")));
        assert_eq!(
            cat.pin_for(&Endpoint::new("127.0.0.11", 443)).unwrap(),
            None
        );
        assert_eq!(
            cat.pin_for(&Endpoint::new("127.0.0.12", 4443)).unwrap(),
            None
        );
        // A sync never touches pins.
        let objects = PoolObjects {
            hosts: vec![
                ("OpaqueRef:h1".into(), host("hu1", "127.0.0.11")),
                ("OpaqueRef:h2".into(), host("hu2", "127.0.0.12")),
            ],
            ..PoolObjects::default()
        };
        cat.replace_inventory("p1", &pool_record(), &objects)
            .unwrap();
        assert_eq!(cat.pin_for(&ep).unwrap(), Some(Fingerprint::of(b"cert-1")));
        assert_eq!(
            cat.find_host("127.0.0.12:4443").unwrap().unwrap().uuid,
            "hu2"
        );
        assert_eq!(cat.find_host("hu1").unwrap().unwrap().address, "127.0.0.11");
        assert!(cat.find_host("127.0.0.99").unwrap().is_none());
        assert_eq!(cat.remove_pool("p1").unwrap(), Some(2));
        assert!(cat.list_hosts().unwrap().is_empty());
        assert_eq!(cat.remove_pool("p1").unwrap(), None);
    }

    #[test]
    fn sync_and_events_keep_vms_with_disks() {
        let cat = catalog_with_pool();
        let objects = PoolObjects {
            hosts: vec![("OpaqueRef:h1".into(), host("hu1", "127.0.0.11"))],
            vms: vec![
                ("OpaqueRef:v1".into(), vm("vu1", "web")),
                ("OpaqueRef:v2".into(), vm("vu2", "db")),
            ],
            vbds: vec![(
                "OpaqueRef:b1".into(),
                VbdRecord {
                    uuid: "bu1".into(),
                    vm: "OpaqueRef:v1".into(),
                    vdi: "OpaqueRef:d1".into(),
                    device: "xvda".into(),
                    userdevice: "0".into(),
                    kind: "Disk".into(),
                    mode: "RW".into(),
                    currently_attached: true,
                },
            )],
            vdis: vec![(
                "OpaqueRef:d1".into(),
                VdiRecord {
                    uuid: "du1".into(),
                    name_label: "web disk".into(),
                    sr: "OpaqueRef:s1".into(),
                    virtual_size: 10 << 30,
                    physical_utilisation: 1 << 30,
                    kind: "user".into(),
                    cbt_enabled: false,
                    is_a_snapshot: false,
                    read_only: false,
                },
            )],
            srs: vec![(
                "OpaqueRef:s1".into(),
                SrRecord {
                    uuid: "su1".into(),
                    name_label: "Local storage".into(),
                    kind: "ext".into(),
                    content_type: "user".into(),
                    shared: false,
                    physical_size: 100 << 30,
                    physical_utilisation: 0,
                },
            )],
            ..PoolObjects::default()
        };
        cat.replace_inventory("p1", &pool_record(), &objects)
            .unwrap();
        // The sweep removed the host the pool no longer has.
        assert_eq!(cat.list_hosts().unwrap().len(), 1);
        let vms = cat.list_vms(None).unwrap();
        assert_eq!(vms.len(), 2);
        let web = vms.iter().find(|v| v.name == "web").unwrap();
        assert_eq!(web.disks.len(), 1);
        assert_eq!(web.disks[0].sr_name.as_deref(), Some("Local storage"));
        assert_eq!(web.disks[0].virtual_size, Some(10 << 30));
        assert_eq!(web.host.as_deref(), Some("host-127.0.0.11"));

        cat.apply_changes(
            "p1",
            &[
                Change::Vm("OpaqueRef:v3".into(), vm("vu3", "new")),
                Change::Deleted {
                    class: "vm".into(),
                    reference: "OpaqueRef:v2".into(),
                },
            ],
        )
        .unwrap();
        let names: Vec<String> = cat
            .list_vms(Some("p1"))
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, vec!["new".to_string(), "web".to_string()]);
        assert!(cat.list_vms(Some("other")).unwrap().is_empty());
    }
}
