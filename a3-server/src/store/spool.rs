//! A backup's block list while it is built, and the streamed ways in and out of manifests.
//!
//! The list is a scratch file of fixed-width slots (`a3_shared::proto::slots`): a 16 TiB
//! disk's 64 Mi blocks cost the A3 2.1 GB of store disk, not memory. For an incremental it
//! starts as the base's manifest, streamed ([`Store::base_spool`]), so that blocks the plan
//! does not read already hold the base's ids; the commit streams it into the manifest file
//! (`session`). Restores read manifests as a stream too ([`Store::open_manifest`]).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use a3_shared::chunk::BlockId;
use a3_shared::proto::slots::{SLOT_LEN, Slots, decode_slot, encode_slot};
use a3_shared::proto::{CbtBitmap, Geometry, IdCache, MAX_BATCH_ENTRIES, WireId};

use super::backend::ObjectRead;
use super::manifest::{DiskManifest, ManifestReader};
use super::{BackupSession, Space, Store, StoreError, VersionId};

/// Slots read or written per I/O.
const SLOTS_PER_IO: usize = (1 << 20) / SLOT_LEN;

/// A block list in a scratch file. `Send + Sync`; reads and writes are positioned.
#[derive(Debug)]
pub struct DiskSpool {
    file: File,
    len: u64,
}

impl Slots for DiskSpool {
    fn len(&self) -> u64 {
        self.len
    }

    fn resize(&mut self, n: u64) -> io::Result<()> {
        // Growing leaves a hole of zeros: zero blocks.
        self.file.set_len(n * SLOT_LEN as u64)?;
        self.len = n;
        Ok(())
    }

    fn read(&mut self, first: u64, out: &mut [Option<WireId>]) -> io::Result<()> {
        self.read_at(first, out)
    }

    fn write(&mut self, first: u64, slots: &[Option<WireId>]) -> io::Result<()> {
        self.check(first, slots.len())?;
        let mut buf = vec![0u8; slots.len() * SLOT_LEN];
        for (slot, out) in slots.iter().zip(buf.chunks_exact_mut(SLOT_LEN)) {
            encode_slot(slot, out.try_into().expect("a slot"));
        }
        self.file.write_all_at(&buf, first * SLOT_LEN as u64)
    }
}

impl DiskSpool {
    fn check(&self, first: u64, n: usize) -> io::Result<()> {
        if first.checked_add(n as u64).is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("slots {first}..+{n} past the list's {}", self.len),
            ));
        }
        Ok(())
    }

    fn read_at(&self, first: u64, out: &mut [Option<WireId>]) -> io::Result<()> {
        self.check(first, out.len())?;
        let mut buf = vec![0u8; out.len() * SLOT_LEN];
        self.file.read_exact_at(&mut buf, first * SLOT_LEN as u64)?;
        for (slot, bytes) in out.iter_mut().zip(buf.chunks_exact(SLOT_LEN)) {
            *slot = decode_slot(bytes.try_into().expect("a slot"))?;
        }
        Ok(())
    }

    /// The entries in order, read a megabyte at a time.
    pub fn entries(&self) -> impl Iterator<Item = io::Result<(u64, Option<BlockId>)>> + '_ {
        let mut buf = vec![None; SLOTS_PER_IO];
        let (mut first, mut at, mut filled) = (0u64, 0usize, 0usize);
        std::iter::from_fn(move || {
            if at == filled {
                first += filled as u64;
                let n = (self.len - first).min(SLOTS_PER_IO as u64) as usize;
                if n == 0 {
                    return None;
                }
                if let Err(e) = self.read_at(first, &mut buf[..n]) {
                    at = filled; // stays at the error
                    return Some(Err(e));
                }
                (at, filled) = (0, n);
            }
            let entry = (first + at as u64, buf[at].map(BlockId));
            at += 1;
            Some(Ok(entry))
        })
    }
}

/// A disk's block list handed to a commit: whole in memory (small uses), or spooled.
#[derive(Debug)]
pub enum DiskBlocks {
    /// In memory.
    Listed(DiskManifest),
    /// In a scratch file.
    Spooled(Geometry, DiskSpool),
}

impl From<DiskManifest> for DiskBlocks {
    fn from(m: DiskManifest) -> DiskBlocks {
        DiskBlocks::Listed(m)
    }
}

impl DiskBlocks {
    /// The disk's size and block size.
    pub fn geometry(&self) -> Geometry {
        match self {
            DiskBlocks::Listed(m) => Geometry {
                size: m.size,
                block_size: m.block_size,
            },
            DiskBlocks::Spooled(g, _) => *g,
        }
    }

    /// How many blocks are listed.
    pub fn len(&self) -> u64 {
        match self {
            DiskBlocks::Listed(m) => m.blocks.len() as u64,
            DiskBlocks::Spooled(_, s) => s.len(),
        }
    }

