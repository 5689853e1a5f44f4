//! The ABD VMs the A3 runs in each pool, and the template each pool has.
//!
//! An ABD row is written before its VM is cloned (state `provisioning`), so a crash
//! mid-provisioning leaves a row that recovery can finish or remove. `busy_run` says which
//! run holds it: one ABD serves one VM backup at a time; `idle` ones are reused.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};

/// The tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS abd_vms (
    id TEXT PRIMARY KEY,
    pool_uuid TEXT NOT NULL,
    vm_uuid TEXT,
    network_uuid TEXT NOT NULL,
    ip TEXT NOT NULL,
    template_version TEXT NOT NULL,
    state TEXT NOT NULL,
    busy_run INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS abd_templates (
    pool_uuid TEXT PRIMARY KEY,
    vm_uuid TEXT NOT NULL,
    version TEXT NOT NULL,
    imported_at INTEGER NOT NULL
);
";

/// One ABD VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbdVmRow {
    /// The ABD id: its credential id and the suffix of its VM name.
    pub id: String,
    /// Its pool.
    pub pool_uuid: String,
    /// Its VM, once cloned.
    pub vm_uuid: Option<String>,
    /// The network its VIF is on.
    pub network_uuid: String,
    /// `dhcp` or the static `addr/prefix` it was given.
    pub ip: String,
    /// The template version it was cloned from.
    pub template_version: String,
    /// `provisioning`, `idle`, `busy` or `broken`.
    pub state: String,
    /// The run using it.
    pub busy_run: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
}

/// A pool's imported template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRow {
    /// The pool.
    pub pool_uuid: String,
    /// The template VM's uuid.
    pub vm_uuid: String,
    /// Its version (`abd_template_version`).
    pub version: String,
    /// Unix seconds.
    pub imported_at: i64,
}

const ABD_COLUMNS: &str =
    "id, pool_uuid, vm_uuid, network_uuid, ip, template_version, state, busy_run, created_at";

impl Catalog {
    /// Records a new ABD about to be provisioned, busy for `run`.
    pub fn abd_vm_insert(&self, row: &AbdVmRow) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                &format!("INSERT INTO abd_vms ({ABD_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
                params![
                    row.id,
                    row.pool_uuid,
                    row.vm_uuid,
                    row.network_uuid,
                    row.ip,
                    row.template_version,
                    row.state,
                    row.busy_run,
                    row.created_at
                ],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Records the VM an ABD was cloned into.
    pub fn abd_vm_set_vm(&self, id: &str, vm_uuid: &str) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE abd_vms SET vm_uuid = ?2 WHERE id = ?1",
                params![id, vm_uuid],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Sets an ABD's state and the run holding it.
    pub fn abd_vm_set_state(
        &self,
        id: &str,
        state: &str,
        busy_run: Option<i64>,
    ) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE abd_vms SET state = ?2, busy_run = ?3 WHERE id = ?1",
                params![id, state, busy_run],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Takes an idle ABD of `pool` on template `version` for `run`, atomically. Returns it.
    pub fn abd_vm_claim_idle(
        &self,
        pool_uuid: &str,
        version: &str,
        run: i64,
    ) -> Result<Option<AbdVmRow>, CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        let row = tx
            .query_row(
                &format!(
                    "SELECT {ABD_COLUMNS} FROM abd_vms WHERE pool_uuid = ?1 AND state = 'idle'
                     AND template_version = ?2 ORDER BY created_at, id LIMIT 1"
                ),
                params![pool_uuid, version],
                abd_from_row,
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let Some(mut row) = row else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE abd_vms SET state = 'busy', busy_run = ?2 WHERE id = ?1",
            params![row.id, run],
        )
        .map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        row.state = "busy".into();
        row.busy_run = Some(run);
        Ok(Some(row))
    }

