//! Trust on port 2811 (DESIGN.md §4): the A3's own CA, its server certificate, ABD
//! enrollment and revocation, and the client-certificate verifier.
//!
//! Who does what:
//! - [`ca`]: the CA in `<state-dir>/pki/` (key 0600); issues server and client certificates;
//! - [`verifier`]: accepts only certificates of this CA that are enrolled and unrevoked,
//!   checked at every handshake;
//! - this module: [`Pki`], which ties them to the catalog: one-time tokens (stored hashed,
//!   checked before anything is signed, expiring after [`Lifetimes::token_secs`]),
//!   enrollment, client certificates that expire after [`Lifetimes::cert_secs`] and are
//!   renewed over the control stream before they do, revocation, and the rustls server
//!   config.
//!
//! An agent trusts the CA by its pin (SHA-256 of the CA certificate), which its config
//! carries; the server sends the CA certificate in its chain so the agent can check it.

pub mod ca;
pub mod verifier;

use crate::util::clock::unix_now;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use a3_shared::proto::ALPN;
use rustls::pki_types::CertificateDer;

use crate::catalog::abds::{IssuedCert, TokenCheck};
use crate::catalog::{Catalog, CatalogError};
pub use ca::{Ca, fingerprint};
pub use verifier::{AbdClientVerifier, AcceptedCerts};

/// Failures of the PKI, naming the file or ABD concerned.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file of the PKI could not be read or written.
    #[error("PKI file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A stored key or certificate does not parse.
    #[error(
        "PKI file {path} is damaged ({what}); restore it from a backup, or remove the pki dir to create a new CA and re-enroll every ABD"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(rcgen::Error),
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// An enrollment presented a key of the wrong shape.
    #[error(
        "enrollment: the public key must be an uncompressed ECDSA P-256 point (65 bytes), got {0} bytes"
    )]
    BadPublicKey(usize),
    /// The token does not match (wrong, used, or never issued), or the ABD is revoked.
    #[error(
        "ABD '{0}': enrollment token refused (wrong, already used, or the ABD is revoked); issue a new one with `a3-server abd enroll --id {0}`"
    )]
    TokenRefused(String),
    /// The token matched but is older than its lifetime; it is gone now.
    #[error(
        "ABD '{id}': enrollment token expired (issued {issued} UTC, valid {minutes} min); the A3 restarts the ABD with a new one when it next needs it, or issue one with `a3-server abd enroll --id {id}`"
    )]
    TokenExpired {
        /// The ABD.
        id: String,
        /// When the token was issued.
        issued: String,
        /// Its lifetime.
        minutes: i64,
    },
}

/// How long enrollment tokens and client certificates last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// An enrollment token, from its issue, in seconds.
    pub token_secs: i64,
    /// A client certificate, in seconds. It is renewed when a third of it is left.
    pub cert_secs: i64,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            token_secs: 3600,
            cert_secs: 30 * 86_400,
        }
    }
}

/// The A3's PKI, shared by the data port and the API.
#[derive(Clone)]
pub struct Pki {
    ca: Arc<Ca>,
    accepted: AcceptedCerts,
    catalog: Catalog,
    lifetimes: Lifetimes,
}

