//! ABD credentials: who may connect on port 2811.
//!
//! One row per ABD id. Enrollment stores only the SHA-256 of the one-time token and when it
//! was issued; trading the token (unexpired) for a certificate clears it and records the
//! certificate's SHA-256 fingerprint, which is what port 2811 checks at every connection,
//! and the agent's public key, so that the certificate can be renewed before it expires.
//! While a renewed certificate has not yet been presented, the one it replaces stays
//! accepted (`prev_cert_sha256`): the agent may not have stored the new one. Revocation is
//! a timestamp: the row stays, for the record, and a later `enroll` of the same id starts
//! over.

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
    revoked_at INTEGER,
    token_issued_at INTEGER,
    public_key BLOB,
    cert_expires_at INTEGER,
    prev_cert_sha256 TEXT
);
";

/// Columns added since the table's first version, for catalogs created before them.
pub const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("abd_credentials", "token_issued_at", "INTEGER"),
    ("abd_credentials", "public_key", "BLOB"),
    ("abd_credentials", "cert_expires_at", "INTEGER"),
    ("abd_credentials", "prev_cert_sha256", "TEXT"),
];

/// What became of a presented enrollment token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// It matched and was consumed: sign the certificate now.
    Taken,
    /// It matched but was issued at this time (Unix seconds), too long ago; it is gone now.
    Expired(i64),
    /// Wrong, already used, never issued, or the ABD is revoked.
    Refused,
}

