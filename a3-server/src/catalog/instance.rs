//! This A3's instance id: random, made once per catalog (so per state dir). Everything the
//! A3 creates in a pool carries it ([`crate::xapi::owner`]), so that recovery and the
//! reconciler act only on their own objects: never on those of a second A3 managing the
//! same pool, nor on those an earlier A3 (a fresh state dir reuses run numbers) left.

use rusqlite::OptionalExtension;

use super::{Catalog, CatalogError};

/// The table: one row.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instance (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    id TEXT NOT NULL
);
";

impl Catalog {
    /// The instance id, made (16 hex digits) the first time it is asked for.
    pub fn instance_id(&self) -> Result<String, CatalogError> {
        let conn = self.lock();
        let made = hex::encode(rand::random::<[u8; 8]>());
        conn.execute(
            "INSERT OR IGNORE INTO instance (only_row, id) VALUES (1, ?1)",
            [&made],
        )
        .map_err(|e| self.error(e))?;
        conn.query_row("SELECT id FROM instance WHERE only_row = 1", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| self.error(e))?
        .ok_or_else(|| self.error(rusqlite::Error::QueryReturnedNoRows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_made_once_and_differs_between_catalogs() {
        let a = Catalog::in_memory().unwrap();
        let id = a.instance_id().unwrap();
        assert_eq!(id.len(), 16);
        assert_eq!(a.instance_id().unwrap(), id, "the id is stable");
        let b = Catalog::in_memory().unwrap();
        assert_ne!(b.instance_id().unwrap(), id);
    }
}
