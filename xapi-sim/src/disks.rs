//! VDI content and changed block tracking.
//!
//! A VDI's bytes live in one of two places ([`Placement`]):
//! - on a local SR: generated demo content ([`crate::demo`]) or a sparse file
//!   `vdis/<uuid>.img` in the state directory. The first write to a demo disk writes its
//!   demo data out to the file, so the file then holds the whole disk. Snapshots and
//!   clones copy the file's data extents only (SEEK_DATA/SEEK_HOLE), or just the demo seed;
//! - on an NFS SR: the dynamic VHD `<sr-uuid>/<uuid>.vhd` on the SR's export
//!   ([`crate::vhd_file`]), read and written through a mount of one of the SR's plugged
//!   PBDs ([`crate::nfs_client`]). Which PBDs are plugged is saved with the store, so after
//!   a restart the first access mounts again, as a host re-plugs its PBDs at boot.
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
use std::sync::Arc;

use a3_shared::vhd::{BLOCK_SIZE, VhdError};
use serde::{Deserialize, Serialize};

use crate::demo::{self, DemoSeed};
use crate::file_store::FileStore;
use crate::model::storage::CBT_BLOCK_SIZE;
use crate::nfs_client::{MountError, NfsMount, NfsTarget};
use crate::vhd_file::VhdFile;

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
    /// For a VDI on an NFS SR: that SR's uuid; the content is `<sr>/<uuid>.vhd` there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhd_sr: Option<String>,
}

/// Where a new VDI's content goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The state directory (local SRs).
    Local,
    /// A VHD file on the NFS SR with this uuid.
    Vhd(String),
}

/// A plugged PBD of an NFS SR, as the store remembers it across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NfsPbd {
    /// The SR's uuid.
    pub sr: String,
    /// What the PBD's `device_config` names.
    pub target: NfsTarget,
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
    /// The VDI's NFS SR has no plugged PBD, so its files cannot be reached.
    #[error("SR {0} is not attached: plug one of its PBDs first")]
    Detached(String),
    /// The VDI's VHD file could not be used.
    #[error("VDI {uuid} VHD file {path}: {source}")]
    Vhd {
        /// The VDI.
        uuid: String,
        /// The file, as `store/path`.
        path: String,
        /// The cause.
        source: VhdError,
    },
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
    /// Plugged PBDs of NFS SRs by PBD ref.
    nfs_pbds: BTreeMap<String, NfsPbd>,
    /// The live mount (or other store) of each plugged PBD.
    mounts: HashMap<String, Arc<dyn FileStore>>,
}

/// The persisted form of the store.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DiskStoreState {
    /// Disks by VDI uuid.
    pub disks: HashMap<String, Disk>,
    /// The CBT write sequence number.
    pub write_seq: u64,
    /// Plugged PBDs of NFS SRs by PBD ref.
    #[serde(default)]
    pub nfs_pbds: BTreeMap<String, NfsPbd>,
}

/// The path of a VDI's VHD in its SR's store.
pub fn vhd_path(sr: &str, uuid: &str) -> String {
    format!("{sr}/{uuid}.vhd")
}

