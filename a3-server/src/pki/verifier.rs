//! The client-certificate check of port 2811: a certificate must chain to the A3's CA *and*
//! be the one currently enrolled for an unrevoked ABD. The second half is looked up at every
//! handshake in [`AcceptedCerts`], which enrollment and revocation update at once, so a
//! revoked ABD cannot open another connection.
//!
//! A client without a certificate is let through the handshake: the only thing such a
//! connection may do is enroll with a one-time token (see `dataport`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, RootCertStore};

use super::ca::fingerprint;

/// Fingerprints of accepted client certificates, each with its ABD id.
#[derive(Debug, Clone, Default)]
pub struct AcceptedCerts(Arc<RwLock<HashMap<String, String>>>);

impl AcceptedCerts {
    /// Replaces the whole set (at start, from the catalog).
    pub fn replace(&self, entries: impl IntoIterator<Item = (String, String)>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = entries.into_iter().collect();
    }

    /// Accepts `fingerprint` for `id`, dropping any other certificate of `id`.
    pub fn accept(&self, fingerprint: String, id: &str) {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, v| v != id);
        map.insert(fingerprint, id.to_owned());
    }

    /// Accepts `fingerprint` for `id` as well as those it has (a renewal's overlap).
    pub fn add(&self, fingerprint: String, id: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fingerprint, id.to_owned());
    }

    /// Stops accepting every certificate of `id`.
    pub fn revoke(&self, id: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, v| v != id);
    }

    /// The ABD id of an accepted certificate.
    pub fn id_of(&self, cert_der: &[u8]) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fingerprint(cert_der))
            .cloned()
    }
}

/// The verifier: chain to our CA (webpki), then the accepted set.
#[derive(Debug)]
pub struct AbdClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    accepted: AcceptedCerts,
}

impl AbdClientVerifier {
    /// A verifier trusting `ca_der` only.
    pub fn new(
        ca_der: &CertificateDer<'static>,
        accepted: AcceptedCerts,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<AbdClientVerifier, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(ca_der.clone())?;
        let chain =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(AbdClientVerifier { chain, accepted })
    }
}

impl ClientCertVerifier for AbdClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)
        {
            // An expired certificate of an enrolled ABD is the one refusal an operator
            // must be able to tell from an attack.
            if let Some(id) = self.accepted.id_of(end_entity) {
                tracing::warn!(
                    abd = %id,
                    "ABD '{id}' presented a certificate that does not verify ({e}); \
                     if it expired, the A3 restarts the ABD with a new enrollment token \
                     when it next needs it, or run `a3-server abd enroll --id {id}`"
                );
            }
            return Err(e);
        }
        if self.accepted.id_of(end_entity).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    a3_shared::ring_handshake_signatures!();
}
