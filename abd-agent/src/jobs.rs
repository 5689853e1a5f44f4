//! The jobs an agent runs for its A3: each in its own task, reporting progress and its end
//! on the control stream. A failing job ends only itself; losing the connection fails them
//! all (the A3 commits nothing it did not see finish).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use a3_shared::proto::{A3Msg, AgentMsg, Outcome, Progress};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::link::{Link, SendStream};
use crate::{backup, hash, restore, status, wire};

/// Live counters of one job, read by the progress reporter.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of the disk dealt with.
    pub done: AtomicU64,
    /// Bytes of the disk in all.
    pub total: AtomicU64,
    /// Bytes read from the device or written to the target.
    pub bytes_io: AtomicU64,
    /// All-zero blocks.
    pub zero_blocks: AtomicU64,
    /// Chunks sent or received.
    pub chunks: AtomicU64,
    /// Encoded chunk bytes sent or received.
    pub chunk_bytes: AtomicU64,
}

impl Counters {
    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn progress(&self, job: u64) -> Progress {
        Progress {
            job,
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            sent: self.chunk_bytes.load(Ordering::Relaxed),
        }
    }

    /// The final figures.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            bytes_io: self.bytes_io.load(Ordering::Relaxed),
            zero_blocks: self.zero_blocks.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            chunk_bytes: self.chunk_bytes.load(Ordering::Relaxed),
        }
    }
}

/// The running jobs of one connection.
pub struct Jobs {
    link: Link,
    ctl: mpsc::UnboundedSender<AgentMsg>,
    running: HashMap<u64, JoinHandle<()>>,
    writer: JoinHandle<()>,
}

impl Jobs {
    /// Starts the control-stream writer.
    pub fn new(link: Link, mut send: SendStream) -> Jobs {
        let (ctl, mut rx) = mpsc::unbounded_channel::<AgentMsg>();
        let writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if let Err(e) = wire::send(&mut send, &msg).await {
                    tracing::warn!("control stream: {e:#}");
                    break;
                }
            }
        });
        Jobs {
            link,
            ctl,
            running: HashMap::new(),
            writer,
        }
    }

    /// Acts on one control message from the A3.
    pub fn handle(&mut self, msg: A3Msg) {
        self.running.retain(|_, h| !h.is_finished());
        match msg {
            A3Msg::Backup(job) => {
                let id = job.job;
                tracing::info!(job = id, device = %job.device, disk = %job.disk, "backup starts");
                let what = format!("backup of {}", job.device);
                let link = self.link.clone();
                self.spawn(id, what, move |c| async move {
                    backup::run(link, job, c).await.map(|()| None)
                });
            }
            A3Msg::Restore(job) => {
                let id = job.job;
                tracing::info!(job = id, target = %job.target, "restore starts");
                let what = format!("restore to {}", job.target);
                let link = self.link.clone();
                self.spawn(id, what, move |c| async move {
                    restore::run(link, job, c).await.map(|()| None)
                });
            }
            A3Msg::Hash(job) => {
                let id = job.job;
                tracing::info!(job = id, device = %job.device, "hash starts");
                let what = format!("hash of {}", job.device);
                self.spawn(id, what, move |c| async move {
                    hash::run(job, c).await.map(Some)
                });
            }
            A3Msg::Cancel { job, reason } => {
                if let Some(h) = self.running.remove(&job) {
                    h.abort();
                    let _ = self.ctl.send(AgentMsg::Failed {
                        job,
                        reason: format!("cancelled by the A3: {reason}"),
                    });
                }
            }
            other => tracing::warn!("unexpected control message {other:?}"),
        }
    }

    /// Runs `work` as job `job` (`what`, for `status`), reporting progress; it ends with
    /// the message `work` returns, or [`AgentMsg::Done`] with the counters.
    fn spawn<F, Fut>(&mut self, job: u64, what: String, work: F)
    where
        F: FnOnce(Arc<Counters>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Option<AgentMsg>>> + Send + 'static,
    {
        let ctl = self.ctl.clone();
        let counters = Arc::new(Counters::default());
        let mark = status::JobMark::new(job, what);
        let handle = tokio::spawn(async move {
            // Listed in `status` until the task ends or is aborted.
            let _mark = mark;
            let reporter = {
                let ctl = ctl.clone();
                let counters = counters.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(250));
                    loop {
                        tick.tick().await;
                        if ctl
                            .send(AgentMsg::Progress(counters.progress(job)))
                            .is_err()
                        {
                            break;
                        }
                    }
                })
            };
            let result = work(counters.clone()).await;
            reporter.abort();
            let msg = match result {
                Ok(ended) => {
                    tracing::info!(job, "job done");
                    ended.unwrap_or_else(|| AgentMsg::Done {
                        job,
                        outcome: counters.outcome(),
                    })
                }
                Err(e) => {
                    tracing::warn!(job, "job failed: {e:#}");
                    AgentMsg::Failed {
                        job,
                        reason: format!("{e:#}"),
                    }
                }
            };
            let _ = ctl.send(msg);
        });
        self.running.insert(job, handle);
    }

    /// Stops every job (the connection is gone).
    pub fn abort_all(&mut self, why: &str) {
        for (job, h) in self.running.drain() {
            if !h.is_finished() {
                tracing::warn!(job, "job aborted: {why}");
                h.abort();
            }
        }
        self.writer.abort();
    }
}
