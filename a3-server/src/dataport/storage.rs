//! The data port's calls into the store ([`crate::store`]), each on the blocking pool, in
//! the wire's terms (`proto::Geometry`, raw ids).

use std::sync::Arc;

use a3_shared::chunk::BlockId;
use a3_shared::proto::{CbtBitmap, Geometry, WireId};

use crate::store::manifest::ManifestReader;
use crate::store::{BaseSpool, DiskSpool, ObjectRead, Store, StoreError, VersionId};

/// A store failure, or a blocking task that died.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store said no.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest went bad while it was streamed.
    #[error(transparent)]
    Manifest(#[from] crate::store::ManifestError),
    /// The request names something that does not parse.
    #[error("{0}")]
    BadRequest(String),
    /// A blocking task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl StorageError {
    /// Whether it means "no such version or disk".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::Store(e) if e.is_not_found())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StorageError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// The store, as the data port uses it.
#[derive(Clone)]
pub struct StoreHandle {
    store: Store,
}

impl StoreHandle {
    /// Wraps the opened store.
    pub fn new(store: Store) -> StoreHandle {
        StoreHandle { store }
    }

    /// The last committed version of `disk` (the subject and disk name of `disk backup`):
    /// the base of a CBT incremental.
    pub async fn last_version(&self, disk: &str) -> Result<Option<VersionId>, StorageError> {
        let store = self.store.clone();
        let disk = disk.to_owned();
        blocking(move || Ok(store.latest_version(&disk)?.map(|v| v.id))).await
    }

    /// Starts a backup of `disk`; dropping the session aborts it.
    pub async fn begin_backup(&self, disk: &str) -> Result<BackupSession, StorageError> {
        let store = self.store.clone();
        let disk = disk.to_owned();
        let session = blocking(move || store.begin_backup(&disk)).await?;
        Ok(BackupSession(Arc::new(session)))
    }

    /// The disk to restore: `version`'s disk `disk`, or its only disk, with its geometry.
    /// Its manifest is checked whole first, so that a damaged one fails before the agent
    /// touches its target.
    pub async fn restore_disk(
        &self,
        version: &str,
        disk: Option<&str>,
    ) -> Result<(VersionId, String, Geometry), StorageError> {
        let id: VersionId = version.parse().map_err(StorageError::BadRequest)?;
        let store = self.store.clone();
        let disk = disk.map(str::to_owned);
        blocking(move || {
            let info = store.version(id)?;
            let name = match disk {
                Some(d) => d,
                None if info.disks.len() == 1 => info.disks[0].name.clone(),
                None => {
                    return Err(StoreError::NoSuchDisk {
                        version: id,
                        disk: "(none given: pass --disk)".into(),
                        disks: info.disks.iter().map(|d| d.name.clone()).collect(),
                    });
                }
            };
            let geometry = store.open_manifest(id, &name)?.geometry();
            Ok((id, name, geometry))
        })
        .await
    }

    /// A disk's manifest, checked whole and ready to stream (blocking reads).
    pub async fn open_manifest(
        &self,
        version: VersionId,
        disk: &str,
    ) -> Result<ManifestReader<Box<dyn ObjectRead>>, StorageError> {
        let store = self.store.clone();
        let disk = disk.to_owned();
        blocking(move || store.open_manifest(version, &disk)).await
    }

    /// The encoded chunk `id`, verified against its id (a bad one is quarantined).
    pub async fn read_chunk(&self, id: WireId) -> Result<Vec<u8>, StorageError> {
        let store = self.store.clone();
        blocking(move || store.read_chunk(&BlockId(id))).await
    }
}

/// A backup being written. Dropping it (without [`BackupSession::commit`]) aborts it.
pub struct BackupSession(Arc<crate::store::BackupSession>);

impl BackupSession {
    /// A session shared with its owner, a VM backup whose disks all go through it.
    pub fn shared(session: Arc<crate::store::BackupSession>) -> BackupSession {
        BackupSession(session)
    }

    /// Renews the writer lease: the job is making progress (see
    /// [`crate::store::BackupSession::renew`]). Takes a lock, does no I/O.
    pub fn renew(&self) -> Result<(), StorageError> {
        Ok(self.0.renew()?)
    }

    /// Which of `ids` the store has (touching them for GC).
    pub async fn has_chunks(&self, ids: Vec<WireId>) -> Result<Vec<bool>, StorageError> {
        let s = self.0.clone();
        blocking(move || {
            let ids: Vec<BlockId> = ids.into_iter().map(BlockId).collect();
            s.has_chunks(&ids)
        })
        .await
    }

    /// Stores a chunk durably; the store re-hashes it and refuses a mismatch.
    pub async fn insert_chunk(&self, id: WireId, encoded: Vec<u8>) -> Result<(), StorageError> {
        let s = self.0.clone();
        blocking(move || s.insert_chunk(&BlockId(id), &encoded).map(drop)).await
    }

    /// A new, empty block list.
    pub async fn spool(&self) -> Result<DiskSpool, StorageError> {
        let s = self.0.clone();
        blocking(move || s.spool()).await
    }

    /// The block list of an incremental against `version`'s disk `disk` (see
    /// [`Store::base_spool`]); marks lost base blocks changed in `cbt`.
    pub async fn base_spool(
        &self,
        version: VersionId,
        disk: &str,
        mut cbt: CbtBitmap,
    ) -> Result<(BaseSpool, CbtBitmap), StorageError> {
        let s = self.0.clone();
        let disk = disk.to_owned();
        blocking(move || {
            let base = s.base_spool(version, &disk, &mut cbt)?;
            Ok((base, cbt))
        })
        .await
    }

    /// Adds the disk and commits the version; returns its id.
    pub async fn commit(
        self,
        disk: String,
        geometry: Geometry,
        spool: DiskSpool,
    ) -> Result<String, StorageError> {
        let session = Arc::try_unwrap(self.0).map_err(|_| {
            StorageError::BadRequest("a store call of this backup is still running".into())
        })?;
        blocking(move || {
            session.add_disk(&disk, crate::store::DiskBlocks::Spooled(geometry, spool))?;
            let id = session.commit(serde_json::json!({ "source": "disk backup" }))?;
            Ok(id.to_string())
        })
        .await
    }
}