impl DiskStore {
    /// A store keeping its files in `dir`.
    pub fn open(dir: &Path, state: DiskStoreState) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(DiskStore {
            dir: dir.to_owned(),
            disks: state.disks,
            write_seq: state.write_seq,
            nfs_pbds: state.nfs_pbds,
            mounts: HashMap::new(),
        })
    }

    /// The persisted form.
    pub fn state(&self) -> DiskStoreState {
        DiskStoreState {
            disks: self.disks.clone(),
            write_seq: self.write_seq,
            nfs_pbds: self.nfs_pbds.clone(),
        }
    }

    /// Plugs a PBD of the NFS SR `sr`: mounts `target` (again, if the PBD was plugged
    /// before a restart) and checks that the SR's directory is there, as NFSSR's attach
    /// mounts `<serverpath>/<sr-uuid>`.
    pub fn plug_nfs(&mut self, pbd: &str, sr: &str, target: &NfsTarget) -> Result<(), MountError> {
        let mount = NfsMount::mount(target)?;
        if let Err(e) = mount.list(sr) {
            return Err(MountError {
                target: target.clone(),
                reason: format!(
                    "the SR directory {}/{sr} cannot be read: {e}",
                    target.export
                ),
            });
        }
        self.attach(pbd, sr, target, Arc::new(mount));
        Ok(())
    }

    /// Records `store` as the mount of PBD `pbd` of SR `sr`.
    pub fn attach(&mut self, pbd: &str, sr: &str, target: &NfsTarget, store: Arc<dyn FileStore>) {
        self.nfs_pbds.insert(
            pbd.to_owned(),
            NfsPbd {
                sr: sr.to_owned(),
                target: target.clone(),
            },
        );
        self.mounts.insert(pbd.to_owned(), store);
    }

    /// Unplugs a PBD: drops its mount, which unmounts.
    pub fn unplug(&mut self, pbd: &str) {
        self.nfs_pbds.remove(pbd);
        self.mounts.remove(pbd);
    }

    /// Whether a PBD's mount is live in this process.
    pub fn is_mounted(&self, pbd: &str) -> bool {
        self.mounts.contains_key(pbd)
    }

    /// The store of the NFS SR `sr` through any of its plugged PBDs, mounting again a PBD
    /// that was plugged before a restart.
    pub fn sr_store(&mut self, sr: &str) -> Result<Arc<dyn FileStore>, DiskError> {
        let pbds: Vec<(String, NfsTarget)> = self
            .nfs_pbds
            .iter()
            .filter(|(_, p)| p.sr == sr)
            .map(|(r, p)| (r.clone(), p.target.clone()))
            .collect();
        if let Some(live) = pbds.iter().find_map(|(r, _)| self.mounts.get(r)) {
            return Ok(live.clone());
        }
        let mut last = None;
        for (pbd, target) in pbds {
            match NfsMount::mount(&target) {
                Ok(m) => {
                    let m: Arc<dyn FileStore> = Arc::new(m);
                    self.mounts.insert(pbd, m.clone());
                    return Ok(m);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => DiskError::Io {
                uuid: String::new(),
                path: PathBuf::from(e.target.to_string()),
                source: io::Error::other(e.reason),
            },
            None => DiskError::Detached(sr.to_owned()),
        })
    }

    /// The store and path of a VHD disk.
    fn vhd_of(&mut self, uuid: &str, sr: &str) -> Result<(Arc<dyn FileStore>, String), DiskError> {
        let store = self.sr_store(sr)?;
        Ok((store, vhd_path(sr, uuid)))
    }

    /// The live store of an NFS SR, without mounting (for `&self` readers).
    fn live_store(&self, sr: &str) -> Result<Arc<dyn FileStore>, DiskError> {
        self.nfs_pbds
            .iter()
            .filter(|(_, p)| p.sr == sr)
            .find_map(|(r, _)| self.mounts.get(r))
            .cloned()
            .ok_or_else(|| DiskError::Detached(sr.to_owned()))
    }

    fn vhd_err(uuid: &str, store: &dyn FileStore, path: &str) -> impl Fn(VhdError) -> DiskError {
        let (uuid, path) = (uuid.to_owned(), format!("{}/{path}", store.describe()));
        move |source| DiskError::Vhd {
            uuid: uuid.clone(),
            path: path.clone(),
            source,
        }
    }

    /// Registers a new VDI on an NFS SR: writes an empty dynamic VHD of `virtual_size`.
    pub fn create_vhd(&mut self, uuid: &str, virtual_size: u64, sr: &str) -> Result<(), DiskError> {
        let (store, path) = self.vhd_of(uuid, sr)?;
        let id = uuid::Uuid::parse_str(uuid).map_or([0; 16], |u| *u.as_bytes());
        VhdFile::create(&*store, &path, virtual_size, id)
            .map_err(Self::vhd_err(uuid, &*store, &path))?;
        self.disks
            .insert(uuid.to_owned(), Self::vhd_disk(virtual_size, sr));
        Ok(())
    }

    fn vhd_disk(virtual_size: u64, sr: &str) -> Disk {
        Disk {
            virtual_size,
            demo: None,
            materialized: true,
            data_destroyed: false,
            cbt: None,
            vhd_sr: Some(sr.to_owned()),
        }
    }

    /// Takes an existing VHD file on an NFS SR as the content of VDI `uuid` (`SR.scan`
    /// found it); returns its virtual size.
    pub fn adopt_vhd(&mut self, uuid: &str, sr: &str) -> Result<u64, DiskError> {
        let (store, path) = self.vhd_of(uuid, sr)?;
        let size = VhdFile::open(&*store, &path)
            .map_err(Self::vhd_err(uuid, &*store, &path))?
            .size();
        self.disks.insert(uuid.to_owned(), Self::vhd_disk(size, sr));
        Ok(size)
    }

    /// The uuids of the VHD files in an NFS SR's directory.
    pub fn list_vhds(&mut self, sr: &str) -> Result<Vec<String>, DiskError> {
        let store = self.sr_store(sr)?;
        let names = store.list(sr).map_err(|source| DiskError::Io {
            uuid: String::new(),
            path: PathBuf::from(format!("{}/{sr}", store.describe())),
            source,
        })?;
        Ok(names
            .iter()
            .filter_map(|n| n.strip_suffix(".vhd"))
            .filter(|u| uuid::Uuid::parse_str(u).is_ok())
            .map(str::to_owned)
            .collect())
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
                vhd_sr: None,
            },
        );
    }

    /// Forgets a disk but leaves its content where it is (`SR.forget`, `SR.scan`).
    pub fn forget(&mut self, uuid: &str) {
        self.disks.remove(uuid);
    }

    /// Forgets a disk and deletes its file.
    pub fn remove(&mut self, uuid: &str) {
        let Some(d) = self.disks.remove(uuid) else {
            return;
        };
        match &d.vhd_sr {
            Some(sr) if !d.data_destroyed => {
                if let Ok(store) = self.sr_store(sr) {
                    let _ = store.remove(&vhd_path(sr, uuid));
                }
            }
            Some(_) => {}
            None if d.materialized => {
                let _ = fs::remove_file(self.path(uuid));
            }
            None => {}
        }
    }

    /// Copies `src`'s content to a new disk `dst` placed at `to`. A snapshot also takes a
    /// frozen copy of the CBT state; a clone starts without CBT. A disk copied onto an NFS
    /// SR gets whole 2 MiB blocks, as VHD-based SRs round sizes.
    pub fn copy(
        &mut self,
        src: &str,
        dst: &str,
        snapshot: bool,
        to: &Placement,
    ) -> Result<(), DiskError> {
        let s = self.disk(src)?.clone();
        if s.data_destroyed {
            return Err(DiskError::DataDestroyed(src.to_owned()));
        }
        let cbt = self.copied_cbt(&s, snapshot);
        if s.vhd_sr.is_none() && *to == Placement::Local {
            if s.materialized {
                sparse_copy(&self.path(src), &self.path(dst), s.virtual_size)
                    .map_err(self.io_err(dst))?;
            }
            self.disks.insert(dst.to_owned(), Disk { cbt, ..s });
            return Ok(());
        }
        let blocks: Vec<u64> = match &s.vhd_sr {
            Some(sr) => {
                let (store, path) = self.vhd_of(src, sr)?;
                VhdFile::open(&*store, &path)
                    .map_err(Self::vhd_err(src, &*store, &path))?
                    .stored_blocks()
            }
            None => (0..s.virtual_size.div_ceil(BLOCK_SIZE)).collect(),
        };
        let size = match to {
            Placement::Local => {
                let f = File::create(self.path(dst)).map_err(self.io_err(dst))?;
                f.set_len(s.virtual_size).map_err(self.io_err(dst))?;
                self.disks.insert(
                    dst.to_owned(),
                    Disk {
                        virtual_size: s.virtual_size,
                        demo: None,
                        materialized: true,
                        data_destroyed: false,
                        cbt: None,
                        vhd_sr: None,
                    },
                );
                s.virtual_size
            }
            Placement::Vhd(sr) => {
                let size = crate::vhd_file::round_size(s.virtual_size);
                self.create_vhd(dst, size, sr)?;
                size
            }
        };
        let copied = self.copy_blocks(src, dst, &blocks, s.virtual_size);
        if let Err(e) = copied {
            self.remove(dst);
            return Err(e);
        }
        if let Some(d) = self.disks.get_mut(dst) {
            d.virtual_size = size;
            d.cbt = cbt;
        }
        Ok(())
    }

    /// Copies the listed 2 MiB blocks of `src` into `dst`, skipping zeros.
    fn copy_blocks(
        &mut self,
        src: &str,
        dst: &str,
        blocks: &[u64],
        size: u64,
    ) -> Result<(), DiskError> {
        for &b in blocks {
            let at = b * BLOCK_SIZE;
            let len = BLOCK_SIZE.min(size.saturating_sub(at));
            if len == 0 {
                continue;
            }
            let data = self.read(src, at, len)?;
            if data.iter().any(|x| *x != 0) {
                self.write_data(dst, at, &data)?;
            }
        }
        Ok(())
    }

    fn copied_cbt(&self, s: &Disk, snapshot: bool) -> Option<Cbt> {
        match (&s.cbt, snapshot) {
            (Some(c), true) => Some(Cbt {
                chain: c.chain.clone(),
                frozen_at: Some(self.write_seq),
                last_write: c.last_write.clone(),
            }),
            _ => None,
        }
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, uuid: &str, offset: u64, len: u64) -> Result<Vec<u8>, DiskError> {
        let d = self.disk(uuid)?;
        check_range(uuid, d, offset, len)?;
        let mut buf = vec![0u8; len as usize];
        if let Some(sr) = &d.vhd_sr {
            let store = self.live_store(sr)?;
            let path = vhd_path(sr, uuid);
            let err = Self::vhd_err(uuid, &*store, &path);
            VhdFile::open(&*store, &path)
                .and_then(|f| f.read_at(offset, &mut buf))
                .map_err(err)?;
        } else if d.materialized {
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
        self.write_data(uuid, offset, data)?;
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

    /// Writes the bytes where the disk keeps them, without CBT bookkeeping.
    fn write_data(&mut self, uuid: &str, offset: u64, data: &[u8]) -> Result<(), DiskError> {
        let d = self.disk(uuid)?.clone();
        if let Some(sr) = &d.vhd_sr {
            let (store, path) = self.vhd_of(uuid, sr)?;
            let err = Self::vhd_err(uuid, &*store, &path);
            return VhdFile::open(&*store, &path)
                .and_then(|mut f| f.write_at(offset, data))
                .map_err(err);
        }
        if !d.materialized {
            self.materialize(uuid, &d)?;
        }
        let f = OpenOptions::new()
            .write(true)
            .open(self.path(uuid))
            .map_err(self.io_err(uuid))?;
        f.write_all_at(data, offset).map_err(self.io_err(uuid))
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
        if let Some(sr) = &d.vhd_sr {
            // A VHD's physical utilisation is its file's size, as the SM reports it.
            return self
                .live_store(sr)
                .and_then(|s| {
                    s.len(&vhd_path(sr, uuid))
                        .map_err(|_| DiskError::Detached(sr.clone()))
                })
                .unwrap_or(0);
        }
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
        let d = self.disk(uuid)?.clone();
        if d.cbt.is_none() {
            return Err(DiskError::NoCbt(uuid.to_owned()));
        }
        if let Some(sr) = &d.vhd_sr {
            let (store, vhd) = self.vhd_of(uuid, sr)?;
            store.remove(&vhd).map_err(|source| DiskError::Io {
                uuid: uuid.to_owned(),
                path: PathBuf::from(format!("{}/{vhd}", store.describe())),
                source,
            })?;
        } else if d.materialized {
            let _ = fs::remove_file(path);
        }
        let d = self.disks.get_mut(uuid).expect("checked above");
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
        store.copy("a", "s1", true, &Placement::Local).unwrap();
        store.write("a", 3 * K64 + 10, b"hello").unwrap();
        store.write("a", 10 * K64 - 1, b"xy").unwrap();
        store.copy("a", "s2", true, &Placement::Local).unwrap();
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
        store.copy("big", "copy", false, &Placement::Local).unwrap();
        assert_eq!(store.read("copy", 200 << 20, 4).unwrap(), b"data");
        assert!(store.utilisation("copy") < 16 << 20);
        assert!(store.get("copy").unwrap().cbt.is_none());
    }

    #[test]
    fn vhd_disks_on_a_file_store_read_write_copy_and_cbt() {
        use crate::file_store::LocalDir;
        let dir = tempfile::tempdir().unwrap();
        let export = tempfile::tempdir().unwrap();
        let mut store = DiskStore::open(dir.path(), DiskStoreState::default()).unwrap();
        let target = NfsTarget {
            server: "127.0.0.1".into(),
            export: "/alike".into(),
        };
        let fs = Arc::new(LocalDir::new(export.path()));
        fs.mkdir("sr1").unwrap();
        assert!(matches!(
            store.create_vhd("a", BLOCK_SIZE, "sr1"),
            Err(DiskError::Detached(_))
        ));
        store.attach("pbd1", "sr1", &target, fs.clone());
        let size = 4 * BLOCK_SIZE;
        store.create_vhd("a", size, "sr1").unwrap();
        assert!(export.path().join("sr1/a.vhd").exists());
        store.enable_cbt("a").unwrap();
        store
            .copy("a", "snap", true, &Placement::Vhd("sr1".into()))
            .unwrap();
        store.write("a", BLOCK_SIZE + 5, b"vhd data").unwrap();
        assert_eq!(store.read("a", BLOCK_SIZE + 5, 8).unwrap(), b"vhd data");
        assert_eq!(store.read("snap", BLOCK_SIZE + 5, 8).unwrap(), [0; 8]);
        assert_eq!(bits(&store.changed_blocks("snap", "a").unwrap()), [32]);
        assert!(store.utilisation("a") > BLOCK_SIZE);

        // VHD -> local raw file and back, data intact.
        store.copy("a", "raw", false, &Placement::Local).unwrap();
        assert!(store.get("raw").unwrap().vhd_sr.is_none());
        assert_eq!(store.read("raw", BLOCK_SIZE + 5, 8).unwrap(), b"vhd data");
        store.create("local", 3 * K64 + 100, Some(DemoSeed { vm: 2, disk: 0 }));
        let demo = store.read("local", 0, 3 * K64 + 100).unwrap();
        store
            .copy("local", "up", false, &Placement::Vhd("sr1".into()))
            .unwrap();
        assert_eq!(store.get("up").unwrap().virtual_size, BLOCK_SIZE, "rounded");
        assert_eq!(store.read("up", 0, 3 * K64 + 100).unwrap(), demo);

        let mut listed = store.list_vhds("sr1").unwrap();
        listed.sort();
        assert!(listed.is_empty(), "non-uuid names are not VDIs: {listed:?}");
        let u = uuid::Uuid::new_v4().to_string();
        crate::vhd_file::VhdFile::create(&*fs, &vhd_path("sr1", &u), BLOCK_SIZE, [0; 16]).unwrap();
        assert_eq!(store.list_vhds("sr1").unwrap(), std::slice::from_ref(&u));
        assert_eq!(store.adopt_vhd(&u, "sr1").unwrap(), BLOCK_SIZE);

        store.data_destroy("snap").unwrap();
        assert!(!export.path().join("sr1/snap.vhd").exists());
        assert_eq!(bits(&store.changed_blocks("snap", "a").unwrap()), [32]);
        store.remove("a");
        assert!(!export.path().join("sr1/a.vhd").exists());

        // The plugged PBD survives a save; without a live mount, reads say so.
        let saved = store.state();
        assert_eq!(saved.nfs_pbds["pbd1"].sr, "sr1");
        store.unplug("pbd1");
        assert!(matches!(
            store.read("up", 0, 1),
            Err(DiskError::Detached(_))
        ));
    }
}
