//! Trust on port 2811 (DESIGN.md §4): the A3's own CA, its server certificate, ABD
//! enrollment and revocation, and the client-certificate verifier.
//!
//! Who does what:
//! - [`ca`]: the CA in `<state-dir>/pki/` (key 0600); issues server and client certificates;
//! - [`verifier`]: accepts only certificates of this CA that are enrolled and unrevoked,
//!   checked at every handshake;
//! - this module: [`Pki`], which ties them to the catalog: one-time tokens (stored hashed),
//!   enrollment, revocation, and the rustls server config.
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
}

/// The A3's PKI, shared by the data port and the API.
#[derive(Clone)]
pub struct Pki {
    ca: Arc<Ca>,
    accepted: AcceptedCerts,
    catalog: Catalog,
}

impl Pki {
    /// Opens (creating on first use) the PKI under `<state_dir>/pki`, loading the accepted
    /// certificates from the catalog.
    pub fn open(state_dir: &Path, catalog: Catalog) -> Result<Pki, PkiError> {
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
        })
    }

    /// The CA pin for agent configs.
    pub fn ca_pin(&self) -> String {
        self.ca.pin()
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

    /// Trades `token` for a client certificate on `public_key`, for ABD `id`.
    pub fn enroll(
        &self,
        id: &str,
        token: &str,
        public_key: &[u8],
    ) -> Result<CertificateDer<'static>, PkiError> {
        let cert = self.ca.issue_client(id, public_key)?;
        let fp = fingerprint(&cert);
        if !self
            .catalog
            .abd_complete_enrollment(id, &hash_token(token), &fp, unix_now())?
        {
            return Err(PkiError::TokenRefused(id.to_owned()));
        }
        self.accepted.accept(fp, id);
        Ok(cert)
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

    #[test]
    fn ca_persists_and_enrollment_is_one_time() {
        crate::util::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::in_memory().unwrap();
        let pki = Pki::open(dir.path(), catalog.clone()).unwrap();
        let pin = pki.ca_pin();
        let key_mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("pki/ca.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(key_mode & 0o777, 0o600);
        // Reopening keeps the same CA.
        let pki = Pki::open(dir.path(), catalog).unwrap();
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
        assert!(
            pki.enroll("abd-7", &token, agent_key.public_key_raw())
                .is_err()
        );
        assert!(pki.revoke("abd-7").unwrap());
        assert_eq!(pki.accepted().id_of(&cert), None);
        assert!(matches!(
            pki.enroll("abd-7", &token, &[4; 10]),
            Err(PkiError::BadPublicKey(10))
        ));
    }
}