impl Pki {
    /// Opens (creating on first use) the PKI under `<state_dir>/pki`, loading the accepted
    /// certificates from the catalog.
    pub fn open(state_dir: &Path, catalog: Catalog, lifetimes: Lifetimes) -> Result<Pki, PkiError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("pki");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| PkiError::Io {
                path: dir.clone(),
                source,
            })?;
        let ca = Ca::load_or_create(&dir)?;
        let accepted = AcceptedCerts::default();
        accepted.replace(catalog.abd_accepted_certs()?);
        Ok(Pki {
            ca: Arc::new(ca),
            accepted,
            catalog,
            lifetimes,
        })
    }

    /// The CA pin for agent configs.
    pub fn ca_pin(&self) -> String {
        self.ca.pin()
    }

    /// How long tokens and certificates last.
    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// The accepted-certificate set (to name the ABD of a connection).
    pub fn accepted(&self) -> &AcceptedCerts {
        &self.accepted
    }

    /// The rustls config of port 2811: TLS 1.3, ALPN `abd/1`, a fresh server certificate for
    /// `names`, sent with the CA certificate so that pinned agents can check the chain.
    pub fn server_config(&self, names: &[String]) -> Result<rustls::ServerConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            AbdClientVerifier::new(self.ca.cert_der(), self.accepted.clone(), provider.clone())?;
        let (cert, key) = self.ca.issue_server(names)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(vec![cert, self.ca.cert_der().clone()], key)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Starts the enrollment of `id`: returns the one-time token (only its hash is kept).
    /// Any certificate issued to `id` before stops working now.
    pub fn begin_enrollment(&self, id: &str) -> Result<String, PkiError> {
        let token = hex::encode(rand::random::<[u8; 32]>());
        self.catalog
            .abd_begin_enrollment(id, &hash_token(&token), unix_now())?;
        self.accepted.revoke(id);
        Ok(token)
    }

    /// Trades `token` for a client certificate on `public_key`, for ABD `id`. The token is
    /// checked, and consumed, before anything is signed.
    pub fn enroll(
        &self,
        id: &str,
        token: &str,
        public_key: &[u8],
    ) -> Result<CertificateDer<'static>, PkiError> {
        self.enroll_at(id, token, public_key, unix_now())
    }

    fn enroll_at(
        &self,
        id: &str,
        token: &str,
        public_key: &[u8],
        now: i64,
    ) -> Result<CertificateDer<'static>, PkiError> {
        match self
            .catalog
            .abd_take_token(id, &hash_token(token), now, self.lifetimes.token_secs)?
        {
            TokenCheck::Taken => {}
            TokenCheck::Refused => return Err(PkiError::TokenRefused(id.to_owned())),
            TokenCheck::Expired(issued) => {
                return Err(PkiError::TokenExpired {
                    id: id.to_owned(),
                    issued: crate::util::clock::utc_minute(issued),
                    minutes: self.lifetimes.token_secs / 60,
                });
            }
        }
        let (cert, issued) = self.issue(id, public_key, now)?;
        self.catalog.abd_record_cert(id, &issued, now)?;
        self.accepted.accept(issued.sha256, id);
        Ok(cert)
    }

    /// A renewed certificate for `id` when a third or less of its current one's lifetime
    /// is left, on the key it enrolled; the current one stays accepted until the agent
    /// presents the new one. `None` when no renewal is due.
    pub fn renew_if_due(&self, id: &str) -> Result<Option<CertificateDer<'static>>, PkiError> {
        self.renew_at(id, unix_now())
    }

    fn renew_at(&self, id: &str, now: i64) -> Result<Option<CertificateDer<'static>>, PkiError> {
        let Some((public_key, expires_at)) = self.catalog.abd_cert_state(id)? else {
            return Ok(None);
        };
        if expires_at - now > self.lifetimes.cert_secs / 3 {
            return Ok(None);
        }
        let (cert, issued) = self.issue(id, &public_key, now)?;
        if !self.catalog.abd_renew_cert(id, &issued)? {
            return Ok(None);
        }
        self.accepted.add(issued.sha256, id);
        Ok(Some(cert))
    }

    /// Notes that `id` connected with the certificate of fingerprint `cert_sha256`: once
    /// that is its current one, the certificate a renewal replaced stops being accepted.
    pub fn presented(&self, id: &str, cert_sha256: &str) -> Result<(), PkiError> {
        let fp = cert_sha256.to_owned();
        let current = self.catalog.abd_get(id)?.and_then(|a| a.cert_sha256);
        if current.as_deref() == Some(fp.as_str()) {
            self.catalog.abd_forget_prev_cert(id)?;
            self.accepted.accept(fp, id);
        }
        Ok(())
    }

    fn issue(
        &self,
        id: &str,
        public_key: &[u8],
        now: i64,
    ) -> Result<(CertificateDer<'static>, IssuedCert), PkiError> {
        let expires_at = now + self.lifetimes.cert_secs;
        let cert = self.ca.issue_client(id, public_key, now, expires_at)?;
        let issued = IssuedCert {
            sha256: fingerprint(&cert),
            expires_at,
            public_key: public_key.to_vec(),
        };
        Ok((cert, issued))
    }

    /// Revokes `id`. False when no such ABD is enrolled or enrolling.
    pub fn revoke(&self, id: &str) -> Result<bool, PkiError> {
        self.accepted.revoke(id);
        Ok(self.catalog.abd_revoke(id, unix_now())?)
    }
}

