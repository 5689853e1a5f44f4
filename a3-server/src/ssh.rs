//! SSH from the A3 to its ABDs (DESIGN.md §5). The ABD's agent serves SSH on 22 to the
//! A3's key only, with a few commands (`diag [--json]`, `status [--json]`, `logs`,
//! `reboot`); [`exec`] runs one of them and returns its output and exit status.
//!
//! - The A3's key: ed25519, made once in `<state-dir>/ssh/a3_ed25519` (mode 0600); its
//!   public half goes into every ABD's boot config as `sshkey` ([`A3Key`]).
//! - The ABD's host key: new at each boot; the agent writes its fingerprint to
//!   `vm-data/abd/ssh-hostkey`, which the A3 pins when it is there ([`Target::host_key`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use russh::client;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

/// The A3's private key, relative to the state dir.
pub const KEY_FILE: &str = "ssh/a3_ed25519";
/// Where the ABD's agent publishes its host key's fingerprint (`SHA256:…`).
pub const XS_HOSTKEY: &str = "vm-data/abd/ssh-hostkey";
/// The port ABDs serve SSH on.
pub const PORT: u16 = 22;
/// The user name the A3 logs in as (the agent ignores it: only the key counts).
const USER: &str = "a3";

/// Why the A3's key cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file or directory of the key.
    #[error(
        "the A3's SSH key {path}: cannot {what}: {source} (`a3-server serve` makes it at start)"
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The key file cannot be written.
    #[error("the A3's SSH key: {0}")]
    Write(#[from] a3_shared::durable::WriteError),
    /// The key file holds no OpenSSH key, or a new key cannot be encoded.
    #[error("the A3's SSH key {path}: {source}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// The error.
        source: russh::keys::ssh_key::Error,
    },
}

/// The A3's SSH key.
#[derive(Clone)]
pub struct A3Key {
    key: Arc<PrivateKey>,
}

impl A3Key {
    /// Loads the A3's key from `state_dir`, making it on first use (the server does at
    /// start).
    pub fn load_or_create(state_dir: &Path) -> Result<A3Key, KeyError> {
        let path = key_path(state_dir);
        if path.exists() {
            return A3Key::load(state_dir);
        }
        let dir = path.parent().expect("KEY_FILE has a directory");
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| KeyError::Io {
                    path: dir.to_owned(),
                    what: "create",
                    source,
                })?;
        }
        let key_err = |source| KeyError::Key {
            path: path.clone(),
            source,
        };
        let mut key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
            .map_err(key_err)?;
        key.set_comment("a3");
        let pem = key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(key_err)?;
        a3_shared::durable::write_private(&path, pem.as_bytes())?;
        let a3 = A3Key { key: Arc::new(key) };
        // The public half, for admins who want to reach an ABD with OpenSSH.
        let public = path.with_extension("pub");
        std::fs::write(&public, a3.public_line() + "\n").map_err(|source| KeyError::Io {
            path: public.clone(),
            what: "write",
            source,
        })?;
        tracing::info!(
            "made the A3's SSH key {} ({})",
            path.display(),
            a3.fingerprint()
        );
        Ok(a3)
    }

    /// Loads the A3's key from `state_dir`.
    pub fn load(state_dir: &Path) -> Result<A3Key, KeyError> {
        let path = key_path(state_dir);
        let pem = std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
            path: path.clone(),
            what: "read",
            source,
        })?;
        let key = PrivateKey::from_openssh(pem).map_err(|source| KeyError::Key { path, source })?;
        Ok(A3Key { key: Arc::new(key) })
    }

    /// The public key as an OpenSSH line (`ssh-ed25519 AAAA… a3`), as the boot config's
    /// `sshkey` carries it.
    pub fn public_line(&self) -> String {
        self.key
            .public_key()
            .to_openssh()
            .expect("an ed25519 public key always encodes")
    }

    /// The public key's fingerprint, `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.key.public_key())
    }
}

fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_FILE)
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The ABD to reach.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name (the ABD id), for messages.
    pub abd: String,
    /// Its SSH address.
    pub addr: SocketAddr,
    /// The host key fingerprint (`SHA256:…`) to insist on; `None` accepts any key.
    pub host_key: Option<String>,
}

/// What a command gave.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExecOutput {
    /// Its exit status (0 success, 127 unknown command).
    pub status: u32,
    /// What it printed.
    pub stdout: String,
}