    /// Forgets an ABD and frees its static address, in one transaction.
    pub fn abd_vm_remove(&self, id: &str) -> Result<(), CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        tx.execute(
            "UPDATE abd_ips SET assigned_to = NULL WHERE assigned_to = ?1",
            [id],
        )
        .map_err(|e| self.error(e))?;
        tx.execute("DELETE FROM abd_vms WHERE id = ?1", [id])
            .map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))
    }

    /// Every ABD VM (of one pool, or all), oldest first.
    pub fn abd_vm_list(&self, pool_uuid: Option<&str>) -> Result<Vec<AbdVmRow>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {ABD_COLUMNS} FROM abd_vms WHERE ?1 IS NULL OR pool_uuid = ?1
                 ORDER BY created_at, id"
            ))
            .map_err(|e| self.error(e))?;
        stmt.query_map(params![pool_uuid], abd_from_row)
            .map_err(|e| self.error(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(e))
    }

    /// One ABD VM.
    pub fn abd_vm_get(&self, id: &str) -> Result<Option<AbdVmRow>, CatalogError> {
        self.lock()
            .query_row(
                &format!("SELECT {ABD_COLUMNS} FROM abd_vms WHERE id = ?1"),
                [id],
                abd_from_row,
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    /// Records the template imported into a pool (replacing an older one).
    pub fn template_set(&self, row: &TemplateRow) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "INSERT INTO abd_templates (pool_uuid, vm_uuid, version, imported_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(pool_uuid) DO UPDATE SET vm_uuid = ?2, version = ?3,
                     imported_at = ?4",
                params![row.pool_uuid, row.vm_uuid, row.version, row.imported_at],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// The template of a pool.
    pub fn template_get(&self, pool_uuid: &str) -> Result<Option<TemplateRow>, CatalogError> {
        self.lock()
            .query_row(
                "SELECT pool_uuid, vm_uuid, version, imported_at FROM abd_templates
                 WHERE pool_uuid = ?1",
                [pool_uuid],
                |r| {
                    Ok(TemplateRow {
                        pool_uuid: r.get(0)?,
                        vm_uuid: r.get(1)?,
                        version: r.get(2)?,
                        imported_at: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.error(e))
    }
}

fn abd_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AbdVmRow> {
    Ok(AbdVmRow {
        id: r.get(0)?,
        pool_uuid: r.get(1)?,
        vm_uuid: r.get(2)?,
        network_uuid: r.get(3)?,
        ip: r.get(4)?,
        template_version: r.get(5)?,
        state: r.get(6)?,
        busy_run: r.get(7)?,
        created_at: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn abd(id: &str, state: &str, version: &str) -> AbdVmRow {
        AbdVmRow {
            id: id.into(),
            pool_uuid: "p".into(),
            vm_uuid: None,
            network_uuid: "n".into(),
            ip: "dhcp".into(),
            template_version: version.into(),
            state: state.into(),
            busy_run: None,
            created_at: 1,
        }
    }

    #[test]
    fn idle_abds_are_claimed_once_and_only_on_the_current_template() {
        let c = Catalog::in_memory().unwrap();
        c.abd_vm_insert(&abd("a", "idle", "v1")).unwrap();
        c.abd_vm_insert(&abd("b", "idle", "v2")).unwrap();
        let got = c.abd_vm_claim_idle("p", "v2", 5).unwrap().unwrap();
        assert_eq!((got.id.as_str(), got.busy_run), ("b", Some(5)));
        assert!(c.abd_vm_claim_idle("p", "v2", 6).unwrap().is_none());
        c.abd_vm_set_vm("b", "vm-b").unwrap();
        c.abd_vm_set_state("b", "idle", None).unwrap();
        assert_eq!(
            c.abd_vm_get("b").unwrap().unwrap().vm_uuid.as_deref(),
            Some("vm-b")
        );
        c.abd_vm_remove("a").unwrap();
        assert_eq!(c.abd_vm_list(Some("p")).unwrap().len(), 1);
        c.template_set(&TemplateRow {
            pool_uuid: "p".into(),
            vm_uuid: "t".into(),
            version: "v2".into(),
            imported_at: 3,
        })
        .unwrap();
        assert_eq!(c.template_get("p").unwrap().unwrap().version, "v2");
    }
}
