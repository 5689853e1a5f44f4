//! The A3's half of a backup: send the plan, answer hash batches from the store, store the
//! needed chunks (the store re-hashes them), and commit only a complete version. The block
//! list is built in a scratch file ([`DiskSpool`]): memory per job stays bounded whatever
//! the disk's size.

use std::sync::{Arc, Mutex};

use a3_shared::proto::{
    Assembler, CbtBitmap, DataDown, DataUp, Geometry, MAX_DISK_SIZE, MAX_FRAME_LEN, WireId,
};

use tokio::task::JoinSet;

use super::StreamError;
use super::storage::{BackupSession, StorageError};
use super::wire;
use crate::store::DiskSpool;

/// Chunk inserts one data stream keeps in flight. Each insert ends in an fsync of the file
/// and of its directory (a few milliseconds on a virtual disk); awaiting them one by one
/// made a CBT incremental of ~300 chunks take 1.6 s, almost all of it waiting.
const INSERTS_IN_FLIGHT: usize = 16;

/// A stored disk's geometry and block list, for the VM backup's commit.
pub type DiskList = (Geometry, DiskSpool);

/// Where the block list of a disk of a VM backup goes, instead of a commit of its own: the
/// VM backup commits one version with all of its disks.
pub type Handoff = tokio::sync::oneshot::Sender<Result<DiskList, super::DispatchError>>;

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
    /// The base's geometry, for an incremental (with `cbt`).
    base: Option<Geometry>,
    cbt: Option<CbtBitmap>,
    /// The block list to build into (holding the base's, for an incremental), until the
    /// assembler takes it.
    spool: Mutex<Option<DiskSpool>>,
    /// Created when the first data stream announces the disk size.
    assembler: Mutex<Option<Assembler<DiskSpool>>>,
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
        base: Option<Geometry>,
        cbt: Option<CbtBitmap>,
        spool: DiskSpool,
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
            spool: Mutex::new(Some(spool)),
            assembler: Mutex::new(None),
            session: Mutex::new(Some(Arc::new(session))),
            hands_off: handoff.is_some(),
            handoff: Mutex::new(handoff),
        }
    }

    fn with_assembler<T>(
        &self,
        f: impl FnOnce(&mut Assembler<DiskSpool>) -> T,
    ) -> Result<T, StreamError> {
        let mut guard = self.assembler.lock().unwrap_or_else(|p| p.into_inner());
        let a = guard.as_mut().ok_or_else(|| {
            StreamError::Protocol("no data stream announced the disk size".into())
        })?;
        Ok(f(a))
    }

    /// Hands a disk of a VM backup its outcome (the first one only).
    pub fn finish(&self, outcome: Result<DiskList, super::DispatchError>) {
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

    /// Serves one data stream until the agent's End; `Err` names what failed. Stream 0
    /// carries the plan down first.
    pub async fn serve_stream(
        self: Arc<Self>,
        stream: u32,
        size: u64,
        send: &mut wire::SendStream,
        recv: &mut wire::RecvStream,
    ) -> Result<(), StreamError> {
        self.check_size(size)?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.plan(size))
            .await
            .map_err(StorageError::from)??;
        let ctx = |e: wire::WireError| StreamError::Link(e.describe(&self.abd));
        if stream == 0 {
            let mut page = 0;
            while let Some(msg) = self.with_assembler(|a| a.plan().pages().nth(page))? {
                wire::send(send, &msg).await.map_err(ctx)?;
                page += 1;
            }
        }
        let session = self.session()?;
        let mut inserts: JoinSet<Result<WireId, StorageError>> = JoinSet::new();
        loop {
            match wire::recv::<DataUp>(recv, MAX_FRAME_LEN)
                .await
                .map_err(ctx)?
            {
                Some(DataUp::Hashes(batch)) => {
                    // The block list is a file: its reads and writes block.
                    let me = self.clone();
                    let pending = tokio::task::spawn_blocking(move || {
                        me.with_assembler(|a| a.record_batch(&batch))
                    })
                    .await
                    .map_err(StorageError::from)???;
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

    /// Makes the plan (and the assembler) from the first announced size; a later stream
    /// must announce the same. Blocking: the block list is resized.
    fn plan(&self, size: u64) -> Result<(), StreamError> {
        let mut guard = self.assembler.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(a) if a.size() != size => Err(StreamError::Protocol(format!(
                "data streams disagree on the disk size ({} vs {size})",
                a.size()
            ))),
            Some(_) => Ok(()),
            None => {
                let spool = self
                    .spool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .ok_or_else(|| self.ended())?;
                let a = Assembler::new(size, self.block_size, self.base, self.cbt.as_ref(), spool)
                    .map_err(|e| StreamError::from(e).during(format!("disk '{}'", self.disk)))?;
                *guard = Some(a);
                Ok(())
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
        let assembler = self
            .assembler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| {
                StreamError::Protocol("no data stream announced the disk size".into())
            })?;
        let (geometry, spool) = assembler
            .finish()
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
            self.finish(Ok((geometry, spool)));
            return Ok(format!(
                "disk '{}' stored, block list handed to the VM backup",
                self.disk
            ));
        }
        Ok(session.commit(self.disk.clone(), geometry, spool).await?)
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
            store.spool().unwrap(),
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
            store.spool().unwrap(),
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
                .serve_stream(0, announced, &mut send, &mut recv)
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
