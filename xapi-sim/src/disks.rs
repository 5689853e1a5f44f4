//! VDI content and changed block tracking.
//!
//! A VDI's bytes are either generated demo content ([`crate::demo`]) or a sparse file
//! `vdis/<uuid>.img` in the state directory. The first write to a demo disk writes its
//! demo data out to the file, so the file then holds the whole disk. Snapshots and
//! clones copy the file's data extents only (SEEK_DATA/SEEK_HOLE), or just the demo seed.
//!
//! CBT: every write bumps a store-wide sequence number, and a CBT-enabled live VDI
//! records, per 64 KiB block, the sequence number of the last write. A snapshot freezes a
//! copy of that map and the sequence number at which it was taken. The blocks changed
//! from snapshot A to VDI B are those B last wrote after A was taken, which is exactly
//! what `VDI.list_changed_blocks` returns, MSB first.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::demo::{self, DemoSeed};
use crate::model::storage::CBT_BLOCK_SIZE;

/// The CBT state of one VDI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cbt {
    /// Shared by a VDI and all its snapshots; changed blocks only exist within a chain.
    pub chain: String,
    /// For a snapshot, the sequence number when it was taken; `None` for a live VDI.
    pub frozen_at: Option<u64>,
    /// Block index → sequence number of its last write since CBT was enabled.
    pub last_write: BTreeMap<u64, u64>,
}

/// What the store knows about one VDI's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disk {
    /// Size in bytes.
    pub virtual_size: u64,
    /// Demo content, until the first write writes it out.
    pub demo: Option<DemoSeed>,
    /// True when `vdis/<uuid>.img` holds the content.
    pub materialized: bool,
    /// True after `VDI.data_destroy`: only CBT metadata is left.
    pub data_destroyed: bool,
    /// CBT state when enabled.
    pub cbt: Option<Cbt>,
}

/// Why a content operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No such VDI in the store.
    #[error("VDI {0} has no content in the simulator's store")]
    Unknown(String),
    /// The VDI is `cbt_metadata`.
    #[error("VDI {0} has no data: it was data-destroyed and holds only CBT metadata")]
    DataDestroyed(String),
    /// The range lies outside the disk.
    #[error("range {offset}+{len} is outside VDI {uuid} of {size} bytes")]
    OutOfRange {
        /// The VDI.
        uuid: String,
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// The disk size.
        size: u64,
    },
    /// CBT is not enabled on this VDI.
    #[error("VDI {0} has no CBT metadata")]
    NoCbt(String),
    /// The two VDIs are not in one CBT chain.
    #[error("VDIs {0} and {1} are not in the same CBT chain")]
    Unrelated(String, String),
    /// The content file could not be read or written.
    #[error("VDI {uuid} content file {path}: {source}")]
    Io {
        /// The VDI.
        uuid: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The content of every VDI.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    disks: HashMap<String, Disk>,
    write_seq: u64,
}

/// The persisted form of the store.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DiskStoreState {
    /// Disks by VDI uuid.
    pub disks: HashMap<String, Disk>,
    /// The CBT write sequence number.
    pub write_seq: u64,
}

