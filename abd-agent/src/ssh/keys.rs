//! The SSH keys: the ABD's host key, made at each boot and kept in memory only (the A3
//! pins it from `vm-data/abd/ssh-hostkey`), and the A3's public key from the boot config.

use anyhow::Context;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

/// A fresh ed25519 host key.
pub fn new_host_key() -> anyhow::Result<PrivateKey> {
    PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .context("cannot generate the SSH host key")
}

/// A key's OpenSSH fingerprint, `SHA256:<base64>` (as `ssh-keygen -l` prints it).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The A3's key as the boot config carries it: an OpenSSH public key line
/// (`ssh-ed25519 AAAA… comment`), or, where spaces cannot go (the kernel command line
/// splits on them), `ssh-ed25519:AAAA…`.
pub fn authorized_key(text: &str) -> anyhow::Result<PublicKey> {
    let text = text.trim();
    let line = if text.contains(char::is_whitespace) {
        text.to_owned()
    } else {
        text.replacen(':', " ", 1)
    };
    PublicKey::from_openssh(&line).map_err(|e| {
        anyhow::anyhow!(
            "{e}: expected an OpenSSH public key, `ssh-ed25519 AAAA…` or `ssh-ed25519:AAAA…`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_a3_key_parses_with_spaces_or_a_colon() {
        let key = new_host_key().unwrap();
        let line = key.public_key().to_openssh().unwrap();
        let (alg, blob) = line.split_once(' ').unwrap();
        let spaced = authorized_key(&format!("{line} a3@test")).unwrap();
        let coloned = authorized_key(&format!("{alg}:{blob}")).unwrap();
        assert_eq!(spaced.key_data(), key.public_key().key_data());
        assert_eq!(coloned.key_data(), key.public_key().key_data());
        assert!(fingerprint(&spaced).starts_with("SHA256:"));
        let err = authorized_key("ssh-ed25519:notbase64!")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ssh-ed25519:AAAA"), "{err}");
    }
}
