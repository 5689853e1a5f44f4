//! The SQLite catalog: the A3's instance id, pools, hosts, inventory, ABDs, jobs, versions.
//!
//! Each area owns its tables: it declares its `CREATE TABLE IF NOT EXISTS` statements as a
//! `SCHEMA` constant, listed in [`SCHEMAS`], and its queries live in its own module. The
//! catalog runs in WAL mode with `synchronous=FULL`, so a committed transaction is durable:
//! the store relies on that to make a version visible only after its data is on disk.

pub mod abd_fleet;
pub mod abds;
pub mod instance;
pub mod inventory;
pub mod ip_pool;
pub mod jobs;
pub mod run_log;
pub mod snapshot;
pub mod sr;
pub mod versions;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

/// Every area's schema, applied in order at open.
const SCHEMAS: &[&str] = &[
    abd_fleet::SCHEMA,
    abds::SCHEMA,
    instance::SCHEMA,
    inventory::SCHEMA,
    ip_pool::SCHEMA,
    jobs::SCHEMA,
    sr::SCHEMA,
    versions::SCHEMA,
];

/// Columns added to a table after its first version: a catalog made before them gets them
/// at open (`CREATE TABLE IF NOT EXISTS` leaves an existing table as it was).
const ADDED_COLUMNS: &[(&str, &str, &str)] = abds::ADDED_COLUMNS;

/// Adds `column` to `table` unless it is there.
fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if !names.iter().any(|n| n == column) {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    Ok(())
}

/// Errors of the catalog itself.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog file could not be set up.
    #[error("catalog {path}: {source}")]
    Io {
        /// The catalog file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// SQLite refused an operation.
    #[error("catalog {path}: {source}")]
    Sqlite {
        /// The catalog file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The catalog's file system is full; SQLite rolled the change back.
    #[error(
        "catalog {path}: disk full: free space on its file system (`a3-server store gc` \
         removes what failed runs left in the store)"
    )]
    DiskFull {
        /// The catalog file.
        path: PathBuf,
    },
}

impl CatalogError {
    fn sqlite(path: &Path, source: rusqlite::Error) -> CatalogError {
        if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return CatalogError::DiskFull {
                path: path.to_owned(),
            };
        }
        CatalogError::Sqlite {
            path: path.to_owned(),
            source,
        }
    }
}

/// A shared handle on the catalog database.
#[derive(Clone)]
pub struct Catalog {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Catalog {
    /// Opens (creating if needed) the catalog at `path` and applies every schema.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let err = |source| CatalogError::sqlite(path, source);
        // The catalog holds the pools' inventory and pinned certificates: owner-only from
        // its creation (SQLite gives its -wal and -shm files the same mode), and an older
        // one made so.
        if path != Path::new(":memory:") {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let io = |source| CatalogError::Io {
                path: path.to_owned(),
                source,
            };
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
             PRAGMA busy_timeout=5000;",
        )
        .map_err(err)?;
        for schema in SCHEMAS {
            conn.execute_batch(schema).map_err(err)?;
        }
        for (table, column, decl) in ADDED_COLUMNS {
            add_column(&conn, table, column, decl).map_err(err)?;
        }
        Ok(Catalog {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    /// Opens a private in-memory catalog, for unit tests.
    pub fn in_memory() -> Result<Catalog, CatalogError> {
        Catalog::open(Path::new(":memory:"))
    }

    /// Locks the connection for a short, synchronous piece of work. Keep the guard off
    /// `.await` points; long work belongs in `spawn_blocking`.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent (transactions roll
        // back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wraps a SQLite error with the catalog's path.
    pub fn error(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::sqlite(&self.path, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catalog_made_before_added_columns_gets_them_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE abd_credentials (id TEXT PRIMARY KEY, token_sha256 TEXT,
                     cert_sha256 TEXT, created_at INTEGER NOT NULL, enrolled_at INTEGER,
                     revoked_at INTEGER);
                 INSERT INTO abd_credentials (id, cert_sha256, created_at) VALUES ('a', 'f', 1);",
            )
            .unwrap();
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.abd_get("a").unwrap().unwrap().cert_expires_at, None);
        // Opening again finds them there.
        drop(c);
        Catalog::open(&path).unwrap();
    }
}