impl DiskStore {
    /// A store keeping its files in `dir`.
    pub fn open(dir: &Path, state: DiskStoreState) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(DiskStore {
            dir: dir.to_owned(),
            disks: state.disks,
            write_seq: state.write_seq,
        })
    }

    /// The persisted form.
    pub fn state(&self) -> DiskStoreState {
        DiskStoreState {
            disks: self.disks.clone(),
            write_seq: self.write_seq,
        }
    }

    /// A disk's metadata.
    pub fn get(&self, uuid: &str) -> Option<&Disk> {
        self.disks.get(uuid)
    }

    fn disk(&self, uuid: &str) -> Result<&Disk, DiskError> {
        self.disks
            .get(uuid)
            .ok_or_else(|| DiskError::Unknown(uuid.to_owned()))
    }

    fn path(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{uuid}.img"))
    }

    fn io_err(&self, uuid: &str) -> impl Fn(io::Error) -> DiskError + '_ {
        let uuid = uuid.to_owned();
        move |source| DiskError::Io {
            path: self.path(&uuid),
            uuid: uuid.clone(),
            source,
        }
    }

    /// Registers a new disk: all zeros, or demo content.
    pub fn create(&mut self, uuid: &str, virtual_size: u64, demo: Option<DemoSeed>) {
        self.disks.insert(
            uuid.to_owned(),
            Disk {
                virtual_size,
                demo,
                materialized: false,
                data_destroyed: false,
                cbt: None,
            },
        );
    }

    /// Forgets a disk and deletes its file.
    pub fn remove(&mut self, uuid: &str) {
        if let Some(d) = self.disks.remove(uuid)
            && d.materialized
        {
            let _ = fs::remove_file(self.path(uuid));
        }
    }

    /// Copies `src`'s content to a new disk `dst`. A snapshot also takes a frozen copy
    /// of the CBT state; a clone starts without CBT.
    pub fn copy(&mut self, src: &str, dst: &str, snapshot: bool) -> Result<(), DiskError> {
        let s = self.disk(src)?.clone();
        if s.data_destroyed {
            return Err(DiskError::DataDestroyed(src.to_owned()));
        }
        if s.materialized {
            sparse_copy(&self.path(src), &self.path(dst), s.virtual_size)
                .map_err(self.io_err(dst))?;
        }
        let cbt = match (&s.cbt, snapshot) {
            (Some(c), true) => Some(Cbt {
                chain: c.chain.clone(),
                frozen_at: Some(self.write_seq),
                last_write: c.last_write.clone(),
            }),
            _ => None,
        };
        self.disks.insert(dst.to_owned(), Disk { cbt, ..s });
        Ok(())
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, uuid: &str, offset: u64, len: u64) -> Result<Vec<u8>, DiskError> {
        let d = self.disk(uuid)?;
        check_range(uuid, d, offset, len)?;
        let mut buf = vec![0u8; len as usize];
        if d.materialized {
            let f = File::open(self.path(uuid)).map_err(self.io_err(uuid))?;
            f.read_exact_at(&mut buf, offset)
                .map_err(self.io_err(uuid))?;
        } else if let Some(seed) = d.demo {
            demo::fill(seed, d.virtual_size, offset, &mut buf);
        }
        Ok(buf)
    }

    /// Writes `data` at `offset`, as a guest would, and records the blocks for CBT.
    pub fn write(&mut self, uuid: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let d = self.disk(uuid)?.clone();
        check_range(uuid, &d, offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        if !d.materialized {
            self.materialize(uuid, &d)?;
        }
        let f = OpenOptions::new()
            .write(true)
            .open(self.path(uuid))
            .map_err(self.io_err(uuid))?;
        f.write_all_at(data, offset).map_err(self.io_err(uuid))?;
        self.write_seq += 1;
        let seq = self.write_seq;
        let disk = self.disks.get_mut(uuid).expect("checked above");
        disk.materialized = true;
        disk.demo = None;
        if let Some(cbt) = disk.cbt.as_mut().filter(|c| c.frozen_at.is_none()) {
            let first = offset / CBT_BLOCK_SIZE;
            let last = (offset + data.len() as u64 - 1) / CBT_BLOCK_SIZE;
            for b in first..=last {
                cbt.last_write.insert(b, seq);
            }
        }
        Ok(())
    }

    fn materialize(&self, uuid: &str, d: &Disk) -> Result<(), DiskError> {
        let f = File::create(self.path(uuid)).map_err(self.io_err(uuid))?;
        f.set_len(d.virtual_size).map_err(self.io_err(uuid))?;
        if let Some(seed) = d.demo {
            for (start, end) in demo::data_extents(d.virtual_size) {
                let mut buf = vec![0u8; (end - start) as usize];
                demo::fill(seed, d.virtual_size, start, &mut buf);
                f.write_all_at(&buf, start).map_err(self.io_err(uuid))?;
            }
        }
        Ok(())
    }

    /// Bytes of the disk that hold data, as `physical_utilisation` reports.
    pub fn utilisation(&self, uuid: &str) -> u64 {
        let Some(d) = self.disks.get(uuid) else {
            return 0;
        };
        if d.materialized {
            fs::metadata(self.path(uuid)).map_or(0, |m| {
                use std::os::unix::fs::MetadataExt;
                (m.blocks() * 512).min(d.virtual_size)
            })
        } else if d.demo.is_some() {
            demo::data_extents(d.virtual_size)
                .iter()
                .map(|(s, e)| e - s)
                .sum()
        } else {
            0
        }
    }

    /// Starts tracking changed blocks (idempotent).
    pub fn enable_cbt(&mut self, uuid: &str) -> Result<(), DiskError> {
        let d = self
            .disks
            .get_mut(uuid)
            .ok_or_else(|| DiskError::Unknown(uuid.to_owned()))?;
        if d.cbt.is_none() {
            d.cbt = Some(Cbt {
                chain: uuid.to_owned(),
                frozen_at: None,
                last_write: BTreeMap::new(),
            });
        }
        Ok(())
    }

    /// Stops tracking and forgets the history.
    pub fn disable_cbt(&mut self, uuid: &str) {
        if let Some(d) = self.disks.get_mut(uuid) {
            d.cbt = None;
        }
    }

    /// Deletes the data and keeps the CBT history (`VDI.data_destroy`).
    pub fn data_destroy(&mut self, uuid: &str) -> Result<(), DiskError> {
        let path = self.path(uuid);
        let d = self
            .disks
            .get_mut(uuid)
            .ok_or_else(|| DiskError::Unknown(uuid.to_owned()))?;
        if d.cbt.is_none() {
            return Err(DiskError::NoCbt(uuid.to_owned()));
        }
        if d.materialized {
            let _ = fs::remove_file(path);
        }
        d.materialized = false;
        d.demo = None;
        d.data_destroyed = true;
        Ok(())
    }

    /// The MSB-first bitmap of 64 KiB blocks that differ between `from` and `to`, sized
    /// for `to`.
    pub fn changed_blocks(&self, from: &str, to: &str) -> Result<Vec<u8>, DiskError> {
        let f = self.disk(from)?;
        let t = self.disk(to)?;
        let fc = f
            .cbt
            .as_ref()
            .ok_or_else(|| DiskError::NoCbt(from.to_owned()))?;
        let tc = t
            .cbt
            .as_ref()
            .ok_or_else(|| DiskError::NoCbt(to.to_owned()))?;
        if fc.chain != tc.chain {
            return Err(DiskError::Unrelated(from.to_owned(), to.to_owned()));
        }
        let since = fc.frozen_at.unwrap_or(self.write_seq);
        let blocks = t.virtual_size.div_ceil(CBT_BLOCK_SIZE);
        let mut bitmap = vec![0u8; blocks.div_ceil(8) as usize];
        for (&b, &seq) in &tc.last_write {
            if seq > since && b < blocks {
                bitmap[(b / 8) as usize] |= 0x80 >> (b % 8);
            }
        }
        Ok(bitmap)
    }
}

