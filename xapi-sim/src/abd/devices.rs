//! Hot-plugged disks of a running ABD: `dev/xvd<letter>` in the VM's directory.
//!
//! The device file is a private sparse copy of the VDI's content, written through the
//! disk store (so it works for every SR kind and for generated demo content) and renamed
//! into place when complete, so the agent sees either nothing or the whole disk.
//! - A read-only VBD's file has mode 0444. The agent runs as the same user as the
//!   simulator (often root), so the mode is advisory; what makes it read-only is that
//!   nothing written to the copy ever reaches the VDI. The copy is deleted on unplug.
//! - A read-write VBD's file is written back on unplug (and on shutdown): every MiB that
//!   differs from the VDI goes through the store's guest-write path, which records CBT.
//!
//! Chosen over the alternatives: a symlink or hard link to the VDI's file would let a
//! read-only VBD be written; a read-only bind mount needs mount privileges and leaks on a
//! crash; and VDIs on NFS SRs or with generated content have no local raw file at all.
//! The price is a copy per plug, done off the request path.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::vdi;
use crate::model::{Ref, storage};
use crate::sim::Shared;

/// Content moves in pieces of this size, taking the state lock once per piece.
const PIECE: u64 = 1 << 20;

/// A disk shown to the agent.
#[derive(Debug, Clone)]
pub struct Device {
    /// The VBD.
    pub vbd: Ref,
    /// Its VDI.
    pub vdi: Ref,
    /// The VDI's uuid (the disk store's key).
    pub uuid: String,
    /// `RO` VBDs are never written back.
    pub read_only: bool,
    /// `<vm-dir>/dev/xvdX`.
    pub path: PathBuf,
}

/// What a VBD would show as, read under the lock; `None` for an empty drive.
pub fn describe(shared: &Shared, dev_dir: &Path, vbd: &str) -> Option<Device> {
    let st = shared.lock();
    let vdi = st.db.str_field("VBD", vbd, "VDI").ok()?;
    if !st.db.exists("VDI", &vdi) {
        return None;
    }
    let uuid = vdi::uuid_of(&st, &vdi).ok()?;
    let userdevice = st.db.str_field("VBD", vbd, "userdevice").ok()?;
    let read_only = st.db.str_field("VBD", vbd, "mode").ok()? != "RW";
    Some(Device {
        vbd: vbd.to_owned(),
        vdi,
        uuid,
        read_only,
        path: dev_dir.join(storage::device_name(&userdevice)),
    })
}

/// Copies the VDI's content to the device file (blocking: run it off the async workers).
pub fn create(shared: &Shared, dev: &Device) -> io::Result<()> {
    let size = {
        let st = shared.lock();
        st.disks.get(&dev.uuid).map(|d| d.virtual_size)
    }
    .ok_or_else(|| io::Error::other(format!("VDI {} has no content", dev.uuid)))?;
    let tmp = dev.path.with_extension("plugging");
    let f = File::create(&tmp)?;
    f.set_len(size)?;
    let mut at = 0;
    while at < size {
        let n = PIECE.min(size - at);
        let piece = shared
            .lock()
            .disks
            .read(&dev.uuid, at, n)
            .map_err(io::Error::other)?;
        if piece.iter().any(|&b| b != 0) {
            f.write_all_at(&piece, at)?;
        }
        at += n;
    }
    f.sync_all()?;
    let mode = if dev.read_only { 0o444 } else { 0o644 };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, &dev.path)
}

/// Writes a read-write device's changes back to its VDI, then removes the file
/// (blocking). Returns how many bytes were written back.
pub fn remove(shared: &Arc<Shared>, dev: &Device) -> io::Result<u64> {
    let written = if dev.read_only {
        0
    } else {
        write_back(shared, dev)?
    };
    match std::fs::remove_file(&dev.path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(written)
}

fn write_back(shared: &Arc<Shared>, dev: &Device) -> io::Result<u64> {
    let f = match OpenOptions::new().read(true).open(&dev.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    let mut written = 0;
    let mut at = 0;
    let mut buf = vec![0u8; PIECE as usize];
    while at < size {
        let n = PIECE.min(size - at);
        let piece = &mut buf[..n as usize];
        f.read_exact_at(piece, at)?;
        let mut st = shared.lock();
        let Ok(current) = st.disks.read(&dev.uuid, at, n) else {
            // The VDI is gone or shrank: nothing left to write back to.
            return Ok(written);
        };
        if current != *piece {
            st.disks
                .write(&dev.uuid, at, piece)
                .map_err(io::Error::other)?;
            written += n;
        }
        at += n;
    }
    if written > 0 {
        let _ = vdi::refresh_utilisation(&mut shared.lock(), &dev.vdi);
        shared.changed();
    }
    Ok(written)
}
