//! The objects of each pool as XAPI reports them: a full sync replaces them, events
//! change one at a time.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, ToSql, Transaction, params};

use super::*;
use crate::catalog::{Catalog, CatalogError};
use crate::util::clock::unix_now;

impl Catalog {
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

    /// VMs (not templates, snapshots or control domains) with their disks and NICs, of one
    /// pool or of all.
    pub fn list_vms(&self, pool_uuid: Option<&str>) -> Result<Vec<VmRow>, CatalogError> {
        let conn = self.lock();
        list_vms(&conn, pool_uuid).map_err(|e| self.error(e))
    }
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

pub(super) fn upsert_host(
    tx: &Connection,
    pool: &str,
    r: &str,
    h: &HostRecord,
) -> rusqlite::Result<()> {
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