/// A certificate issued to an ABD, as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// Hex SHA-256 of the certificate (DER).
    pub sha256: String,
    /// Unix seconds of its `notAfter`.
    pub expires_at: i64,
    /// The agent's public key it certifies (uncompressed P-256 point).
    pub public_key: Vec<u8>,
}

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
    /// Unix seconds when the current certificate expires.
    pub cert_expires_at: Option<i64>,
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
                "INSERT INTO abd_credentials (id, token_sha256, created_at, token_issued_at)
                 VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT(id) DO UPDATE SET token_sha256 = ?2, token_issued_at = ?3,
                     cert_sha256 = NULL, prev_cert_sha256 = NULL, public_key = NULL,
                     cert_expires_at = NULL, enrolled_at = NULL, revoked_at = NULL",
                params![id, token_sha256, now],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Consumes the token of `id` if its hash matches and the ABD is not revoked, before
    /// anything is signed. A token issued more than `ttl_secs` before `now` is consumed too,
    /// but reported expired.
    pub fn abd_take_token(
        &self,
        id: &str,
        token_sha256: &str,
        now: i64,
        ttl_secs: i64,
    ) -> Result<TokenCheck, CatalogError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.error(e))?;
        let issued: Option<Option<i64>> = tx
            .query_row(
                "SELECT token_issued_at FROM abd_credentials
                 WHERE id = ?1 AND token_sha256 = ?2 AND revoked_at IS NULL",
                params![id, token_sha256],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.error(e))?;
        let Some(issued) = issued else {
            return Ok(TokenCheck::Refused);
        };
        tx.execute(
            "UPDATE abd_credentials SET token_sha256 = NULL WHERE id = ?1",
            [id],
        )
        .map_err(|e| self.error(e))?;
        tx.commit().map_err(|e| self.error(e))?;
        // A token from before issue times were kept counts as issued long ago.
        let issued = issued.unwrap_or(0);
        Ok(if now.saturating_sub(issued) > ttl_secs {
            TokenCheck::Expired(issued)
        } else {
            TokenCheck::Taken
        })
    }

    /// Records the certificate issued to `id` at enrollment: its fingerprint, expiry and
    /// the agent's public key. Any earlier certificate stops being accepted.
    pub fn abd_record_cert(
        &self,
        id: &str,
        cert: &IssuedCert,
        now: i64,
    ) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE abd_credentials SET cert_sha256 = ?2, cert_expires_at = ?3,
                     public_key = ?4, prev_cert_sha256 = NULL, enrolled_at = ?5
                 WHERE id = ?1",
                params![id, cert.sha256, cert.expires_at, cert.public_key, now],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Records a renewed certificate of `id`. The current one stays accepted as the
    /// previous until the agent presents the new one. False when `id` is not enrolled.
    pub fn abd_renew_cert(&self, id: &str, cert: &IssuedCert) -> Result<bool, CatalogError> {
        let n = self
            .lock()
            .execute(
                "UPDATE abd_credentials SET prev_cert_sha256 = cert_sha256, cert_sha256 = ?2,
                     cert_expires_at = ?3
                 WHERE id = ?1 AND cert_sha256 IS NOT NULL AND revoked_at IS NULL",
                params![id, cert.sha256, cert.expires_at],
            )
            .map_err(|e| self.error(e))?;
        Ok(n == 1)
    }

    /// Forgets the previous certificate of `id`: the agent presented its current one.
    pub fn abd_forget_prev_cert(&self, id: &str) -> Result<(), CatalogError> {
        self.lock()
            .execute(
                "UPDATE abd_credentials SET prev_cert_sha256 = NULL WHERE id = ?1",
                [id],
            )
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// The enrolled public key of `id` and its certificate's expiry, for renewal.
    pub fn abd_cert_state(&self, id: &str) -> Result<Option<(Vec<u8>, i64)>, CatalogError> {
        self.lock()
            .query_row(
                "SELECT public_key, cert_expires_at FROM abd_credentials
                 WHERE id = ?1 AND cert_sha256 IS NOT NULL AND revoked_at IS NULL
                     AND public_key IS NOT NULL AND cert_expires_at IS NOT NULL",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.error(e))
    }

    /// Revokes `id`: its certificate and any pending token stop working. False when the id
    /// is unknown.
    pub fn abd_revoke(&self, id: &str, now: i64) -> Result<bool, CatalogError> {
        let n = self
            .lock()
            .execute(
                "UPDATE abd_credentials SET revoked_at = ?2, token_sha256 = NULL,
                     prev_cert_sha256 = NULL
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
                        revoked_at, cert_expires_at
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
                    cert_expires_at: r.get(6)?,
                })
            })
            .map_err(|e| self.error(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.error(e))
    }

    /// One ABD.
    pub fn abd_get(&self, id: &str) -> Result<Option<AbdCredential>, CatalogError> {
        Ok(self.abd_list()?.into_iter().find(|a| a.id == id))
    }

    /// The fingerprints of every enrolled, unrevoked ABD's certificates (the current one,
    /// and a renewed one's predecessor), each with its id.
    pub fn abd_accepted_certs(&self) -> Result<Vec<(String, String)>, CatalogError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT cert_sha256, id FROM abd_credentials
                 WHERE cert_sha256 IS NOT NULL AND revoked_at IS NULL
                 UNION ALL
                 SELECT prev_cert_sha256, id FROM abd_credentials
                 WHERE prev_cert_sha256 IS NOT NULL AND revoked_at IS NULL",
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

    fn cert(sha256: &str, expires_at: i64) -> IssuedCert {
        IssuedCert {
            sha256: sha256.into(),
            expires_at,
            public_key: vec![4; 65],
        }
    }

    #[test]
    fn token_is_one_time_and_revocation_sticks() {
        let c = Catalog::in_memory().unwrap();
        c.abd_begin_enrollment("abd-1", "t1", 10).unwrap();
        assert_eq!(
            c.abd_take_token("abd-1", "wrong", 11, 3600).unwrap(),
            TokenCheck::Refused
        );
        assert_eq!(
            c.abd_take_token("abd-1", "t1", 11, 3600).unwrap(),
            TokenCheck::Taken
        );
        c.abd_record_cert("abd-1", &cert("f1", 100), 11).unwrap();
        assert_eq!(
            c.abd_take_token("abd-1", "t1", 12, 3600).unwrap(),
            TokenCheck::Refused,
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

    #[test]
    fn an_old_token_is_consumed_and_reported_expired() {
        let c = Catalog::in_memory().unwrap();
        c.abd_begin_enrollment("abd-1", "t1", 1000).unwrap();
        assert_eq!(
            c.abd_take_token("abd-1", "t1", 1000 + 3601, 3600).unwrap(),
            TokenCheck::Expired(1000)
        );
        assert_eq!(
            c.abd_take_token("abd-1", "t1", 1000 + 3601, 3600).unwrap(),
            TokenCheck::Refused,
            "an expired token is gone"
        );
    }

    #[test]
    fn a_renewed_certificate_keeps_its_predecessor_until_presented() {
        let c = Catalog::in_memory().unwrap();
        c.abd_begin_enrollment("abd-1", "t1", 10).unwrap();
        c.abd_take_token("abd-1", "t1", 11, 60).unwrap();
        c.abd_record_cert("abd-1", &cert("f1", 100), 11).unwrap();
        assert_eq!(c.abd_cert_state("abd-1").unwrap(), Some((vec![4; 65], 100)));
        assert!(c.abd_renew_cert("abd-1", &cert("f2", 200)).unwrap());
        let mut accepted = c.abd_accepted_certs().unwrap();
        accepted.sort();
        assert_eq!(
            accepted,
            vec![("f1".into(), "abd-1".into()), ("f2".into(), "abd-1".into())]
        );
        c.abd_forget_prev_cert("abd-1").unwrap();
        assert_eq!(
            c.abd_accepted_certs().unwrap(),
            vec![("f2".into(), "abd-1".into())]
        );
        assert_eq!(
            c.abd_get("abd-1").unwrap().unwrap().cert_expires_at,
            Some(200)
        );
        assert!(!c.abd_renew_cert("nobody", &cert("f3", 300)).unwrap());
    }
}
