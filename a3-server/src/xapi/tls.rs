//! Trust on first use for XAPI hosts.
//!
//! XCP-ng hosts serve a self-signed certificate by default, so no CA can vouch for them.
//! Instead the A3 pins the SHA-256 fingerprint of each host's leaf certificate the first time
//! it connects (when the host is added) and afterwards accepts exactly that certificate.
//! The handshake signatures are still verified against the presented certificate, so a
//! peer must hold the pinned certificate's private key, not merely replay the certificate.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig};
use sha2::{Digest, Sha256};

/// The SHA-256 fingerprint of a certificate (its DER bytes), shown as colon-separated
/// upper-case hex, like `openssl x509 -noout -fingerprint -sha256`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a SHA-256 fingerprint.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a SHA-256 fingerprint (32 hex bytes, colons optional)")]
pub struct BadFingerprint(String);

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Fingerprint, BadFingerprint> {
        let hex_digits: String = s.chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        hex::decode_to_slice(&hex_digits, &mut out).map_err(|_| BadFingerprint(s.to_owned()))?;
        Ok(Fingerprint(out))
    }
}

/// Where the verifier records the fingerprint a host presented, so the caller can pin it
/// (first contact) or name it in the error (a changed certificate).
#[derive(Clone, Debug, Default)]
pub struct PresentedCert(Arc<Mutex<Option<Fingerprint>>>);

impl PresentedCert {
    /// The fingerprint of the last certificate the host presented, if any handshake got
    /// that far.
    pub fn get(&self) -> Option<Fingerprint> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, fp: Fingerprint) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp);
    }
}

/// Accepts exactly the pinned leaf certificate, or (with no pin) any certificate, recording
/// what was presented either way.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Option<Fingerprint>,
    presented: PresentedCert,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::of(end_entity);
        self.presented.set(fp);
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) if pin == fp => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    a3_shared::ring_handshake_signatures!();
}

/// A rustls client config that trusts only `pin` (or, with `None`, whatever the host
/// presents: first contact), and the slot where the presented fingerprint lands.
pub fn pinned_client_config(pin: Option<Fingerprint>) -> (ClientConfig, PresentedCert) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let presented = PresentedCert::default();
    let verifier = PinnedVerifier {
        pin,
        presented: presented.clone(),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    (config, presented)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ClientConnection, ServerConfig, ServerConnection};

    fn server_config(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> (ServerConfig, Fingerprint) {
        let der = cert.cert.der().clone();
        let fp = Fingerprint::of(&der);
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![der], key)
                .unwrap();
        (config, fp)
    }

    /// Runs a handshake in memory; `Err` is the client's error.
    fn handshake(client: ClientConfig, server: ServerConfig) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("127.0.0.11").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                // A server error shows up as the client's alert below.
                let _ = s.process_new_packets();
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["127.0.0.11".into()]).unwrap()
    }

    #[test]
    fn first_contact_accepts_and_records_the_fingerprint() {
        let (server, fp) = server_config(&self_signed());
        let (client, presented) = pinned_client_config(None);
        handshake(client, server).unwrap();
        assert_eq!(presented.get(), Some(fp));
    }

    #[test]
    fn the_pinned_certificate_is_accepted() {
        let (server, fp) = server_config(&self_signed());
        let (client, _) = pinned_client_config(Some(fp));
        handshake(client, server).unwrap();
    }

    #[test]
    fn a_changed_certificate_is_refused() {
        let (_, old_fp) = server_config(&self_signed());
        let (server, new_fp) = server_config(&self_signed());
        let (client, presented) = pinned_client_config(Some(old_fp));
        let err = handshake(client, server).unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
        assert_eq!(presented.get(), Some(new_fp));
    }

    #[test]
    fn fingerprints_read_back() {
        let fp = Fingerprint::of(b"x");
        let text = fp.to_string();
        assert_eq!(text.len(), 32 * 3 - 1);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(text.replace(':', "").parse::<Fingerprint>().unwrap(), fp);
        assert!("zz".parse::<Fingerprint>().is_err());
    }
}
