//! One agent connection: either an enrollment (no client certificate: one exchange, then
//! close) or a session: the control stream, with data streams opened per job. The same
//! code serves QUIC and the TLS/TCP fallback ([`super::tcp`]); a [`Carrier`] holds what
//! differs.

use std::net::SocketAddr;
use std::sync::Arc;

use a3_shared::proto::{A3Msg, AgentMsg, DataDown, DataUp, PROTOCOL_VERSION};
use tokio::sync::mpsc;

use super::hash::DeviceHash;
use super::wire::{RecvStream, SendStream};
use super::{Active, AgentLink, ConnError, DataPort, JobState, StreamError, Transport, wire};

/// Frames on the control stream from an agent are small (no manifests go up).
const MAX_CONTROL_UP: usize = 64 << 10;
/// How long a new connection may take to send its first message.
pub const FIRST_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What carries a connection's streams.
pub enum Carrier {
    /// QUIC: the control and data streams are streams of one connection.
    Quic(quinn::Connection),
    /// The TLS/TCP fallback: data streams come as connections of their own, which the
    /// listener hands to [`data_stream`] directly.
    Tcp,
}

impl Carrier {
    fn transport(&self) -> Transport {
        match self {
            Carrier::Quic(_) => Transport::Quic,
            Carrier::Tcp => Transport::Tcp,
        }
    }

    /// The next data stream of the session (never, over TCP).
    async fn accept_data(&self) -> Result<(SendStream, RecvStream), quinn::ConnectionError> {
        match self {
            Carrier::Quic(conn) => {
                let (s, r) = conn.accept_bi().await?;
                Ok((Box::new(s), Box::new(r)))
            }
            Carrier::Tcp => std::future::pending().await,
        }
    }

    /// Closes the whole connection (TCP: the control stream's owner drops it).
    fn close(&self, code: u32, reason: &[u8]) {
        if let Carrier::Quic(conn) = self {
            conn.close(code.into(), reason);
        }
    }
}

/// Who is at the other end.
pub struct Peer {
    /// The remote address.
    pub remote: SocketAddr,
    /// The ABD its client certificate names, if it has an accepted one.
    pub abd: Option<String>,
    /// The fingerprint of its client certificate, if it presented one.
    pub cert_sha256: Option<String>,
    /// This connection's number (a reconnecting ABD replaces an older one).
    pub conn_id: usize,
}

