//! The A3's own certificate authority: created once in `<state-dir>/pki/`, it signs the
//! port-2811 server certificate at every start and one client certificate per enrolled ABD.

use std::path::{Path, PathBuf};

use a3_shared::durable::{WriteError, write_private};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::PkiError;

/// The CA's subject. Stable: the issuer is rebuilt from it and the stored key at each start.
const CA_COMMON_NAME: &str = "A3 port-2811 CA";

/// How far an ABD's clock may run behind the A3's when it checks its certificate.
const CLOCK_SKEW_SECS: i64 = 300;

/// The CA: its certificate and the issuer (key + subject) that signs with it.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("pin", &self.pin()).finish()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Ca {
    /// Loads the CA from `dir`, creating it (key mode 0600) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Ca, PkiError> {
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| PkiError::Io { path, source }
        };
        if key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Corrupt {
                path: key_path.clone(),
                what: e.to_string(),
            })?;
            let cert_der = pem_to_der(&cert_pem).ok_or_else(|| PkiError::Corrupt {
                path: cert_path.clone(),
                what: "no CERTIFICATE block".into(),
            })?;
            return Ok(Ca {
                cert_der,
                issuer: Issuer::new(ca_params(), key),
            });
        }
        let key = KeyPair::generate().map_err(PkiError::Rcgen)?;
        let cert = ca_params().self_signed(&key).map_err(PkiError::Rcgen)?;
        // The key first: a crash between the two writes leaves a key without a certificate,
        // which the next start reports instead of silently replacing the CA.
        let written = |e: WriteError| PkiError::Io {
            path: e.path,
            source: e.source,
        };
        write_private(&key_path, key.serialize_pem().as_bytes()).map_err(written)?;
        write_private(&cert_path, cert.pem().as_bytes()).map_err(written)?;
        Ok(Ca {
            cert_der: cert.der().clone(),
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The pin agents trust: hex SHA-256 of the CA certificate's DER.
    pub fn pin(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// A fresh server certificate for port 2811 with these subject alternative names
    /// (DNS names or IP addresses), and its key.
    pub fn issue_server(
        &self,
        names: &[String],
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate().map_err(PkiError::Rcgen)?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(PkiError::Rcgen)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "A3 port 2811");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Rcgen)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key_der))
    }

    /// A client certificate for ABD `id` on its ECDSA P-256 public key (an uncompressed
    /// SEC1 point, as `rcgen::KeyPair::public_key_raw` gives), valid from a little before
    /// `now` (clock skew) until `expires_at` (Unix seconds).
    pub fn issue_client(
        &self,
        id: &str,
        public_key: &[u8],
        now: i64,
        expires_at: i64,
    ) -> Result<CertificateDer<'static>, PkiError> {
        let key = P256PublicKey::parse(public_key)?;
        let at = |secs: i64| {
            time::OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|_| PkiError::Rcgen(rcgen::Error::Time))
        };
        let mut params = CertificateParams::default();
        params.not_before = at(now - CLOCK_SKEW_SECS)?;
        params.not_after = at(expires_at)?;
        params.distinguished_name.push(DnType::CommonName, id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Rcgen)?;
        Ok(cert.der().clone())
    }
}

/// An agent's public key as sent at enrollment.
struct P256PublicKey(Vec<u8>);

impl P256PublicKey {
    fn parse(raw: &[u8]) -> Result<P256PublicKey, PkiError> {
        // Uncompressed SEC1: 0x04 || X (32) || Y (32). ring checks the point is on the curve
        // when the certificate's signatures are verified; the shape is checked here.
        if raw.len() != 65 || raw[0] != 0x04 {
            return Err(PkiError::BadPublicKey(raw.len()));
        }
        Ok(P256PublicKey(raw.to_vec()))
    }
}

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Hex SHA-256 of a certificate's DER: how the catalog and the verifier name certificates.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

/// The DER of the first CERTIFICATE block of a PEM text.
pub fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use base64::Engine;
    let body: String = pem
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)?
        .split("-----END CERTIFICATE-----")
        .next()?
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()
        .map(CertificateDer::from)
}