fn hash_token(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, catalog: Catalog) -> Pki {
        crate::util::install_crypto_provider();
        Pki::open(dir, catalog, Lifetimes::default()).unwrap()
    }

    #[test]
    fn ca_persists_and_enrollment_is_one_time() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::in_memory().unwrap();
        let pki = open(dir.path(), catalog.clone());
        let pin = pki.ca_pin();
        let key_mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("pki/ca.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(key_mode & 0o777, 0o600);
        // Reopening keeps the same CA.
        let pki = open(dir.path(), catalog);
        assert_eq!(pki.ca_pin(), pin);
        pki.server_config(&["127.0.1.9".into(), "a3".into()])
            .unwrap();

        let agent_key = rcgen::KeyPair::generate().unwrap();
        let token = pki.begin_enrollment("abd-7").unwrap();
        assert!(matches!(
            pki.enroll("abd-7", "nope", agent_key.public_key_raw()),
            Err(PkiError::TokenRefused(_))
        ));
        let cert = pki
            .enroll("abd-7", &token, agent_key.public_key_raw())
            .unwrap();
        assert_eq!(pki.accepted().id_of(&cert).as_deref(), Some("abd-7"));
        assert!(matches!(
            pki.enroll("abd-7", &token, agent_key.public_key_raw()),
            Err(PkiError::TokenRefused(_))
        ));
        assert!(pki.revoke("abd-7").unwrap());
        assert_eq!(pki.accepted().id_of(&cert), None);
    }

    #[test]
    fn the_token_is_checked_before_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let pki = open(dir.path(), Catalog::in_memory().unwrap());
        // A bad token with a malformed key is refused for the token: nothing was parsed or
        // signed for it.
        pki.begin_enrollment("abd-1").unwrap();
        assert!(matches!(
            pki.enroll("abd-1", "nope", &[4; 10]),
            Err(PkiError::TokenRefused(_))
        ));
        let token = pki.begin_enrollment("abd-1").unwrap();
        assert!(matches!(
            pki.enroll("abd-1", &token, &[4; 10]),
            Err(PkiError::BadPublicKey(10))
        ));
    }

    #[test]
    fn an_expired_token_is_refused_and_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let pki = open(dir.path(), Catalog::in_memory().unwrap());
        let key = rcgen::KeyPair::generate().unwrap();
        let token = pki.begin_enrollment("abd-1").unwrap();
        let later = unix_now() + Lifetimes::default().token_secs + 1;
        let e = pki
            .enroll_at("abd-1", &token, key.public_key_raw(), later)
            .unwrap_err();
        assert!(matches!(e, PkiError::TokenExpired { .. }), "{e}");
        assert!(e.to_string().contains("expired"), "{e}");
        assert!(matches!(
            pki.enroll("abd-1", &token, key.public_key_raw()),
            Err(PkiError::TokenRefused(_))
        ));
    }

    #[test]
    fn certificates_expire_and_renew_on_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let pki = open(dir.path(), Catalog::in_memory().unwrap());
        let key = rcgen::KeyPair::generate().unwrap();
        let token = pki.begin_enrollment("abd-1").unwrap();
        let now = unix_now();
        let first = pki
            .enroll_at("abd-1", &token, key.public_key_raw(), now)
            .unwrap();
        let life = Lifetimes::default().cert_secs;
        assert_eq!(pki.renew_at("abd-1", now + life / 2).unwrap(), None);
        let renewed = pki
            .renew_at("abd-1", now + life - life / 3)
            .unwrap()
            .expect("a third left: renewed");
        assert_ne!(first, renewed);
        // Both work until the agent presents the new one.
        assert!(pki.accepted().id_of(&first).is_some());
        assert!(pki.accepted().id_of(&renewed).is_some());
        pki.presented("abd-1", &fingerprint(&first)).unwrap();
        assert!(pki.accepted().id_of(&first).is_some());
        pki.presented("abd-1", &fingerprint(&renewed)).unwrap();
        assert_eq!(pki.accepted().id_of(&first), None);
        assert_eq!(pki.accepted().id_of(&renewed).as_deref(), Some("abd-1"));
        // A reopened PKI accepts only the current one.
        let reopened = Pki::open(dir.path(), pki.catalog.clone(), Lifetimes::default()).unwrap();
        assert_eq!(reopened.accepted().id_of(&first), None);
        assert!(reopened.accepted().id_of(&renewed).is_some());
    }

    #[test]
    fn an_expired_certificate_is_refused_at_the_handshake() {
        use rustls::server::danger::ClientCertVerifier;
        let dir = tempfile::tempdir().unwrap();
        let pki = open(dir.path(), Catalog::in_memory().unwrap());
        let key = rcgen::KeyPair::generate().unwrap();
        let verifier = AbdClientVerifier::new(
            pki.ca.cert_der(),
            pki.accepted.clone(),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let token = pki.begin_enrollment("abd-1").unwrap();
        let fresh = pki.enroll("abd-1", &token, key.public_key_raw()).unwrap();
        assert!(verifier.verify_client_cert(&fresh, &[], now).is_ok());
        // Enrolled a lifetime and a day ago: still the accepted one, but expired.
        let token = pki.begin_enrollment("abd-1").unwrap();
        let long_ago = unix_now() - Lifetimes::default().cert_secs - 86_400;
        let old = pki
            .enroll_at("abd-1", &token, key.public_key_raw(), long_ago)
            .unwrap();
        assert!(pki.accepted().id_of(&old).is_some());
        let e = verifier.verify_client_cert(&old, &[], now).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired
                        | rustls::CertificateError::ExpiredContext { .. }
                )
            ),
            "{e:?}"
        );
    }
}