impl Peer {
    /// The peer at `remote` that presented `certs`: the ABD an accepted client certificate
    /// belongs to, and the certificate's fingerprint.
    pub fn new(
        port: &DataPort,
        remote: SocketAddr,
        certs: Option<&[rustls::pki_types::CertificateDer<'_>]>,
        conn_id: usize,
    ) -> Peer {
        let cert = certs.and_then(|c| c.first());
        Peer {
            remote,
            abd: cert.and_then(|c| port.pki().accepted().id_of(c)),
            cert_sha256: cert.map(|c| crate::pki::fingerprint(c)),
            conn_id,
        }
    }
}

/// Handles one incoming QUIC connection to its end.
pub async fn handle_quic(
    port: DataPort,
    incoming: quinn::Incoming,
    conn_id: usize,
) -> Result<(), ConnError> {
    let remote = incoming.remote_address();
    let quic = |what| {
        move |source| ConnError::Quic {
            remote,
            what,
            source,
        }
    };
    let conn = incoming.await.map_err(quic("handshake"))?;
    let certs = conn.peer_identity().and_then(|any| {
        any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    let peer = Peer::new(&port, remote, certs.as_deref().map(Vec::as_slice), conn_id);
    // A peer must open its control stream promptly: a silent connection would hold a slot.
    let (send, recv) = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| {
            ConnError::Ended(format!(
                "{remote}: opened no stream within {FIRST_MESSAGE_TIMEOUT:?}"
            ))
        })?
        .map_err(quic("control stream"))?;
    handle_control(
        port,
        peer,
        Carrier::Quic(conn),
        Box::new(send),
        Box::new(recv),
    )
    .await
}

/// Serves a control stream: enrollment, or Hello and then the session.
pub async fn handle_control(
    port: DataPort,
    peer: Peer,
    carrier: Carrier,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), ConnError> {
    let remote = peer.remote;
    let first = tokio::time::timeout(
        FIRST_MESSAGE_TIMEOUT,
        wire::recv::<AgentMsg>(&mut recv, MAX_CONTROL_UP),
    )
    .await
    .map_err(|_| {
        ConnError::Ended(format!(
            "{remote}: said nothing within {FIRST_MESSAGE_TIMEOUT:?}"
        ))
    })??;
    let abd = peer.abd.clone();
    match (abd, first) {
        (
            None,
            Some(AgentMsg::Enroll {
                version,
                abd_id,
                token,
                public_key,
            }),
        ) => {
            let answer = if version != PROTOCOL_VERSION {
                A3Msg::Refused {
                    reason: format!(
                        "protocol {version} unsupported; this A3 speaks {PROTOCOL_VERSION}"
                    ),
                }
            } else {
                match port.pki().enroll(&abd_id, &token, &public_key) {
                    Ok(cert) => {
                        tracing::info!(%remote, abd = %abd_id, "ABD enrolled");
                        A3Msg::Enrolled {
                            cert_der: cert.to_vec(),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%remote, abd = %abd_id, "enrollment refused: {e}");
                        A3Msg::Refused {
                            reason: e.to_string(),
                        }
                    }
                }
            };
            wire::send(&mut send, &answer).await?;
            wire::finish(&mut send).await;
            // Let the agent read the answer and close its end.
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                wire::recv::<AgentMsg>(&mut recv, MAX_CONTROL_UP),
            )
            .await;
            Ok(())
        }
        (None, _) => {
            let reason = "this connection has no enrolled certificate; enroll the ABD with \
                          `a3-server abd enroll --id ID` and start the agent with that config";
            let _ = wire::send(
                &mut send,
                &A3Msg::Refused {
                    reason: reason.into(),
                },
            )
            .await;
            wire::finish(&mut send).await;
            carrier.close(1, b"not enrolled");
            Err(ConnError::Ended(format!("{remote}: refused: not enrolled")))
        }
        (
            Some(id),
            Some(AgentMsg::Hello {
                version,
                abd_id,
                agent,
            }),
        ) => {
            if abd_id != id || version != PROTOCOL_VERSION {
                let reason = if abd_id != id {
                    format!("this certificate belongs to ABD '{id}', not '{abd_id}'")
                } else {
                    format!("protocol {version} unsupported; this A3 speaks {PROTOCOL_VERSION}")
                };
                let _ = wire::send(
                    &mut send,
                    &A3Msg::Refused {
                        reason: reason.clone(),
                    },
                )
                .await;
                wire::finish(&mut send).await;
                carrier.close(1, b"refused");
                return Err(ConnError::Ended(format!("{remote}: refused: {reason}")));
            }
            wire::send(
                &mut send,
                &A3Msg::Welcome {
                    version: PROTOCOL_VERSION,
                },
            )
            .await?;
            tracing::info!(%remote, abd = %id, %agent, transport = %carrier.transport(), "ABD connected");
            session(port, carrier, peer, id, send, recv).await
        }
        (Some(id), other) => {
            carrier.close(1, b"protocol");
            Err(ConnError::Ended(format!(
                "ABD '{id}' at {remote}: expected Hello, got {other:?}"
            )))
        }
    }
}

/// How often a connected ABD's certificate is checked for renewal.
const RENEWAL_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// Sends `abd` a renewed certificate when its current one is near its end.
fn renew(port: &DataPort, abd: &str, ctl: &mpsc::UnboundedSender<A3Msg>) {
    match port.pki().renew_if_due(abd) {
        Ok(Some(cert)) => {
            tracing::info!(abd = %abd, "renewing the ABD's client certificate");
            let _ = ctl.send(A3Msg::Renewed {
                cert_der: cert.to_vec(),
            });
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(abd = %abd, "renewing the ABD's client certificate: {e}"),
    }
}

async fn session(
    port: DataPort,
    carrier: Carrier,
    peer: Peer,
    abd: String,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), ConnError> {
    let conn_id = peer.conn_id;
    let (ctl, mut ctl_rx) = mpsc::unbounded_channel::<A3Msg>();
    if let Some(fp) = &peer.cert_sha256
        && let Err(e) = port.pki().presented(&abd, fp)
    {
        tracing::warn!(abd = %abd, "recording the certificate presented: {e}");
    }
    // The first tick is now: a certificate near its end is renewed as the ABD connects,
    // and a long-lived connection is looked at again every hour.
    let mut renewal = tokio::time::interval(RENEWAL_CHECK);
    let renew_ctl = ctl.clone();
    let link = AgentLink {
        conn_id,
        ctl,
        remote: peer.remote,
        transport: carrier.transport(),
    };
    // A reconnecting agent replaces its previous connection; that one's jobs fail.
    if let Some(old) = port.lock_agents().insert(abd.clone(), link) {
        let _ = old.ctl.send(A3Msg::Refused {
            reason: "replaced by a newer connection of the same ABD".into(),
        });
    }
    // The writer ends on a refusal (a newer connection replaced this one: true) or a broken
    // stream (false); either ends the session.
    let writer = tokio::spawn(async move {
        while let Some(msg) = ctl_rx.recv().await {
            let refused = matches!(msg, A3Msg::Refused { .. });
            if wire::send(&mut send, &msg).await.is_err() {
                return false;
            }
            if refused {
                wire::finish(&mut send).await;
                return true;
            }
        }
        false
    });
    let mut writer = std::pin::pin!(writer);
    let shutdown = port.inner.shutdown.clone();
    let why: String = loop {
        tokio::select! {
            _ = renewal.tick() => renew(&port, &abd, &renew_ctl),
            _ = shutdown.cancelled() => {
                carrier.close(2, b"A3 shutting down");
                break "the A3 is shutting down (restart it, then run the job again)".into();
            }
            msg = wire::recv::<AgentMsg>(&mut recv, MAX_CONTROL_UP) => match msg {
                Ok(Some(m)) => control(&port, &abd, m),
                Ok(None) => break format!("ABD '{abd}' closed its control stream"),
                Err(e) => break format!("ABD '{abd}' disconnected ({e})"),
            },
            refused = &mut writer => {
                carrier.close(1, b"refused");
                break match refused {
                    Ok(true) => format!("ABD '{abd}' connected again; this older connection ended"),
                    _ => format!("ABD '{abd}' disconnected (its control stream broke)"),
                };
            }
            stream = carrier.accept_data() => match stream {
                Ok((s, r)) => {
                    let port = port.clone();
                    let abd = abd.clone();
                    port.inner.tasks.clone().spawn(async move {
                        if let Err(e) = data_stream(&port, &abd, s, r).await {
                            tracing::warn!(abd = %abd, "data stream: {e}");
                        }
                    });
                }
                Err(e) => break format!("ABD '{abd}' disconnected ({e})"),
            },
        }
    };
    writer.abort();
    {
        let mut agents = port.lock_agents();
        if agents.get(&abd).is_some_and(|l| l.conn_id == conn_id) {
            agents.remove(&abd);
        }
    }
    for job in port.jobs().running_of(&abd) {
        port.fail(job, &why);
    }
    Err(ConnError::Ended(why))
}

/// A control message from the agent.
fn control(port: &DataPort, abd: &str, msg: AgentMsg) {
    match msg {
        AgentMsg::Progress(p) => {
            // A backup moving on keeps its writer lease; one whose lease GC revoked stops
            // now, rather than at the commit.
            if port.jobs().progress(abd, &p)
                && let Some(Active::Backup(w)) = port.active(p.job).filter(|a| a.abd() == abd)
                && let Err(e) = w.renew()
            {
                port.fail(p.job, &e.to_string());
            }
        }
        AgentMsg::Failed { job, reason } => {
            if port.active(job).is_some_and(|a| a.abd() == abd) {
                port.fail(job, &format!("ABD '{abd}': {reason}"));
            }
        }
        AgentMsg::Done { job, outcome } => {
            let Some(active) = port.active(job).filter(|a| a.abd() == abd) else {
                return;
            };
            tracing::info!(job, ?outcome, "agent finished its part");
            port.jobs().set(job, JobState::Finishing);
            let port = port.clone();
            port.inner.tasks.clone().spawn(async move {
                let result = match &active {
                    Active::Backup(w) => w.commit().await,
                    Active::Restore(w) => w.check_served(),
                    Active::Hash(_) => Err(StreamError::Protocol(format!(
                        "ABD '{}' answered a hash job without its digest",
                        active.abd()
                    ))),
                };
                match result {
                    Ok(version) => {
                        port.lock_active().remove(&job);
                        tracing::info!(job, %version, "job succeeded");
                        port.jobs().set(job, JobState::Succeeded { version });
                    }
                    // Removes the job, and hands a VM backup's disk its failure.
                    Err(reason) => port.fail(job, &reason.to_string()),
                }
            });
        }
        AgentMsg::Hashed {
            job,
            size,
            digest,
            micros,
        } => {
            let Some(Active::Hash(work)) = port.active(job).filter(|a| a.abd() == abd) else {
                return;
            };
            port.lock_active().remove(&job);
            port.jobs().set(
                job,
                JobState::Succeeded {
                    version: hex::encode(digest),
                },
            );
            work.finish(Ok(DeviceHash {
                job,
                size,
                digest,
                micros,
            }));
        }
        other => tracing::warn!(abd, "unexpected control message {other:?}"),
    }
}

/// A data stream: the first frame names the job.
pub async fn data_stream(
    port: &DataPort,
    abd: &str,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), ConnError> {
    let Some(DataUp::Open {
        job,
        stream,
        streams,
        size,
    }) = wire::recv::<DataUp>(&mut recv, 1024).await?
    else {
        return Err(StreamError::Protocol("a data stream must start with Open".into()).into());
    };
    let active = port.active(job).filter(|a| a.abd() == abd);
    let Some(active) = active else {
        let reason = format!("job {job} is not running on ABD '{abd}'");
        let _ = wire::send(
            &mut send,
            &DataDown::Error {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(ConnError::Ended(reason));
    };
    let result = match &active {
        Active::Backup(w) => {
            Arc::clone(w)
                .serve_stream(stream, size, &mut send, &mut recv)
                .await
        }
        Active::Restore(w) => Arc::clone(w).serve_stream(stream, streams, &mut send).await,
        Active::Hash(_) => Err(StreamError::Protocol(format!(
            "job {job} is a hash job: it has no data stream"
        ))),
    };
    if let Err(e) = result {
        let reason = e.to_string();
        let _ = wire::send(
            &mut send,
            &DataDown::Error {
                reason: reason.clone(),
            },
        )
        .await;
        wire::finish(&mut send).await;
        port.fail(job, &reason);
        return Err(e.during(format!("job {job}")).into());
    }
    wire::finish(&mut send).await;
    wire::drain(&mut recv).await;
    Ok(())
}
