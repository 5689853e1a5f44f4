//! ABD credentials: who may connect on port 2811.
//!
//! One row per ABD id. Enrollment stores only the SHA-256 of the one-time token; trading the
//! token for a certificate clears it and records the certificate's SHA-256 fingerprint,
//! which is what the QUIC endpoint checks at every connection. Revocation is a timestamp:
//! the row stays, for the record, and a later `enroll` of the same id starts over.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};

/// The table.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS abd_credentials (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT,
    cert_sha256 TEXT,
    created_at INTEGER NOT NULL,
    enrolled_at INTEGER,
    revoked_at INTEGER
);
";

/// One ABD's credential state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbdCredential {
    /// The ABD id.
    pub id: String,
    /// Whether a one-time token is waiting to be used.
    pub token_pending: bool,
    /// Hex SHA-256 of the certificate issued, once enrolled.
    pub cert_sha256: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the enrollment.
    pub enrolled_at: Option<i64>,
    /// Unix seconds of the revocation.
    pub revoked_at: Option<i64>,
}

impl Catalog {
    /// Starts (or restarts) the enrollment of `id` with a token whose hash is
    /// `token_sha256`. Any certificate issued before is no longer accepted.
    pub fn abd_begin_enrollment(
        &self,
        id: &str,
        token_sha256: &str,
        now: i64,
    ) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "INSERT INTO abd_credentials (id, token_sha256, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET token_sha256 = ?2, cert_sha256 = NULL,
                     enrolled_at = NULL, revoked_at = NULL",
                params![id, token_sha256, now],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Consumes the token of `id` if its hash matches, recording the issued certificate's
    /// fingerprint. Returns false (and changes nothing) when it does not match, was used,
    /// or the ABD is revoked.
    pub fn abd_complete_enrollment(
        &self,
        id: &str,
        token_sha256: &str,
        cert_sha256: &str,
        now: i64,
    ) -> Result<bool, CatalogError> {
        let n = self
            .lock()
            .execute(
                "UPDATE abd_credentials SET token_sha256 = NULL, cert_sha256 = ?3,
                     enrolled_at = ?4
                 WHERE id = ?1 AND token_sha256 = ?2 AND revoked_at IS NULL",
                params![id, token_sha256, cert_sha256, now],
            )
            .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    /// Revokes `id`: its certificate and any pending token stop working. False when the id
    /// is unknown.
    pub fn abd_revoke(&self, id: &str, now: i64) -> Result<bool, CatalogError> {
        let n = self
            .lock()
            .execute(
                "UPDATE abd_credentials SET revoked_at = ?2, token_sha256 = NULL
                 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now],
            )
            .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    /// Every ABD, by id.
    pub fn abd_list(&self) -> Result<Vec<AbdCredential>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, token_sha256 IS NOT NULL, cert_sha256, created_at, enrolled_at,
                        revoked_at
                 FROM abd_credentials ORDER BY id",
            )
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AbdCredential {
                    id: r.get(0)?,
                    token_pending: r.get(1)?,
                    cert_sha256: r.get(2)?,
                    created_at: r.get(3)?,
                    enrolled_at: r.get(4)?,
                    revoked_at: r.get(5)?,
                })
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.error(e))
    }

    /// One ABD.
    pub fn abd_get(&self, id: &str) -> Result<Option<AbdCredential>, CatalogError> {
        Ok(self.abd_list()?.into_iter().find(|a| a.id == id))
    }

    /// The fingerprints of every enrolled, unrevoked ABD's certificate, with its id.
    pub fn abd_accepted_certs(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT cert_sha256, id FROM abd_credentials
                 WHERE cert_sha256 IS NOT NULL AND revoked_at IS NULL",
            )
            .map_err(|e| self.error(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.error(e))
    }

    /// Whether `id` exists at all (enrolling or enrolled, revoked or not).
    pub fn abd_exists(&self, id: &str) -> Result<bool, CatalogError> {
        self.lock()
            .query_row("SELECT 1 FROM abd_credentials WHERE id = ?1", [id], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_one_time_and_revocation_sticks() {
        let c = Catalog::in_memory().unwrap();
        c.abd_begin_enrollment("abd-1", "t1", 10).unwrap();
        assert!(
            !c.abd_complete_enrollment("abd-1", "wrong", "f1", 11)
                .unwrap()
        );
        assert!(c.abd_complete_enrollment("abd-1", "t1", "f1", 11).unwrap());
        assert!(
            !c.abd_complete_enrollment("abd-1", "t1", "f2", 12).unwrap(),
            "one-time"
        );
        assert_eq!(
            c.abd_accepted_certs().unwrap(),
            vec![("f1".into(), "abd-1".into())]
        );
        assert!(c.abd_revoke("abd-1", 13).unwrap());
        assert!(c.abd_accepted_certs().unwrap().is_empty());
        let a = c.abd_get("abd-1").unwrap().unwrap();
        assert_eq!(a.revoked_at, Some(13));
        // Re-enrolling starts over: a new token, the old certificate stays refused.
        c.abd_begin_enrollment("abd-1", "t2", 14).unwrap();
        assert!(c.abd_accepted_certs().unwrap().is_empty());
        assert!(c.abd_exists("abd-1").unwrap() && !c.abd_exists("x").unwrap());
    }
}
