//! Backup versions: what the store has committed.
//!
//! A version belongs to a subject (a named disk now, a VM later), carries an opaque JSON
//! metadata blob and has one or more disks, each pointing at its manifest by digest. The
//! store inserts a version and its disks in one transaction, after the manifests are
//! durable and, inside the transaction, after its version record is (see
//! [`Catalog::version_insert`]), so a row here always means "complete and restorable"; a
//! version absent from these tables is not listed, whatever files a crash left in the
//! store. The store's version records can recreate these rows, ids included
//! ([`Catalog::version_restore`]).

use rusqlite::{OptionalExtension, params};

use super::{Catalog, CatalogError};

/// The tables.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    metadata TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_by_subject ON versions(subject, id);
CREATE TABLE IF NOT EXISTS version_disks (
    version INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    disk TEXT NOT NULL,
    size INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (version, disk)
);
";

/// A version row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    /// The version id.
    pub id: i64,
    /// What was backed up.
    pub subject: String,
    /// Unix seconds of the commit.
    pub created_at: i64,
    /// The caller's JSON metadata, as text.
    pub metadata: String,
    /// The disks, by name.
    pub disks: Vec<VersionDiskRow>,
}

/// One disk of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDiskRow {
    /// The disk's name within the version.
    pub disk: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Hex digest naming the manifest in the store.
    pub manifest: String,
}

impl Catalog {
    /// Records a complete version with its disks, atomically, and returns its id. Inside
    /// the transaction, once the id is known and before the commit, `durable(id)` runs:
    /// the store writes the version's record there, so the row never exists without it.
    /// An error from `durable` rolls the transaction back. It runs with the catalog
    /// locked: it must not use the catalog.
    pub fn version_insert<E: From<CatalogError>>(
        &self,
        subject: &str,
        created_at: i64,
        metadata: &str,
        disks: &[VersionDiskRow],
        durable: impl FnOnce(i64) -> Result<(), E>,
    ) -> Result<i64, E> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        tx.execute(
            "INSERT INTO versions (subject, created_at, metadata) VALUES (?1, ?2, ?3)",
            params![subject, created_at, metadata],
        )
        .map_err(|e| self.error(e))?;
        let id = tx.last_insert_rowid();
        insert_disks(&tx, id, disks).map_err(|e| self.error(e))?;
        durable(id)?;
        tx.commit().map_err(|e| self.error(e))?;
        Ok(id)
    }

    /// Recreates a version row and its disks under the row's own id (`store
    /// rebuild-catalog`). Idempotent: an identical row already there is `Present`.
    pub fn version_restore(&self, v: &VersionRow) -> Result<VersionRestore, CatalogError> {
        if let Some(existing) = self.version_get(v.id)? {
            let mut want = v.clone();
            want.disks.sort_by(|a, b| a.disk.cmp(&b.disk));
            return Ok(if existing == want {
                VersionRestore::Present
            } else {
                VersionRestore::Conflict(Box::new(existing))
            });
        }
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        tx.execute(
            "INSERT INTO versions (id, subject, created_at, metadata) VALUES (?1, ?2, ?3, ?4)",
            params![v.id, v.subject, v.created_at, v.metadata],
        )
        .map_err(|e| self.error(e))?;
        insert_disks(&tx, v.id, &v.disks).map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        Ok(VersionRestore::Added)
    }

    /// The ids of every version, ascending.
    pub fn version_ids(&self) -> Result<Vec<i64>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT id FROM versions ORDER BY id")
            .map_err(|e| self.error(e))?;
        stmt.query_map([], |r| r.get(0))
            .map_err(|e| self.error(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(e))
    }

    /// One version, if it exists.
    pub fn version_get(&self, id: i64) -> Result<Option<VersionRow>, CatalogError> {
        let row = self
            .lock()
            .query_row(
                "SELECT id, subject, created_at, metadata FROM versions WHERE id = ?1",
                params![id],
                version_from_row,
            )
            .optional()
            .map_err(|e| self.error(e))?;
        match row {
            Some(mut v) => {
                v.disks = self.version_disks(v.id)?;
                Ok(Some(v))
            }
            None => Ok(None),
        }
    }

    /// The versions of `subject` (or of every subject), oldest first.
    pub fn version_list(&self, subject: Option<&str>) -> Result<Vec<VersionRow>, CatalogError> {
        let mut rows: Vec<VersionRow> = {
            let conn = self.lock();
            let mut stmt = conn
                .prepare(
                    "SELECT id, subject, created_at, metadata FROM versions
                     WHERE ?1 IS NULL OR subject = ?1 ORDER BY id",
                )
                .map_err(|e| self.error(e))?;
            stmt.query_map(params![subject], version_from_row)
                .map_err(|e| self.error(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.error(e))?
        };
        for v in &mut rows {
            v.disks = self.version_disks(v.id)?;
        }
        Ok(rows)
    }

    /// The newest version of `subject`.
    pub fn version_latest(&self, subject: &str) -> Result<Option<VersionRow>, CatalogError> {
        let id: Option<i64> = self
            .lock()
            .query_row(
                "SELECT MAX(id) FROM versions WHERE subject = ?1",
                params![subject],
                |r| r.get(0),
            )
            .map_err(|e| self.error(e))?;
        match id {
            Some(id) => self.version_get(id),
            None => Ok(None),
        }
    }

    /// The newest version of every subject, without their disks.
    pub fn versions_latest(&self) -> Result<Vec<VersionRow>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, subject, created_at, metadata FROM versions
                 WHERE id IN (SELECT MAX(id) FROM versions GROUP BY subject) ORDER BY id",
            )
            .map_err(|e| self.error(e))?;
        stmt.query_map([], version_from_row)
            .map_err(|e| self.error(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.error(e))
    }

    fn version_disks(&self, version: i64) -> Result<Vec<VersionDiskRow>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT disk, size, block_size, manifest FROM version_disks
                 WHERE version = ?1 ORDER BY disk",
            )
            .map_err(|e| self.error(e))?;
        stmt.query_map(params![version], |r| {
            Ok(VersionDiskRow {
                disk: r.get(0)?,
                size: r.get::<_, i64>(1)? as u64,
                block_size: r.get(2)?,
                manifest: r.get(3)?,
            })
        })
        .map_err(|e| self.error(e))?
        .collect::<Result<_, _>>()
        .map_err(|e| self.error(e))
    }
}

