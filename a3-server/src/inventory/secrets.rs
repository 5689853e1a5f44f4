//! Pool passwords, one file per pool, readable by the A3's user only.
//!
//! They live outside the catalog so that a copy of the catalog (for support, or a backup
//! of the A3 itself) carries no credentials.

use std::path::{Path, PathBuf};

use super::InventoryError;

/// The directory of pool passwords under the state dir.
#[derive(Clone, Debug)]
pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    /// Secrets under `<state_dir>/xapi-credentials/`.
    pub fn new(state_dir: &Path) -> Secrets {
        Secrets {
            dir: state_dir.join("xapi-credentials"),
        }
    }

    /// The file of a pool's password. The uuid comes from the host, so it is checked to be
    /// a uuid before it becomes a file name.
    fn path(&self, pool_uuid: &str) -> Result<PathBuf, InventoryError> {
        let is_uuid = !pool_uuid.is_empty()
            && pool_uuid.len() <= 64
            && pool_uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !is_uuid {
            return Err(InventoryError::Internal(format!(
                "the host reported pool uuid {pool_uuid:?}, which is not a uuid"
            )));
        }
        Ok(self.dir.join(format!("{pool_uuid}.password")))
    }

    /// Stores a pool's password (mode 0600, in a 0700 directory).
    pub fn store(&self, pool_uuid: &str, password: &str) -> Result<(), InventoryError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = self.path(pool_uuid)?;
        let err = |e: &dyn std::fmt::Display| InventoryError::Secrets {
            path: path.clone(),
            detail: e.to_string(),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| err(&e))?;
        a3_shared::durable::write_private(&path, password.as_bytes())
            .map_err(|e| err(&format_args!("cannot {}: {}", e.step, e.source)))
    }

    /// Reads a pool's password.
    pub fn load(&self, pool_uuid: &str) -> Result<String, InventoryError> {
        let path = self.path(pool_uuid)?;
        std::fs::read_to_string(&path).map_err(|e| InventoryError::Secrets {
            detail: format!("{e}; add the pool again with `a3-server host add`"),
            path,
        })
    }

    /// Deletes a pool's password; a missing file is fine.
    pub fn remove(&self, pool_uuid: &str) -> Result<(), InventoryError> {
        let path = self.path(pool_uuid)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(InventoryError::Secrets {
                path,
                detail: e.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn passwords_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::new(dir.path());
        let uuid = "0e6b3f36-1111-2222-3333-444455556666";
        s.store(uuid, "pw").unwrap();
        assert_eq!(s.load(uuid).unwrap(), "pw");
        let mode = std::fs::metadata(s.path(uuid).unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(&s.dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        s.remove(uuid).unwrap();
        s.remove(uuid).unwrap();
        assert!(s.load(uuid).is_err());
        // A hostile host's "uuid" never becomes a path.
        assert!(s.store("../../etc/passwd", "x").is_err());
        assert!(s.store("", "x").is_err());
    }
}