/// Why a command could not be run. Each message names the ABD, its address and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// No TCP connection.
    #[error(
        "ABD {abd} at {addr}: {source}: the ABD serves SSH on {PORT}; check that its VM runs \
         and that firewalls between the A3 and the ABD network let TCP {PORT} through"
    )]
    Connect {
        /// The ABD.
        abd: String,
        /// Its address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The ABD's host key is not the pinned one.
    #[error(
        "ABD {abd} at {addr}: host key {seen} is not the pinned {pinned} ({XS_HOSTKEY}): \
         another machine answers at this address, or the pin is stale; check the address \
         and the ABD's console (`abd-ssh-hostkey:` line)"
    )]
    HostKey {
        /// The ABD.
        abd: String,
        /// Its address.
        addr: SocketAddr,
        /// The key it showed.
        seen: String,
        /// The key expected.
        pinned: String,
    },
    /// The ABD does not accept the A3's key.
    #[error(
        "ABD {abd} at {addr}: refused the A3's key {key}: the ABD's boot config (sshkey) \
         holds another A3's key; destroy the ABD and let this A3 make a new one"
    )]
    Refused {
        /// The ABD.
        abd: String,
        /// Its address.
        addr: SocketAddr,
        /// The A3's key fingerprint.
        key: String,
    },
    /// No answer in time.
    #[error(
        "ABD {abd} at {addr}: no answer to {command:?} within {after:?}: the ABD may be \
         overloaded or the network drops packets; run `a3-server abd ssh {abd} status`"
    )]
    Timeout {
        /// The ABD.
        abd: String,
        /// Its address.
        addr: SocketAddr,
        /// The command.
        command: String,
        /// The time limit.
        after: Duration,
    },
    /// The SSH session failed.
    #[error("ABD {abd} at {addr}: SSH: {detail}")]
    Protocol {
        /// The ABD.
        abd: String,
        /// Its address.
        addr: SocketAddr,
        /// What went wrong.
        detail: String,
    },
}

/// Runs `command` on the ABD as the A3 (key `key`), within `timeout` for the whole
/// exchange.
pub async fn exec(
    key: &A3Key,
    target: &Target,
    command: &str,
    timeout: Duration,
) -> Result<ExecOutput, SshError> {
    match tokio::time::timeout(timeout, exec_inner(key, target, command)).await {
        Ok(result) => result,
        Err(_) => Err(SshError::Timeout {
            abd: target.abd.clone(),
            addr: target.addr,
            command: command.to_owned(),
            after: timeout,
        }),
    }
}

async fn exec_inner(key: &A3Key, target: &Target, command: &str) -> Result<ExecOutput, SshError> {
    let protocol = |detail: String| SshError::Protocol {
        abd: target.abd.clone(),
        addr: target.addr,
        detail,
    };
    let stream = tokio::net::TcpStream::connect(target.addr)
        .await
        .map_err(|source| SshError::Connect {
            abd: target.abd.clone(),
            addr: target.addr,
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let seen = Arc::new(Mutex::new(None));
    let handler = HostKeyCheck {
        pinned: target.host_key.clone(),
        seen: seen.clone(),
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        ..Default::default()
    });
    let mut session = match client::connect_stream(config, stream, handler).await {
        Ok(session) => session,
        Err(russh::Error::UnknownKey) => {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(SshError::HostKey {
                abd: target.abd.clone(),
                addr: target.addr,
                seen: seen.unwrap_or_else(|| "(none)".into()),
                pinned: target.host_key.clone().unwrap_or_default(),
            });
        }
        Err(e) => return Err(protocol(format!("handshake: {e}"))),
    };
    let auth = session
        .authenticate_publickey(
            USER,
            russh::keys::PrivateKeyWithHashAlg::new(key.key.clone(), None),
        )
        .await
        .map_err(|e| protocol(format!("authentication: {e}")))?;
    if !auth.success() {
        return Err(SshError::Refused {
            abd: target.abd.clone(),
            addr: target.addr,
            key: key.fingerprint(),
        });
    }
    let mut channel = session
        .channel_open_session()
        .await
        .map_err(|e| protocol(format!("opening a channel: {e}")))?;
    channel
        .exec(true, command)
        .await
        .map_err(|e| protocol(format!("exec {command:?}: {e}")))?;
    let mut stdout = Vec::new();
    let mut status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            ChannelMsg::Data { data } => stdout.extend_from_slice(&data),
            ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            ChannelMsg::Failure => {
                return Err(protocol(format!("the ABD refused to run {command:?}")));
            }
            _ => {}
        }
    }
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let status =
        status.ok_or_else(|| protocol(format!("{command:?} ended without an exit status")))?;
    Ok(ExecOutput {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
    })
}

/// Accepts the ABD's host key when it matches the pin (or when there is none), and notes
/// which key was shown, for the error message.
struct HostKeyCheck {
    pinned: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = server_key else {
            return Ok(false);
        };
        let fp = fingerprint(key);
        let ok = self.pinned.as_deref().is_none_or(|pin| pin.trim() == fp);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp);
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_private_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let a = A3Key::load_or_create(dir.path()).unwrap();
        let b = A3Key::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public_line(), b.public_line());
        assert!(a.public_line().starts_with("ssh-ed25519 AAAA"));
        assert!(a.fingerprint().starts_with("SHA256:"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
