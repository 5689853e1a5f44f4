//! The A3's half of a backup: answer hash batches from the store, store the needed chunks
//! (the store re-hashes them), and commit only a complete version.

use std::sync::{Arc, Mutex};

use a3_shared::proto::{
    Assembler, CbtBitmap, DataDown, DataUp, MAX_DISK_SIZE, MAX_FRAME_LEN, Manifest, WireId,
};

use tokio::task::JoinSet;

use super::StreamError;
use super::storage::{BackupSession, StorageError};
use super::wire;

/// Chunk inserts one data stream keeps in flight. Each insert ends in an fsync of the file
/// and of its directory (a few milliseconds on a virtual disk); awaiting them one by one
/// made a CBT incremental of ~300 chunks take 1.6 s, almost all of it waiting.
const INSERTS_IN_FLIGHT: usize = 16;

/// Where the manifest of a disk of a VM backup goes, instead of a commit of its own: the VM
/// backup commits one version with all of its disks.
pub type Handoff = tokio::sync::oneshot::Sender<Result<Manifest, super::DispatchError>>;

/// One running backup job.
pub struct BackupWork {
    /// The job.
    pub job: u64,
    /// The ABD running it.
    pub abd: String,
    /// The disk's name.
    pub disk: String,
    /// The size the disk has (a VDI's `virtual_size`), when the A3 knows it: the agent's
    /// device must have exactly this size.
    expected_size: Option<u64>,
    block_size: u32,
    base: Option<Manifest>,
    cbt: Option<CbtBitmap>,
    /// Created when the first data stream announces the disk size.
    assembler: Mutex<Option<Assembler>>,
    /// Taken by the commit; dropping it aborts the backup in the store.
    session: Mutex<Option<Arc<BackupSession>>>,
    /// For a disk of a VM backup: where the outcome goes instead of a commit.
    handoff: Mutex<Option<Handoff>>,
    /// Whether this is a disk of a VM backup (the handoff may be spent already).
    hands_off: bool,
}

impl BackupWork {
    /// A job about to be assigned.
    #[allow(clippy::too_many_arguments)] // one field each; a builder would only rename them
    pub fn new(
        job: u64,
        abd: String,
        disk: String,
        expected_size: Option<u64>,
        block_size: u32,
        base: Option<Manifest>,
        cbt: Option<CbtBitmap>,
        session: BackupSession,
        handoff: Option<Handoff>,
    ) -> BackupWork {
        BackupWork {
            job,
            abd,
            disk,
            expected_size,
            block_size,
            base,
            cbt,
            assembler: Mutex::new(None),
            session: Mutex::new(Some(Arc::new(session))),
            hands_off: handoff.is_some(),
            handoff: Mutex::new(handoff),
        }
    }

    fn with_assembler<T>(&self, f: impl FnOnce(&mut Assembler) -> T) -> Result<T, StreamError> {
        let mut guard = self.assembler.lock().unwrap_or_else(|p| p.into_inner());
        let a = guard.as_mut().ok_or_else(|| {
            StreamError::Protocol("no data stream announced the disk size".into())
        })?;
        Ok(f(a))
    }