/// What [`Catalog::version_restore`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRestore {
    /// The row was missing and is now there.
    Added,
    /// An identical row was already there.
    Present,
    /// Another version holds that id: the row there, left as it was.
    Conflict(Box<VersionRow>),
}

fn insert_disks(
    tx: &rusqlite::Transaction<'_>,
    version: i64,
    disks: &[VersionDiskRow],
) -> rusqlite::Result<()> {
    for d in disks {
        tx.execute(
            "INSERT INTO version_disks (version, disk, size, block_size, manifest)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![version, d.disk, d.size as i64, d.block_size, d.manifest],
        )?;
    }
    Ok(())
}

fn version_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        id: r.get(0)?,
        subject: r.get(1)?,
        created_at: r.get(2)?,
        metadata: r.get(3)?,
        disks: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_in_order() {
        let c = Catalog::in_memory().unwrap();
        let disk = |name: &str| VersionDiskRow {
            disk: name.into(),
            size: 5 << 20,
            block_size: 1 << 20,
            manifest: "ab".repeat(32),
        };
        assert_eq!(c.version_latest("web").unwrap(), None);
        let insert = |subject: &str, at: i64, meta: &str, disks: &[VersionDiskRow]| {
            c.version_insert(subject, at, meta, disks, |_| Ok::<_, CatalogError>(()))
                .unwrap()
        };
        let a = insert("web", 10, "{}", &[disk("xvda"), disk("xvdb")]);
        let b = insert("web", 20, "{\"x\":1}", &[disk("xvda")]);
        insert("db", 30, "{}", &[disk("xvda")]);
        assert!(b > a);
        let latest = c.version_latest("web").unwrap().unwrap();
        assert_eq!((latest.id, latest.metadata.as_str()), (b, "{\"x\":1}"));
        let first = c.version_get(a).unwrap().unwrap();
        assert_eq!(first.disks.len(), 2);
        assert_eq!(first.disks[1].disk, "xvdb");
        assert_eq!(c.version_list(Some("web")).unwrap().len(), 2);
        assert_eq!(c.version_list(None).unwrap().len(), 3);
        assert_eq!(c.version_get(999).unwrap(), None);
        assert_eq!(c.version_ids().unwrap().len(), 3);
        let latest: Vec<(String, i64)> = c
            .versions_latest()
            .unwrap()
            .into_iter()
            .map(|v| (v.subject, v.id))
            .collect();
        assert_eq!(latest, [("web".to_owned(), b), ("db".to_owned(), b + 1)]);
    }

    #[test]
    fn a_failed_durable_step_rolls_the_row_back_and_its_id_is_given_again() {
        let c = Catalog::in_memory().unwrap();
        let disk = VersionDiskRow {
            disk: "xvda".into(),
            size: 1,
            block_size: 4096,
            manifest: "cd".repeat(32),
        };
        let mut seen = None;
        let failed = c.version_insert("web", 1, "{}", std::slice::from_ref(&disk), |id| {
            seen = Some(id);
            Err(CatalogError::Io {
                path: "record".into(),
                source: std::io::Error::other("disk full"),
            })
        });
        assert!(failed.is_err());
        assert!(c.version_list(None).unwrap().is_empty());
        let id = c
            .version_insert("web", 2, "{}", &[disk], |_| Ok::<_, CatalogError>(()))
            .unwrap();
        assert_eq!(Some(id), seen);
    }

    #[test]
    fn restore_keeps_ids_and_is_idempotent() {
        let c = Catalog::in_memory().unwrap();
        let row = |id: i64, subject: &str| VersionRow {
            id,
            subject: subject.into(),
            created_at: 5,
            metadata: "{}".into(),
            disks: vec![
                VersionDiskRow {
                    disk: "xvdb".into(),
                    size: 1,
                    block_size: 4096,
                    manifest: "ab".repeat(32),
                },
                VersionDiskRow {
                    disk: "xvda".into(),
                    size: 2,
                    block_size: 4096,
                    manifest: "cd".repeat(32),
                },
            ],
        };
        assert_eq!(
            c.version_restore(&row(7, "web")).unwrap(),
            VersionRestore::Added
        );
        assert_eq!(
            c.version_restore(&row(7, "web")).unwrap(),
            VersionRestore::Present
        );
        assert!(matches!(
            c.version_restore(&row(7, "db")).unwrap(),
            VersionRestore::Conflict(_)
        ));
        assert_eq!(c.version_get(7).unwrap().unwrap().disks[0].disk, "xvda");
        // New versions number on from the restored ones.
        let next = c
            .version_insert("web", 9, "{}", &row(0, "web").disks, |_| {
                Ok::<_, CatalogError>(())
            })
            .unwrap();
        assert_eq!(next, 8);
    }
}
