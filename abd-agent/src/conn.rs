//! The agent's connection to its A3: enrollment on first start, then one control stream
//! that carries jobs, held until the connection drops, then reconnect with backoff. QUIC
//! first; the TLS/TCP fallback ([`crate::link`]) when QUIC gets no answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use a3_shared::proto::{A3Msg, AgentMsg, PROTOCOL_VERSION, transport};
use anyhow::{Context, bail};

use crate::config::{AgentConfig, Transport};
use crate::identity::Identity;
use crate::link::{Link, RecvStream, SendStream, TcpDialer};
use crate::{jobs, status, tls, wire};

/// Control messages are small: no job carries a block list (the largest is a certificate).
const MAX_CONTROL_FRAME: usize = 64 << 10;

/// A client endpoint with 4 MiB socket buffers (the kernel may clamp them to
/// `net.core.[rw]mem_max`), so bursts at line rate are not dropped in the socket.
fn endpoint(bind: Option<SocketAddr>, peer: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let bind = bind.unwrap_or_else(|| match peer {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    });
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket
        .bind(&bind.into())
        .with_context(|| format!("cannot bind {bind}"))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok(endpoint)
}

/// A control stream to the A3, on the link it opened.
pub struct Control {
    link: Link,
    /// QUIC's endpoint, to wait for its goodbye.
    endpoint: Option<quinn::Endpoint>,
    send: SendStream,
    recv: RecvStream,
}

impl Control {
    /// Closes the link, and waits for QUIC's close to go out.
    pub async fn close(self, why: &'static [u8]) {
        let Control {
            link,
            endpoint,
            mut send,
            recv,
        } = self;
        wire::finish(&mut send).await;
        drop(recv);
        close_link(&link, endpoint, why).await;
    }
}

/// Closes `link` and waits for QUIC's close to go out.
async fn close_link(link: &Link, endpoint: Option<quinn::Endpoint>, why: &'static [u8]) {
    link.close(why);
    if let Some(endpoint) = endpoint {
        endpoint.wait_idle().await;
    }
}

/// Connects over QUIC.
async fn connect_quic(cfg: &AgentConfig, tls: rustls::ClientConfig) -> anyhow::Result<Control> {
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    client.transport_config(Arc::new(transport::transport(transport::Side::Agent)));
    let endpoint = endpoint(cfg.bind, cfg.a3_address)?;
    let conn = endpoint
        .connect_with(client, cfg.a3_address, &cfg.server_name)?
        .await
        .with_context(|| format!("A3 at {} (QUIC): cannot connect", cfg.a3_address))?;
    let (send, recv) = conn.open_bi().await?;
    Ok(Control {
        link: Link::Quic(conn),
        endpoint: Some(endpoint),
        send: Box::new(send),
        recv: Box::new(recv),
    })
}

/// Connects over the TLS/TCP fallback.
pub async fn connect_tcp(cfg: &AgentConfig, tls: rustls::ClientConfig) -> anyhow::Result<Control> {
    let dialer = TcpDialer::new(cfg.a3_address, &cfg.server_name, cfg.bind, tls)?;
    let (send, recv) = dialer.open(a3_shared::proto::tcp::CONTROL).await?;
    Ok(Control {
        link: Link::Tcp(Arc::new(dialer)),
        endpoint: None,
        send,
        recv,
    })
}

/// Whether QUIC got no answer at all (UDP dropped on the way), rather than a refusal.
fn no_answer(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<quinn::ConnectionError>(),
            Some(quinn::ConnectionError::TimedOut)
        )
    })
}

/// Opens a control stream with the identity's certificate (or none, to enroll), over the
/// configured transport; `auto` falls back to TLS/TCP when QUIC gets no answer.
async fn connect(cfg: &AgentConfig, identity: &Identity) -> anyhow::Result<Control> {
    let tls = tls::client_config(&cfg.ca_pin, identity)?;
    match cfg.transport {
        Transport::Quic => connect_quic(cfg, tls).await,
        Transport::Tcp => connect_tcp(cfg, tls).await,
        Transport::Auto => match connect_quic(cfg, tls.clone()).await {
            Err(e) if no_answer(&e) => {
                tracing::warn!(
                    "{e:#}; trying the TLS/TCP fallback on TCP {}",
                    cfg.a3_address
                );
                connect_tcp(cfg, tls)
                    .await
                    .map_err(|tcp| tcp.context(format!("after QUIC failed ({e:#})")))
            }
            other => other,
        },
    }
}