    /// Whether no block is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries in order.
    pub fn entries(
        &self,
    ) -> Box<dyn Iterator<Item = io::Result<(u64, Option<BlockId>)>> + Send + '_> {
        match self {
            DiskBlocks::Listed(m) => {
                Box::new(m.blocks.iter().enumerate().map(|(i, b)| Ok((i as u64, *b))))
            }
            DiskBlocks::Spooled(_, s) => Box::new(s.entries()),
        }
    }
}

/// The start of an incremental's block list.
#[derive(Debug)]
pub struct BaseSpool {
    /// The base's block list, lost blocks cleared.
    pub spool: DiskSpool,
    /// The base's size and block size.
    pub geometry: Geometry,
    /// Base blocks whose chunk the store no longer has (quarantined as bad): cleared from
    /// the list and marked changed in the CBT bitmap, so that they are read and sent again.
    pub lost: u64,
}

impl Store {
    /// An empty block list, in a scratch file on the store's disk.
    pub fn spool(&self) -> Result<DiskSpool, StoreError> {
        let file = self
            .inner
            .backend
            .scratch()
            .map_err(|e| self.io(|| "creating a block list scratch file".into(), e))?;
        Ok(DiskSpool { file, len: 0 })
    }

    /// The manifest of `version`'s disk `disk`, checked whole (in bounded memory) and
    /// ready to stream.
    pub fn open_manifest(
        &self,
        version: VersionId,
        disk: &str,
    ) -> Result<ManifestReader<Box<dyn ObjectRead>>, StoreError> {
        let digest = self.manifest_digest(version, disk)?;
        let bad = |reason: String| StoreError::BadManifest {
            store: self.location().to_owned(),
            version,
            disk: disk.to_owned(),
            digest: digest.clone(),
            reason,
        };
        let id: BlockId = digest.parse().map_err(|e| bad(format!("{e}")))?;
        let file = match self.inner.backend.open(Space::Manifests, &id) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(bad("missing from the store".into()));
            }
            Err(e) => return Err(bad(format!("unreadable: {e}"))),
        };
        ManifestReader::open(file, Some(&id)).map_err(|e| bad(e.to_string()))
    }
}

impl BackupSession {
    /// A new, empty block list for a disk of this backup.
    pub fn spool(&self) -> Result<DiskSpool, StoreError> {
        self.store.spool()
    }

    /// The block list an incremental against `version`'s disk `disk` starts from, streamed
    /// from its manifest. Every base chunk is checked present (and so touched: GC keeps it
    /// while the job runs); a lost one is cleared from the list and marked changed in
    /// `cbt`.
    pub fn base_spool(
        &self,
        version: VersionId,
        disk: &str,
        cbt: &mut CbtBitmap,
    ) -> Result<BaseSpool, StoreError> {
        let store = &self.store;
        let mut base = store.open_manifest(version, disk)?;
        let geometry = base.geometry();
        let mut spool = store.spool()?;
        let spool_io = |e: io::Error| store.io(|| format!("spooling the base of disk '{disk}'"), e);
        spool.resize(geometry.blocks()).map_err(spool_io)?;
        let (mut present, mut missing) = (IdCache::default(), IdCache::default());
        let mut lost = 0;
        let mut batch: Vec<Option<WireId>> = Vec::with_capacity(MAX_BATCH_ENTRIES);
        let mut first = 0;
        loop {
            batch.clear();
            while batch.len() < MAX_BATCH_ENTRIES {
                let entry = base.next_entry().map_err(|e| StoreError::BadManifest {
                    store: store.location().to_owned(),
                    version,
                    disk: disk.to_owned(),
                    digest: "(second read)".into(),
                    reason: e.to_string(),
                })?;
                let Some((_, block)) = entry else { break };
                batch.push(block.map(|id| id.0));
            }
            if batch.is_empty() {
                break;
            }
            // Each distinct id of the batch: remembered, or asked (and then remembered).
            let mut have: HashMap<WireId, bool> = HashMap::new();
            let mut ask = Vec::new();
            for id in batch.iter().flatten() {
                if have.contains_key(id) {
                    continue;
                }
                if present.contains(id) || missing.contains(id) {
                    have.insert(*id, present.contains(id));
                } else {
                    have.insert(*id, false);
                    ask.push(BlockId(*id));
                }
            }
            for (id, there) in ask.iter().zip(self.has_chunks(&ask)?) {
                have.insert(id.0, there);
                if there {
                    present.insert(id.0);
                } else {
                    missing.insert(id.0);
                }
            }
            for (k, slot) in batch.iter_mut().enumerate() {
                if let Some(id) = slot
                    && !have[id]
                {
                    cbt.mark_changed(geometry.block_range(first + k as u64));
                    *slot = None;
                    lost += 1;
                }
            }
            spool.write(first, &batch).map_err(spool_io)?;
            first += batch.len() as u64;
        }
        Ok(BaseSpool {
            spool,
            geometry,
            lost,
        })
    }
}