    /// Hands a disk of a VM backup its outcome (the first one only).
    pub fn finish(&self, outcome: Result<Manifest, super::DispatchError>) {
        let tx = self
            .handoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(outcome);
        }
    }

    fn session(&self) -> Result<Arc<BackupSession>, StreamError> {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| self.ended())
    }

    /// The agent moved on: keeps the store's writer lease, which has no call of its own
    /// while the agent reads zeros or unchanged blocks. Fails once the lease is lost; a
    /// job already committed or aborted has nothing to keep.
    pub fn renew(&self) -> Result<(), StreamError> {
        let session = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match session {
            Some(s) => Ok(s.renew()?),
            None => Ok(()),
        }
    }

    /// Refuses an announced disk size before the plan is made from it: one past any real
    /// disk (a hostile or broken agent), or one other than the disk's (the agent opened
    /// another device, whose bytes would restore as this disk's).
    fn check_size(&self, size: u64) -> Result<(), StreamError> {
        if size > MAX_DISK_SIZE {
            return Err(StreamError::Protocol(format!(
                "ABD '{}' announced a {size}-byte disk for {}, larger than any virtual disk \
                 ({MAX_DISK_SIZE} bytes)",
                self.abd, self.disk
            )));
        }
        match self.expected_size {
            Some(want) if want != size => Err(StreamError::WrongDevice {
                disk: self.disk.clone(),
                found: size,
                want,
            }),
            _ => Ok(()),
        }
    }

    /// Serves one data stream until the agent's End; `Err` names what failed.
    pub async fn serve_stream(
        self: Arc<Self>,
        size: u64,
        send: &mut wire::SendStream,
        recv: &mut wire::RecvStream,
    ) -> Result<(), StreamError> {
        self.check_size(size)?;
        {
            let mut guard = self.assembler.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                None => {
                    *guard = Some(Assembler::new(
                        size,
                        self.block_size,
                        self.base.clone(),
                        self.cbt.as_ref(),
                    ))
                }
                Some(a) if a.size() != size => {
                    return Err(StreamError::Protocol(format!(
                        "data streams disagree on the disk size ({} vs {size})",
                        a.size()
                    )));
                }
                Some(_) => {}
            }
        }
        let session = self.session()?;
        let mut inserts: JoinSet<Result<WireId, StorageError>> = JoinSet::new();
        let ctx = |e: wire::WireError| StreamError::Link(e.describe(&self.abd));
        loop {
            match wire::recv::<DataUp>(recv, MAX_FRAME_LEN)
                .await
                .map_err(ctx)?
            {
                Some(DataUp::Hashes(batch)) => {
                    let pending = self.with_assembler(|a| a.record_batch(&batch))??;
                    let ids: Vec<WireId> = pending.ids().copied().collect();
                    let present = if ids.is_empty() {
                        Vec::new()
                    } else {
                        session.has_chunks(ids).await?
                    };
                    let need = self.with_assembler(|a| a.resolve(pending, &present))?;
                    wire::send(send, &need).await.map_err(ctx)?;
                }
                Some(DataUp::Chunk { id, data }) => {
                    if !self.with_assembler(|a| a.is_outstanding(&id))? {
                        return Err(StreamError::Protocol(format!(
                            "chunk {} was not requested",
                            a3_shared::proto::assemble::hex(&id)
                        )));
                    }
                    while inserts.len() >= INSERTS_IN_FLIGHT {
                        self.inserted(inserts.join_next().await)?;
                    }
                    let s = session.clone();
                    inserts.spawn(async move { s.insert_chunk(id, data).await.map(|()| id) });
                    while let Some(done) = inserts.try_join_next() {
                        self.inserted(Some(done))?;
                    }
                }
                Some(DataUp::End) => {
                    // Everything received on this stream is durable before End goes back.
                    while let Some(done) = inserts.join_next().await {
                        self.inserted(Some(done))?;
                    }
                    // Release the session before saying End: the agent reports Done on
                    // End, and the commit needs the session to itself.
                    drop(session);
                    wire::send(send, &DataDown::End).await.map_err(ctx)?;
                    return Ok(());
                }
                Some(DataUp::Open { .. }) => {
                    return Err(StreamError::Protocol("Open sent twice on a stream".into()));
                }
                None => {
                    return Err(StreamError::Link(format!(
                        "ABD '{}' closed a data stream early",
                        self.abd
                    )));
                }
            }
        }
    }

    /// Accounts for a finished insert.
    fn inserted(
        &self,
        done: Option<Result<Result<WireId, StorageError>, tokio::task::JoinError>>,
    ) -> Result<(), StreamError> {
        let Some(done) = done else { return Ok(()) };
        let id = done??;
        Ok(self.with_assembler(|a| a.chunk_received(&id))??)
    }

    /// The session is gone: the job was committed or aborted.
    fn ended(&self) -> StreamError {
        StreamError::Protocol(format!("job {}: already committed or aborted", self.job))
    }

    /// The agent is done: commit if, and only if, the version is complete. Returns the
    /// version id.
    pub async fn commit(&self) -> Result<String, StreamError> {
        let manifest = self
            .with_assembler(|a| a.finish())?
            .map_err(|e| StreamError::from(e).during(format!("disk '{}'", self.disk)))?;
        let session = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| self.ended())?;
        let session = Arc::try_unwrap(session).map_err(|_| {
            StreamError::Protocol(format!(
                "job {}: data streams still running at commit",
                self.job
            ))
        })?;
        if self.hands_off {
            // Every chunk is durable (each stream waited for its inserts before End); the
            // VM's commit checks them all again under the same lease.
            drop(session);
            self.finish(Ok(manifest));
            return Ok(format!(
                "disk '{}' stored, manifest handed to the VM backup",
                self.disk
            ));
        }
        Ok(session.commit(self.disk.clone(), manifest).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::store::Store;
    use a3_shared::proto::DEFAULT_BLOCK_SIZE;

    /// A job of `disk`, which the A3 knows to have `expected` bytes (or not).
    fn work(dir: &std::path::Path, expected: Option<u64>) -> Arc<BackupWork> {
        let store = Store::open(dir, Catalog::in_memory().unwrap()).unwrap();
        let session = Arc::new(store.begin_backup("vm").unwrap());
        Arc::new(BackupWork::new(
            1,
            "abd-1".into(),
            "disk".into(),
            expected,
            DEFAULT_BLOCK_SIZE,
            None,
            None,
            BackupSession::shared(session),
            None,
        ))
    }

    /// A job whose agent keeps moving keeps its lease past the idle limit, GC or not; once
    /// the job is committed or aborted there is nothing to renew.
    #[test]
    fn progress_keeps_the_lease_of_a_moving_job() {
        use crate::store::{FsBackend, StoreOptions, SyncMode};
        use crate::util::clock::TestClock;
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let backend = FsBackend::open_with_clock(dir.path(), SyncMode::Off, clock.clone());
        let limit = Duration::from_secs(600);
        let store = Store::with_backend(
            Box::new(backend.unwrap()),
            Catalog::in_memory().unwrap(),
            StoreOptions {
                lease_idle_limit: limit,
                ..StoreOptions::default()
            },
        );
        let session = Arc::new(store.begin_backup("vm").unwrap());
        let w = BackupWork::new(
            1,
            "abd-1".into(),
            "disk".into(),
            None,
            DEFAULT_BLOCK_SIZE,
            None,
            None,
            BackupSession::shared(session.clone()),
            None,
        );
        for _ in 0..5 {
            clock.advance(limit / 2);
            w.renew().unwrap();
            assert!(store.gc().unwrap().leases_revoked.is_empty());
        }
        clock.advance(limit);
        assert_eq!(store.gc().unwrap().leases_revoked, ["vm"]);
        assert!(
            w.renew()
                .unwrap_err()
                .to_string()
                .contains("lease was lost")
        );
        w.session.lock().unwrap().take();
        w.renew().unwrap();
    }

    #[tokio::test]
    async fn announced_sizes_are_checked_before_anything_is_planned() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (None, 1 << 63, "larger than any virtual disk"),
            (Some(4 << 20), u64::MAX, "larger than any virtual disk"),
            (
                Some(4 << 20),
                8 << 20,
                "found 8388608 bytes on its device, but the disk has 4194304",
            ),
        ];
        for (i, (expected, announced, says)) in cases.into_iter().enumerate() {
            let w = work(&dir.path().join(i.to_string()), expected);
            let (ours, _theirs) = tokio::io::duplex(64);
            let (r, w2) = tokio::io::split(ours);
            let mut send: wire::SendStream = Box::new(w2);
            let mut recv: wire::RecvStream = Box::new(r);
            let err = w
                .clone()
                .serve_stream(announced, &mut send, &mut recv)
                .await
                .unwrap_err();
            assert!(err.to_string().contains(says), "{announced}: {err}");
            assert!(
                w.assembler.lock().unwrap().is_none(),
                "nothing is planned from a refused size"
            );
        }
    }
}
