//! The agent's TLS: trust only the CA whose SHA-256 is the configured pin. The A3 sends its
//! CA certificate in the chain; the agent finds the pinned one there and verifies the server
//! certificate against it (webpki: signature, validity, name).

use std::sync::Arc;

use a3_shared::proto::ALPN;
use rustls::RootCertStore;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::identity::Identity;

/// Verifies the server against the pinned CA.
#[derive(Debug)]
struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let ca = intermediates
            .iter()
            .find(|c| sha2::Sha256::digest(c.as_ref()).as_slice() == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the A3's certificate chain does not contain the pinned CA: this is not \
                     our A3, or it was reinstalled (enroll again with its new pin)"
                        .into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    a3_shared::ring_handshake_signatures!();
}

/// A client config trusting the pinned CA, presenting the identity's certificate when it
/// has one (otherwise the connection can only enroll).
pub fn client_config(pin_hex: &str, identity: &Identity) -> anyhow::Result<rustls::ClientConfig> {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(pin_hex, &mut pin)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { pin, provider }));
    let mut config = match &identity.cert {
        Some(cert) => builder.with_client_auth_cert(vec![cert.clone()], identity.key_der())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}