/// Trades the one-time token for a certificate.
async fn enroll(cfg: &AgentConfig, identity: &mut Identity) -> anyhow::Result<()> {
    let Some(token) = cfg.token.as_deref() else {
        bail!(
            "ABD '{}' has no certificate and its config has no enrollment token; run \
             `a3-server abd enroll --id {}` and use the config it writes",
            cfg.id,
            cfg.id
        );
    };
    let mut control = connect(cfg, identity).await?;
    wire::send(
        &mut control.send,
        &AgentMsg::Enroll {
            version: PROTOCOL_VERSION,
            abd_id: cfg.id.clone(),
            token: token.to_owned(),
            public_key: identity.key.public_key_raw().to_vec(),
        },
    )
    .await?;
    let answer = wire::recv::<A3Msg>(&mut control.recv, 64 << 10).await?;
    control.close(b"enrolled").await;
    match answer {
        Some(A3Msg::Enrolled { cert_der }) => {
            identity.save_cert(cert_der)?;
            tracing::info!(id = %cfg.id, "enrolled with the A3");
            Ok(())
        }
        Some(A3Msg::Refused { reason }) => bail!("the A3 refused the enrollment: {reason}"),
        other => bail!("the A3 answered the enrollment with {other:?}"),
    }
}

/// An accepted connection: the control stream is open and the A3 said welcome.
pub struct Session(Control);

/// Connects (enrolling first when needed) and says hello.
pub async fn open_session(cfg: &AgentConfig, identity: &mut Identity) -> anyhow::Result<Session> {
    if identity.cert.is_none() {
        enroll(cfg, identity).await?;
    }
    let refused = |e: anyhow::Error| {
        e.context(format!(
            "the A3 at {} refused ABD '{}' (certificate revoked, replaced, or from another \
             CA?); re-enroll with `a3-server abd enroll --id {}`",
            cfg.a3_address, cfg.id, cfg.id
        ))
    };
    let mut control = connect(cfg, identity).await.map_err(|e| {
        // A refusal shows as a broken handshake; no answer at all is not a refusal.
        if no_answer(&e) { e } else { refused(e) }
    })?;
    wire::send(
        &mut control.send,
        &AgentMsg::Hello {
            version: PROTOCOL_VERSION,
            abd_id: cfg.id.clone(),
            agent: concat!("abd-agent ", env!("CARGO_PKG_VERSION")).to_owned(),
        },
    )
    .await
    .map_err(refused)?;
    match wire::recv::<A3Msg>(&mut control.recv, 64 << 10)
        .await
        .map_err(refused)?
    {
        Some(A3Msg::Welcome { version }) if version == PROTOCOL_VERSION => Ok(Session(control)),
        Some(A3Msg::Welcome { version }) => {
            bail!("the A3 speaks protocol {version}, this agent {PROTOCOL_VERSION}; upgrade")
        }
        Some(A3Msg::Refused { reason }) => bail!("the A3 refused ABD '{}': {reason}", cfg.id),
        other => Err(refused(anyhow::anyhow!("unexpected answer {other:?}"))),
    }
}

/// Serves jobs on an open session until the connection ends; returns why it ended. A
/// renewed certificate is kept in `identity` for the next connection.
pub async fn serve(session: Session, identity: &mut Identity) -> anyhow::Error {
    let Control {
        link,
        endpoint,
        send,
        mut recv,
    } = session.0;
    let mut jobs = jobs::Jobs::new(link.clone(), send);
    let why = loop {
        match wire::recv::<A3Msg>(&mut recv, MAX_CONTROL_FRAME).await {
            Ok(Some(A3Msg::Renewed { cert_der })) => match identity.save_cert(cert_der) {
                Ok(()) => tracing::info!("the A3 renewed this ABD's certificate"),
                // The current certificate stays accepted until the new one is presented.
                Err(e) => tracing::warn!("keeping the renewed certificate: {e:#}"),
            },
            Ok(Some(msg)) => jobs.handle(msg),
            Ok(None) => break anyhow::anyhow!("the A3 closed the control stream"),
            Err(e) => break e,
        }
    };
    jobs.abort_all(&format!("{why:#}"));
    close_link(&link, endpoint, b"bye").await;
    why
}

/// `abd-agent run`: connect, serve, reconnect with backoff (1 s doubling to 30 s), forever.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let mut identity = Identity::load_or_create(cfg.state_dir())?;
    let mut backoff = Duration::from_secs(1);
    loop {
        match open_session(&cfg, &mut identity).await {
            Ok(session) => {
                let transport = session.0.link.name();
                tracing::info!(a3 = %cfg.a3_address, id = %cfg.id, transport, "connected to the A3");
                backoff = Duration::from_secs(1);
                status::set_link(Some(transport));
                let why = serve(session, &mut identity).await;
                status::set_link(None);
                tracing::warn!("connection to the A3 lost: {why:#}");
            }
            Err(e) => tracing::warn!("{e:#}; retrying in {}s", backoff.as_secs()),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// `abd-agent probe`: one attempt to connect (enrolling if needed) and be welcomed; says
/// which transport carried it.
pub async fn probe(cfg: AgentConfig) -> anyhow::Result<&'static str> {
    let mut identity = Identity::load_or_create(cfg.state_dir())?;
    let session = open_session(&cfg, &mut identity).await?;
    let transport = session.0.link.name();
    session.0.close(b"probe").await;
    Ok(transport)
}
