//! One agent connection: either an enrollment (no client certificate: one exchange, then
//! close) or a session: the control stream, with data streams opened per job.

use std::sync::Arc;

use a3_shared::proto::{A3Msg, AgentMsg, DataDown, DataUp, PROTOCOL_VERSION};
use anyhow::{Context, bail};
use tokio::sync::mpsc;

use super::hash::DeviceHash;
use super::{Active, AgentLink, DataPort, JobState, wire};

/// Frames on the control stream from an agent are small (no manifests go up).
const MAX_CONTROL_UP: usize = 64 << 10;
/// How long a new connection may take to send its first message.
const FIRST_MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Handles one incoming connection to its end.
pub async fn handle(
    port: DataPort,
    incoming: quinn::Incoming,
    conn_id: usize,
) -> anyhow::Result<()> {
    let remote = incoming.remote_address();
    let conn = incoming.await.context("handshake")?;
    let abd = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().and_then(|c| port.pki().accepted().id_of(c)));
    // A peer must say who it is promptly: a silent connection would hold a slot.
    let opening = async {
        let (send, mut recv) = conn.accept_bi().await.context("control stream")?;
        let first = wire::recv::<AgentMsg>(&mut recv, MAX_CONTROL_UP).await?;
        anyhow::Ok((send, recv, first))
    };
    let (mut send, recv, first) = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, opening)
        .await
        .map_err(|_| {
            anyhow::anyhow!("{remote}: said nothing within {FIRST_MESSAGE_TIMEOUT:?}")
        })??;
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
            let _ = send.finish();
            // Let the agent read the answer and close.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.closed()).await;
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
            let _ = send.finish();
            conn.close(1u32.into(), b"not enrolled");
            bail!("{remote}: refused: not enrolled");
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
                let _ = send.finish();
                conn.close(1u32.into(), b"refused");
                bail!("{remote}: refused: {reason}");
            }
            wire::send(
                &mut send,
                &A3Msg::Welcome {
                    version: PROTOCOL_VERSION,
                },
            )
            .await?;
            tracing::info!(%remote, abd = %id, %agent, "ABD connected");
            session(port, conn, conn_id, id, send, recv).await
        }
        (Some(id), other) => {
            conn.close(1u32.into(), b"protocol");
            bail!("ABD '{id}' at {remote}: expected Hello, got {other:?}");
        }
    }
}

async fn session(
    port: DataPort,
    conn: quinn::Connection,
    conn_id: usize,
    abd: String,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let (ctl, mut ctl_rx) = mpsc::unbounded_channel::<A3Msg>();
    let link = AgentLink {
        conn_id,
        ctl,
        remote: conn.remote_address(),
    };
    // A reconnecting agent replaces its previous connection; that one's jobs fail.
    if let Some(old) = port.lock_agents().insert(abd.clone(), link) {
        let _ = old.ctl.send(A3Msg::Refused {
            reason: "replaced by a newer connection of the same ABD".into(),
        });
    }
    let writer_conn = conn.clone();
    let writer = tokio::spawn(async move {
        while let Some(msg) = ctl_rx.recv().await {
            let refused = matches!(msg, A3Msg::Refused { .. });
            if wire::send(&mut send, &msg).await.is_err() {
                break;
            }
            if refused {
                let _ = send.finish();
                writer_conn.close(1u32.into(), b"refused");
                break;
            }
        }
    });
    let shutdown = port.inner.shutdown.clone();
    let why: String = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                conn.close(2u32.into(), b"A3 shutting down");
                break "the A3 is shutting down (restart it, then run the job again)".into();
            }
            msg = wire::recv::<AgentMsg>(&mut recv, MAX_CONTROL_UP) => match msg {
                Ok(Some(m)) => control(&port, &abd, m),
                Ok(None) => break format!("ABD '{abd}' closed its control stream"),
                Err(e) => break format!("ABD '{abd}' disconnected ({e})"),
            },
            stream = conn.accept_bi() => match stream {
                Ok((s, r)) => {
                    let port = port.clone();
                    let abd = abd.clone();
                    port.inner.tasks.clone().spawn(async move {
                        if let Err(e) = data_stream(&port, &abd, s, r).await {
                            tracing::warn!(abd = %abd, "data stream: {e:#}");
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
    bail!("{why}")
}

/// A control message from the agent.
fn control(port: &DataPort, abd: &str, msg: AgentMsg) {
    match msg {
        AgentMsg::Progress(p) => port.jobs().progress(abd, &p),
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
                    Active::Hash(_) => Err(format!(
                        "ABD '{}' answered a hash job without its digest",
                        active.abd()
                    )),
                };
                port.lock_active().remove(&job);
                match result {
                    Ok(version) => {
                        tracing::info!(job, %version, "job succeeded");
                        port.jobs().set(job, JobState::Succeeded { version });
                    }
                    Err(reason) => port.fail(job, &reason),
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
async fn data_stream(
    port: &DataPort,
    abd: &str,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let Some(DataUp::Open {
        job,
        stream,
        streams,
        size,
    }) = wire::recv::<DataUp>(&mut recv, 1024).await?
    else {
        bail!("a data stream must start with Open");
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
        bail!("{reason}");
    };
    let result = match &active {
        Active::Backup(w) => Arc::clone(w).serve_stream(size, &mut send, &mut recv).await,
        Active::Restore(w) => Arc::clone(w).serve_stream(stream, streams, &mut send).await,
        Active::Hash(_) => Err(format!("job {job} is a hash job: it has no data stream")),
    };
    if let Err(reason) = result {
        let _ = wire::send(
            &mut send,
            &DataDown::Error {
                reason: reason.clone(),
            },
        )
        .await;
        let _ = send.finish();
        port.fail(job, &reason);
        bail!("job {job}: {reason}");
    }
    let _ = send.finish();
    Ok(())
}