fn check_range(uuid: &str, d: &Disk, offset: u64, len: u64) -> Result<(), DiskError> {
    if d.data_destroyed {
        return Err(DiskError::DataDestroyed(uuid.to_owned()));
    }
    if offset
        .checked_add(len)
        .is_none_or(|end| end > d.virtual_size)
    {
        return Err(DiskError::OutOfRange {
            uuid: uuid.to_owned(),
            offset,
            len,
            size: d.virtual_size,
        });
    }
    Ok(())
}

/// Copies only the data extents of `src`, keeping `dst` sparse.
fn sparse_copy(src: &Path, dst: &Path, len: u64) -> io::Result<()> {
    let s = File::open(src)?;
    let d = File::create(dst)?;
    d.set_len(len)?;
    let fd = s.as_raw_fd();
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        // SAFETY: lseek on a file descriptor we own; it only moves the file offset.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut at, end) = (data as u64, (hole as u64).min(len));
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            s.read_exact_at(&mut buf[..n], at)?;
            d.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        if end >= len {
            return Ok(());
        }
        pos = hole;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K64: u64 = CBT_BLOCK_SIZE;

    fn bits(bitmap: &[u8]) -> Vec<u64> {
        (0..bitmap.len() as u64 * 8)
            .filter(|b| bitmap[(b / 8) as usize] & (0x80 >> (b % 8)) != 0)
            .collect()
    }

    #[test]
    fn snapshots_are_point_in_time_and_cbt_tracks_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DiskStore::open(dir.path(), DiskStoreState::default()).unwrap();
        store.create("a", 64 * K64, Some(DemoSeed { vm: 1, disk: 0 }));
        let before = store.read("a", 0, 4096).unwrap();
        store.enable_cbt("a").unwrap();
        store.copy("a", "s1", true).unwrap();
        store.write("a", 3 * K64 + 10, b"hello").unwrap();
        store.write("a", 10 * K64 - 1, b"xy").unwrap();
        store.copy("a", "s2", true).unwrap();
        store.write("a", 0, b"later").unwrap();

        assert_eq!(store.read("s1", 0, 4096).unwrap(), before);
        assert_eq!(store.read("s2", 3 * K64 + 10, 5).unwrap(), b"hello");
        assert_eq!(&store.read("s2", 0, 5).unwrap()[..], &before[..5]);
        assert_eq!(store.read("a", 0, 5).unwrap(), b"later");
        // Demo data survived materialisation.
        assert_eq!(store.read("a", 5, 100).unwrap(), before[5..105]);

        assert_eq!(bits(&store.changed_blocks("s1", "s2").unwrap()), [3, 9, 10]);
        assert_eq!(bits(&store.changed_blocks("s2", "a").unwrap()), [0]);
        assert_eq!(
            bits(&store.changed_blocks("s1", "a").unwrap()),
            [0, 3, 9, 10]
        );
        assert_eq!(store.changed_blocks("s1", "s2").unwrap().len(), 8);

        store.data_destroy("s1").unwrap();
        assert!(matches!(
            store.read("s1", 0, 1),
            Err(DiskError::DataDestroyed(_))
        ));
        assert_eq!(bits(&store.changed_blocks("s1", "s2").unwrap()), [3, 9, 10]);

        store.create("other", K64, None);
        store.enable_cbt("other").unwrap();
        assert!(matches!(
            store.changed_blocks("s2", "other"),
            Err(DiskError::Unrelated(..))
        ));
        assert!(matches!(
            store.read("a", 64 * K64 - 1, 2),
            Err(DiskError::OutOfRange { .. })
        ));
    }

    #[test]
    fn sparse_copy_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DiskStore::open(dir.path(), DiskStoreState::default()).unwrap();
        let size = 256 << 20;
        store.create("big", size, None);
        store.write("big", 200 << 20, b"data").unwrap();
        store.copy("big", "copy", false).unwrap();
        assert_eq!(store.read("copy", 200 << 20, 4).unwrap(), b"data");
        assert!(store.utilisation("copy") < 16 << 20);
        assert!(store.get("copy").unwrap().cbt.is_none());
    }
}
