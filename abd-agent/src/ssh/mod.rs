//! The ABD's SSH server (DESIGN.md §5): the A3 reaches the ABD on port 22 and runs one of a
//! few commands ([`commands`]). It accepts public-key authentication with the A3's key
//! only (from the boot config's `sshkey`); no password, no shell, no pty, no forwarding:
//! an `exec` request with a known command is all it serves.
//!
//! - [`keys`]: the host key (new at each boot, in memory) and the A3's key;
//! - [`commands`]: what each command does.

pub mod commands;
pub mod keys;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use russh::keys::PublicKey;
use russh::server::{self, Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};

use commands::Context;

use crate::bootcfg::BootConfig;
use crate::xenbus::{Transport, Xenstore};

/// The port the A3 reaches its ABDs on.
pub const PORT: u16 = 22;
/// Where the agent writes its host key's fingerprint for the A3 to pin (under Xen).
pub const XS_HOSTKEY: &str = "vm-data/abd/ssh-hostkey";
/// How long a failed authentication takes, whatever failed (no timing oracle).
const AUTH_REJECTION: Duration = Duration::from_millis(300);
/// A session with no traffic for this long is dropped.
const IDLE: Duration = Duration::from_secs(120);
/// Time for a `reboot` reply to reach the A3 before the VM goes down.
const REBOOT_GRACE: Duration = Duration::from_secs(1);
/// After an accept error (out of descriptors, say), wait this long before listening again.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A running SSH server.
pub struct Serving {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The host key's fingerprint, `SHA256:…`.
    pub fingerprint: String,
}

/// Listens on `listen` and serves the A3's key (`authorized`) in a background task, for as
/// long as the runtime runs. `ctx.listen` is replaced by the bound address.
pub async fn start(
    listen: SocketAddr,
    authorized: PublicKey,
    mut ctx: Context,
) -> anyhow::Result<Serving> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("SSH: cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    ctx.listen = addr;
    let host_key = keys::new_host_key()?;
    let fingerprint = keys::fingerprint(host_key.public_key());
    let config = Arc::new(server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: AUTH_REJECTION,
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: Some(IDLE),
        max_auth_attempts: 3,
        nodelay: true,
        ..Default::default()
    });
    let mut server = Server {
        authorized: Arc::new(authorized),
        ctx: Arc::new(ctx),
    };
    tokio::spawn(async move {
        loop {
            // `run_on_socket` returns only on an accept error; sessions run in their tasks.
            if let Err(e) =
                server::Server::run_on_socket(&mut server, config.clone(), &listener).await
            {
                tracing::warn!("ssh: accept on {addr}: {e}; listening again");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    });
    Ok(Serving { addr, fingerprint })
}

/// Starts the SSH server of an agent whose boot config is `boot`, on `listen`, when the
/// boot config carries the A3's key, and publishes the host key's fingerprint: in xenstore
/// (under Xen, for the A3 to pin) and on stderr (the console). A failure is logged and
/// leaves the agent without SSH: its data path does not need it.
pub async fn start_for(
    boot: &BootConfig,
    listen: SocketAddr,
    appliance: bool,
    xs: Option<&mut Xenstore<Transport>>,
) -> Option<Serving> {
    let Some(text) = &boot.agent.ssh_key else {
        tracing::warn!("ssh: off: the boot config has no sshkey (the A3's public key)");
        return None;
    };
    let ctx = Context {
        boot: boot.clone(),
        listen,
        appliance,
    };
    let started = match keys::authorized_key(text) {
        Ok(key) => start(listen, key, ctx).await,
        Err(e) => Err(e.context("the A3's key (sshkey)")),
    };
    let serving = match started {
        Ok(serving) => serving,
        Err(e) => {
            tracing::error!("ssh: not serving: {e:#}");
            return None;
        }
    };
    tracing::info!(
        "ssh: serving the A3 on {}; host key {}",
        serving.addr,
        serving.fingerprint
    );
    // A marked line for programs reading the console (qemu tests) or the process's stderr.
    eprintln!("abd-ssh-hostkey: {}", serving.fingerprint);
    match xs {
        Some(xs) => match xs.write(XS_HOSTKEY, &serving.fingerprint) {
            Ok(()) => tracing::info!("xenstore: {XS_HOSTKEY} = {}", serving.fingerprint),
            Err(e) => tracing::error!("xenstore: cannot write {XS_HOSTKEY}: {e:#}"),
        },
        // No xenstore (qemu): the console carries it, as it carries assigned-ip.
        None => eprintln!(
            "{}{}={}",
            crate::init::appliance::CONSOLE_VM_DATA,
            XS_HOSTKEY.trim_start_matches("vm-data/abd/"),
            serving.fingerprint
        ),
    }
    Some(serving)
}

struct Server {
    authorized: Arc<PublicKey>,
    ctx: Arc<Context>,
}

impl server::Server for Server {
    type Handler = Connection;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Connection {
        Connection {
            authorized: self.authorized.clone(),
            ctx: self.ctx.clone(),
            peer,
        }
    }

    fn handle_session_error(&mut self, error: russh::Error) {
        tracing::debug!("ssh: session ended: {error}");
    }
}

/// One client's session.
struct Connection {
    authorized: Arc<PublicKey>,
    ctx: Arc<Context>,
    peer: Option<SocketAddr>,
}

impl Connection {
    fn is_the_a3(&self, key: &PublicKey) -> Auth {
        if key.key_data() == self.authorized.key_data() {
            Auth::Accept
        } else {
            tracing::warn!(
                peer = ?self.peer,
                "ssh: refused key {}: only the A3's key is accepted",
                keys::fingerprint(key)
            );
            Auth::reject()
        }
    }
}

impl server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.is_the_a3(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let auth = self.is_the_a3(key.public_key);
        if matches!(auth, Auth::Accept) {
            tracing::info!(peer = ?self.peer, user, "ssh: the A3 logged in");
        }
        Ok(auth)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let command = String::from_utf8_lossy(data).into_owned();
        tracing::info!(peer = ?self.peer, command, "ssh: exec");
        let handle = session.handle();
        let ctx = self.ctx.clone();
        // The command runs in its own task: `diag` takes seconds, and the session must
        // keep reading meanwhile.
        tokio::spawn(async move {
            let reply = commands::run(&ctx, &command).await;
            // Errors here mean the client went away; nothing is left to tell it.
            let _ = handle.data(channel, reply.stdout.into_bytes()).await;
            let _ = handle.exit_status_request(channel, reply.status).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
            if reply.reboot {
                tracing::warn!("ssh: reboot requested by the A3");
                tokio::time::sleep(REBOOT_GRACE).await;
                commands::reboot_now();
            }
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(channel, session, "a shell")
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(channel, session, &format!("subsystem {name}"))
    }

    #[allow(clippy::too_many_arguments)] // the trait's signature
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(channel, session, "a pty")
    }
}

/// Says no to a channel request this server does not serve.
fn refuse(channel: ChannelId, session: &mut Session, what: &str) -> Result<(), russh::Error> {
    tracing::info!("ssh: refused {what}: only exec of {{diag, status, logs, reboot}}");
    session.channel_failure(channel)
}
