//! Per-host self-signed certificates, as an XCP-ng host has after install.
//!
//! Each host's certificate and key are generated once with rcgen and kept in
//! `tls/<host-uuid>.{crt,key}.pem` (the key with mode 0600), so a host presents the same
//! certificate across restarts until the control API asks for a new one.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a host's TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating the certificate failed.
    #[error("generating a certificate for {host}: {msg}")]
    Generate {
        /// The host address.
        host: String,
        /// rcgen's message.
        msg: String,
    },
    /// Reading or writing the PEM files failed.
    #[error("certificate file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The stored files are not a usable certificate and key.
    #[error(
        "certificate files for {host} in {dir} are unusable ({msg}); delete them to regenerate"
    )]
    Invalid {
        /// The host address.
        host: String,
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// A host's TLS identity.
pub struct HostTls {
    /// The rustls configuration to serve with.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the DER certificate, lower-case hex, as clients pin it.
    pub fingerprint: String,
}

fn paths(dir: &Path, host_uuid: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{host_uuid}.crt.pem")),
        dir.join(format!("{host_uuid}.key.pem")),
    )
}

/// Loads the host's certificate, generating it on first use.
pub fn load_or_create(dir: &Path, host_uuid: &str, address: &str) -> Result<HostTls, TlsError> {
    let (crt, key) = paths(dir, host_uuid);
    if !crt.exists() || !key.exists() {
        generate(dir, host_uuid, address)?;
    }
    let invalid = |msg: String| TlsError::Invalid {
        host: address.to_owned(),
        dir: dir.to_owned(),
        msg,
    };
    let cert = CertificateDer::from_pem_file(&crt).map_err(|e| invalid(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| invalid(e.to_string()))?;
    let fingerprint = hex::encode(ring::digest::digest(&ring::digest::SHA256, &cert));
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|e| invalid(e.to_string()))?;
    Ok(HostTls {
        config: Arc::new(config),
        fingerprint,
    })
}

/// Replaces the host's certificate with a new one.
pub fn regenerate(dir: &Path, host_uuid: &str, address: &str) -> Result<(), TlsError> {
    generate(dir, host_uuid, address)
}

fn generate(dir: &Path, host_uuid: &str, address: &str) -> Result<(), TlsError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let names = vec![address.to_owned(), format!("xcp-ng-{host_uuid}")];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate {
        host: address.to_owned(),
        msg: e.to_string(),
    })?;
    let (crt, key) = paths(dir, host_uuid);
    write_file(&key, ck.signing_key.serialize_pem().as_bytes(), 0o600).map_err(io_err(&key))?;
    write_file(&crt, ck.cert.pem().as_bytes(), 0o644).map_err(io_err(&crt))?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}
