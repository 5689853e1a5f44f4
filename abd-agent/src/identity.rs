//! The agent's credential: an ECDSA P-256 key and the client certificate the A3 issued for
//! it, kept in the state dir (dir 0700, files 0600). Enrollment creates them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A key, and its certificate once enrolled.
pub struct Identity {
    dir: PathBuf,
    /// The key pair.
    pub key: rcgen::KeyPair,
    /// The client certificate, once enrolled.
    pub cert: Option<CertificateDer<'static>>,
}

impl Identity {
    /// Loads the identity in `dir`, creating the dir and a key on first use.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Identity> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("agent state dir {}: cannot create", dir.display()))?;
        let key_path = dir.join("client.key");
        let key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem).with_context(|| {
                format!(
                    "{}: damaged key; remove the state dir and enroll again",
                    key_path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate()?;
                write_private(&key_path, key.serialize_pem().as_bytes())?;
                key
            }
            Err(e) => {
                return Err(e).with_context(|| format!("{}: cannot read", key_path.display()));
            }
        };
        let cert = match std::fs::read(dir.join("client.crt")) {
            Ok(der) => Some(CertificateDer::from(der)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).context("client certificate: cannot read"),
        };
        Ok(Identity {
            dir: dir.to_owned(),
            key,
            cert,
        })
    }

    /// Keeps the certificate the A3 issued.
    pub fn save_cert(&mut self, der: Vec<u8>) -> anyhow::Result<()> {
        write_private(&self.dir.join("client.crt"), &der)?;
        self.cert = Some(CertificateDer::from(der));
        Ok(())
    }

    /// The private key for rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}
