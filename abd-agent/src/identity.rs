//! The agent's credential: an ECDSA P-256 key and the client certificate the A3 issued for
//! it, kept in the state dir (dir 0700, files 0600). Enrollment creates them.

use std::path::{Path, PathBuf};

use a3_shared::durable;
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_once(&key_path)?,
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
        durable::write_private(&self.dir.join("client.crt"), &der)?;
        self.cert = Some(CertificateDer::from(der));
        Ok(())
    }

    /// The private key for rustls.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// Makes the key at `path` unless another task (the boot diag, a connection) made it
/// first, and returns the one on disk: two keys written in turn would leave the key of one
/// beside the certificate enrolled for the other.
fn create_key_once(path: &Path) -> anyhow::Result<rcgen::KeyPair> {
    let key = rcgen::KeyPair::generate()?;
    // `create_private` lands a file only where none is: the first key to land wins.
    match durable::create_private(path, key.serialize_pem().as_bytes()) {
        Ok(()) => Ok(key),
        Err(e) if e.source.kind() == std::io::ErrorKind::AlreadyExists => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            Ok(rcgen::KeyPair::from_pem(&pem)?)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_uses_share_one_key() {
        let dir = std::env::temp_dir().join(format!("abd-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keys: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Identity::load_or_create(&dir).unwrap().key.serialize_der()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            keys.windows(2).all(|w| w[0] == w[1]),
            "every caller got the key on disk"
        );
        let on_disk = Identity::load_or_create(&dir).unwrap().key.serialize_der();
        assert_eq!(keys[0], on_disk);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
