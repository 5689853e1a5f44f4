//! Each pool's `Alike_SR`: the uuid of the SR the A3 created (or adopted) in it, so that it is
//! found again by uuid and never created twice. The row goes with its pool.

use rusqlite::{OptionalExtension, params};

use super::{Catalog, CatalogError};

/// The table.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alike_srs (
    pool_uuid TEXT PRIMARY KEY REFERENCES pools(uuid) ON DELETE CASCADE,
    sr_uuid TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
);
";

impl Catalog {
    /// The uuid of the pool's `Alike_SR`, once recorded.
    pub fn alike_sr(&self, pool_uuid: &str) -> Result<Option<String>, CatalogError> {
        self.lock()
            .query_row(
                "SELECT sr_uuid FROM alike_srs WHERE pool_uuid = ?1",
                [pool_uuid],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    /// Records (or replaces) the pool's `Alike_SR`.
    pub fn set_alike_sr(
        &self,
        pool_uuid: &str,
        sr_uuid: &str,
        now: i64,
    ) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "INSERT INTO alike_srs (pool_uuid, sr_uuid, recorded_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(pool_uuid) DO UPDATE SET sr_uuid = ?2, recorded_at = ?3",
                params![pool_uuid, sr_uuid, now],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Forgets the pool's `Alike_SR` (it was destroyed in the pool).
    pub fn forget_alike_sr(&self, pool_uuid: &str) -> Result<(), CatalogError> {
        self.lock()
            .execute("DELETE FROM alike_srs WHERE pool_uuid = ?1", [pool_uuid])
            .map_err(|e| self.error(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_replaces() {
        let c = Catalog::in_memory().unwrap();
        c.lock()
            .execute(
                "INSERT INTO pools (uuid, ref, name, master_ref, port, username, added_at, status)
                 VALUES ('p', 'r', 'n', 'm', 443, 'root', 0, 'ok')",
                [],
            )
            .unwrap();
        assert_eq!(c.alike_sr("p").unwrap(), None);
        c.set_alike_sr("p", "sr-1", 1).unwrap();
        c.set_alike_sr("p", "sr-2", 2).unwrap();
        assert_eq!(c.alike_sr("p").unwrap().as_deref(), Some("sr-2"));
        c.lock()
            .execute("DELETE FROM pools WHERE uuid = 'p'", [])
            .unwrap();
        assert_eq!(c.alike_sr("p").unwrap(), None);
    }
}
