//! The SR directory as a read-write NFS file system.
//!
//! File handles carry the inode number. The inode-to-path map is filled by lookups, listings
//! and creations; a handle it does not know (the A3 restarted while a host kept the SR
//! mounted) is found again by walking the tree, so handles outlive the process as they do on
//! a kernel NFS server. A hard link (LINK) gives an inode a second name; the map keeps one,
//! and when that one goes the walk finds the other.
//!
//! Confinement: a client names things by handle plus one path component, never by path. A
//! component is never `/`, and `..` at the root stays at the root. Symlinks are never followed:
//! clients cannot create them (SYMLINK is refused), files are opened with `O_NOFOLLOW`, and a
//! directory handle must be a real directory. Whatever an administrator leaves in the SR
//! directory, no NFS call reads or writes outside it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, FileTimes, Metadata, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{
    DirBuilderExt, DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nfs3_server::fs_util::metadata_to_fattr3;
use nfs3_server::nfs3_types::nfs3::{
    Nfs3Option, createverf3, fattr3, filename3, nfspath3, nfsstat3, nfstime3, sattr3, set_atime,
    set_mtime, stable_how,
};
use nfs3_server::vfs::{
    DirEntryPlus, FileHandleU64, NextResult, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator,
};

/// How deep the search for an unknown handle goes (the SR holds `<sr-uuid>/<vdi>.vhd`).
const MAX_SEARCH_DEPTH: usize = 8;
/// Mode bits a client may set: the owner's only. The SR lives in the A3's owner-only state
/// dir, and the pool's hosts use it as root; no setuid, setgid or sticky bit either.
const MODE_MASK: u32 = 0o700;

/// Serves the files under one directory.
pub struct DirFs {
    root: PathBuf,
    root_ino: u64,
    paths: Arc<Mutex<HashMap<u64, PathBuf>>>,
}

impl DirFs {
    /// Serves `root`, which must be an existing directory.
    pub fn new(root: &Path) -> std::io::Result<DirFs> {
        let meta = std::fs::symlink_metadata(root)?;
        if !meta.is_dir() {
            return Err(std::io::Error::new(
                ErrorKind::NotADirectory,
                "not a directory (symlinks are not followed)",
            ));
        }
        let paths = HashMap::from([(meta.ino(), root.to_path_buf())]);
        Ok(DirFs {
            root: root.to_path_buf(),
            root_ino: meta.ino(),
            paths: Arc::new(Mutex::new(paths)),
        })
    }

    /// A number that changes when the SR directory is replaced, so that handles stay valid
    /// across restarts of the A3 but not across a new SR directory.
    pub fn generation(&self) -> u64 {
        std::fs::symlink_metadata(&self.root)
            .map(|m| m.dev().rotate_left(32) ^ m.ino())
            .unwrap_or(self.root_ino)
    }

    fn paths(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PathBuf>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts).
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The path and metadata of `id`, checking that the path still holds that inode.
    fn resolve(&self, id: &FileHandleU64) -> Result<(PathBuf, Metadata), nfsstat3> {
        let ino = id.as_u64();
        let known = self.paths().get(&ino).cloned();
        if let Some(path) = known
            && let Ok(meta) = std::fs::symlink_metadata(&path)
            && meta.ino() == ino
        {
            return Ok((path, meta));
        }
        // Unknown or moved behind our back: search the tree.
        let path = find_inode(&self.root, ino, MAX_SEARCH_DEPTH).ok_or(nfsstat3::NFS3ERR_STALE)?;
        let meta = std::fs::symlink_metadata(&path).map_err(io_status)?;
        self.paths().insert(ino, path.clone());
        Ok((path, meta))
    }

    /// A directory handle's path: a real directory, never a symlink to one.
    fn dir(&self, id: &FileHandleU64) -> Result<PathBuf, nfsstat3> {
        let (path, meta) = self.resolve(id)?;
        if !meta.is_dir() {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        Ok(path)
    }

    /// Opens a regular file by handle, never through a symlink.
    fn open_file(&self, id: &FileHandleU64, write: bool) -> Result<File, nfsstat3> {
        let (path, meta) = self.resolve(id)?;
        if meta.is_dir() {
            return Err(nfsstat3::NFS3ERR_ISDIR);
        }
        if !meta.is_file() {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_status)?;
        same_inode(&file, id.as_u64())?;
        Ok(file)
    }

    /// Opens any object by handle for attribute changes (a directory read-only).
    fn open_object(&self, id: &FileHandleU64, write: bool) -> Result<File, nfsstat3> {
        let (path, meta) = self.resolve(id)?;
        if meta.is_dir() {
            let dir = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
                .open(&path)
                .map_err(io_status)?;
            same_inode(&dir, id.as_u64())?;
            return Ok(dir);
        }
        self.open_file(id, write)
    }

    /// Records `path` and returns its handle and attributes. Never follows symlinks.
    fn remember(&self, path: PathBuf) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let meta = std::fs::symlink_metadata(&path).map_err(io_status)?;
        let ino = meta.ino();
        self.paths().insert(ino, path);
        Ok((FileHandleU64::new(ino), attributes(&meta)))
    }

    /// The path a new entry `name` in directory `dirid` gets.
    fn child(&self, dirid: &FileHandleU64, name: &filename3<'_>) -> Result<PathBuf, nfsstat3> {
        let dir = self.dir(dirid)?;
        Ok(dir.join(new_name(name)?))
    }
}

fn attributes(meta: &Metadata) -> fattr3 {
    let mut attr = metadata_to_fattr3(meta.ino(), meta);
    attr.used = meta.blocks() * 512; // sparse VHDs use less than their size
    // The status change time, not the birth time `metadata_to_fattr3` gives: Linux's NFSv3
    // client derives its change attribute from ctime and revalidates nothing cached while it
    // stays put, so a directory would never show the files the A3 adds to it.
    attr.ctime = nfstime3 {
        seconds: meta.ctime() as u32,
        nseconds: meta.ctime_nsec() as u32,
    };
    attr
}

fn same_inode(file: &File, ino: u64) -> Result<(), nfsstat3> {
    let meta = file.metadata().map_err(io_status)?;
    if meta.ino() == ino {
        Ok(())
    } else {
        Err(nfsstat3::NFS3ERR_STALE) // the name was replaced between the check and the open
    }
}

/// Depth-first search for `ino` under `dir`, not following symlinks.
fn find_inode(dir: &Path, ino: u64, depth: usize) -> Option<PathBuf> {
    let mut subdirs = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if entry.ino() == ino {
            return Some(entry.path());
        }
        if depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) {
            subdirs.push(entry.path());
        }
    }
    subdirs
        .iter()
        .find_map(|sub| find_inode(sub, ino, depth - 1))
}

fn io_status(e: std::io::Error) -> nfsstat3 {
    match e.kind() {
        ErrorKind::NotFound => nfsstat3::NFS3ERR_NOENT,
        ErrorKind::PermissionDenied => nfsstat3::NFS3ERR_ACCES,
        ErrorKind::AlreadyExists => nfsstat3::NFS3ERR_EXIST,
        ErrorKind::NotADirectory => nfsstat3::NFS3ERR_NOTDIR,
        ErrorKind::IsADirectory => nfsstat3::NFS3ERR_ISDIR,
        ErrorKind::DirectoryNotEmpty => nfsstat3::NFS3ERR_NOTEMPTY,
        ErrorKind::InvalidInput => nfsstat3::NFS3ERR_INVAL,
        ErrorKind::StorageFull => nfsstat3::NFS3ERR_NOSPC,
        ErrorKind::QuotaExceeded => nfsstat3::NFS3ERR_DQUOT,
        ErrorKind::ReadOnlyFilesystem => nfsstat3::NFS3ERR_ROFS,
        ErrorKind::FileTooLarge => nfsstat3::NFS3ERR_FBIG,
        ErrorKind::CrossesDevices => nfsstat3::NFS3ERR_XDEV,
        ErrorKind::InvalidFilename => nfsstat3::NFS3ERR_NAMETOOLONG,
        // O_NOFOLLOW met a symlink.
        _ if e.raw_os_error() == Some(libc::ELOOP) => nfsstat3::NFS3ERR_INVAL,
        _ => nfsstat3::NFS3ERR_IO,
    }
}

/// A name a client may look up: one path component.
fn component<'a>(name: &'a filename3<'_>) -> Result<&'a OsStr, nfsstat3> {
    let bytes: &[u8] = name.as_ref();
    if bytes.is_empty() || bytes.contains(&b'/') || bytes.contains(&0) {
        return Err(nfsstat3::NFS3ERR_INVAL);
    }
    if bytes.len() > 255 {
        return Err(nfsstat3::NFS3ERR_NAMETOOLONG);
    }
    Ok(OsStr::from_bytes(bytes))
}

/// A name a client may create, remove or rename: a component other than `.` and `..`.
fn new_name<'a>(name: &'a filename3<'_>) -> Result<&'a OsStr, nfsstat3> {
    let name = component(name)?;
    if name == "." || name == ".." {
        return Err(nfsstat3::NFS3ERR_INVAL);
    }
    Ok(name)
}

fn nfs_time(t: nfs3_server::nfs3_types::nfs3::nfstime3) -> SystemTime {
    t.into()
}

/// Applies a client's `sattr3` to an open object.
fn apply(file: &File, attr: &sattr3) -> Result<(), nfsstat3> {
    if let Nfs3Option::Some(size) = attr.size {
        file.set_len(size).map_err(io_status)?;
    }
    if let Nfs3Option::Some(mode) = attr.mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode & MODE_MASK))
            .map_err(io_status)?;
    }
    let uid = match attr.uid {
        Nfs3Option::Some(uid) => Some(uid),
        Nfs3Option::None => None,
    };
    let gid = match attr.gid {
        Nfs3Option::Some(gid) => Some(gid),
        Nfs3Option::None => None,
    };
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(file, uid, gid).map_err(io_status)?;
    }
    let mut times = FileTimes::new();
    let mut any = false;
    match attr.atime {
        set_atime::DONT_CHANGE => {}
        set_atime::SET_TO_SERVER_TIME => {
            (times, any) = (times.set_accessed(SystemTime::now()), true)
        }
        set_atime::SET_TO_CLIENT_TIME(t) => (times, any) = (times.set_accessed(nfs_time(t)), true),
    }
    match attr.mtime {
        set_mtime::DONT_CHANGE => {}
        set_mtime::SET_TO_SERVER_TIME => {
            (times, any) = (times.set_modified(SystemTime::now()), true)
        }
        set_mtime::SET_TO_CLIENT_TIME(t) => (times, any) = (times.set_modified(nfs_time(t)), true),
    }
    if any {
        file.set_times(times).map_err(io_status)?;
    }
    Ok(())
}

/// An exclusive create's verifier kept in the times (as Linux's knfsd does), so that a
/// retransmitted CREATE finds its own file. The client sets the real times right after.
fn verifier_times(verf: &createverf3) -> FileTimes {
    let [a0, a1, a2, a3, m0, m1, m2, m3] = verf.0;
    let secs = |b: [u8; 4]| UNIX_EPOCH + Duration::from_secs(u32::from_be_bytes(b).into());
    FileTimes::new()
        .set_accessed(secs([a0, a1, a2, a3]))
        .set_modified(secs([m0, m1, m2, m3]))
}

fn has_verifier(meta: &Metadata, verf: &createverf3) -> bool {
    let [a0, a1, a2, a3, m0, m1, m2, m3] = verf.0;
    meta.atime() == i64::from(u32::from_be_bytes([a0, a1, a2, a3]))
        && meta.mtime() == i64::from(u32::from_be_bytes([m0, m1, m2, m3]))
}

fn join_error(e: tokio::task::JoinError) -> nfsstat3 {
    tracing::error!("NFS I/O task failed: {e}");
    nfsstat3::NFS3ERR_SERVERFAULT
}

impl NfsReadFileSystem for DirFs {
    type Handle = FileHandleU64;

    fn root_dir(&self) -> FileHandleU64 {
        FileHandleU64::new(self.root_ino)
    }

    async fn lookup(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
    ) -> Result<FileHandleU64, nfsstat3> {
        let dir = self.dir(dirid)?;
        let name = component(filename)?;
        let path = if name == "." {
            dir
        } else if name == ".." {
            if dir == self.root {
                dir
            } else {
                dir.parent().unwrap_or(&self.root).to_path_buf()
            }
        } else {
            dir.join(name)
        };
        self.remember(path).map(|(handle, _)| handle)
    }

    async fn getattr(&self, id: &FileHandleU64) -> Result<fattr3, nfsstat3> {
        let (_, meta) = self.resolve(id)?;
        Ok(attributes(&meta))
    }

    async fn read(
        &self,
        id: &FileHandleU64,
        offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, bool), nfsstat3> {
        let file = self.open_file(id, false)?;
        tokio::task::spawn_blocking(move || {
            let len = file.metadata().map_err(io_status)?.len();
            let want = u64::from(count).min(len.saturating_sub(offset)) as usize;
            let mut buf = vec![0u8; want];
            file.read_exact_at(&mut buf, offset).map_err(io_status)?;
            Ok((buf, offset.saturating_add(want as u64) >= len))
        })
        .await
        .map_err(join_error)?
    }

    async fn readdirplus(
        &self,
        dirid: &FileHandleU64,
        cookie: u64,
    ) -> Result<impl ReadDirPlusIterator<FileHandleU64>, nfsstat3> {
        let dir = self.dir(dirid)?;
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_status)?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        // Sorted, so that a cookie (a 1-based position) means the same entry on every call.
        names.sort();
        // `.` and `..` come first, as Linux's nfsd lists them. `..` of the export root is the
        // root itself (as LOOKUP answers), sent without handle or attributes as nfsd does there.
        let parent = if dir == self.root {
            None
        } else {
            Some(dir.parent().unwrap_or(&self.root).to_path_buf())
        };
        let dots = [
            (OsStr::new("."), Some(dir.clone())),
            (OsStr::new(".."), parent),
        ];
        let mut entries = Vec::new();
        let all = dots.into_iter().chain(
            names
                .iter()
                .map(|name| (name.as_os_str(), Some(dir.join(name)))),
        );
        for (pos, (name, path)) in all.enumerate().skip(cookie as usize) {
            let cookie = pos as u64 + 1;
            let name = name.as_encoded_bytes().to_vec().into();
            let Some(path) = path else {
                entries.push(DirEntryPlus {
                    fileid: self.root_ino,
                    name,
                    cookie,
                    name_attributes: None,
                    name_handle: None,
                });
                continue;
            };
            let Ok((handle, attr)) = self.remember(path) else {
                continue; // removed while listing
            };
            entries.push(DirEntryPlus {
                fileid: handle.as_u64(),
                name,
                cookie,
                name_attributes: Some(attr),
                name_handle: Some(handle),
            });
        }
        Ok(Entries(entries.into_iter()))
    }

    async fn readlink(&self, id: &FileHandleU64) -> Result<nfspath3<'_>, nfsstat3> {
        // Only reports the link's text; no NFS call ever follows it.
        let (path, _) = self.resolve(id)?;
        let target = std::fs::read_link(path).map_err(io_status)?;
        Ok(target.into_os_string().into_encoded_bytes().into())
    }
}

impl NfsFileSystem for DirFs {
    async fn setattr(&self, id: &FileHandleU64, setattr: sattr3) -> Result<fattr3, nfsstat3> {
        let file = self.open_object(id, setattr.size.is_some())?;
        apply(&file, &setattr)?;
        Ok(attributes(&file.metadata().map_err(io_status)?))
    }

    async fn write(
        &self,
        id: &FileHandleU64,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how), nfsstat3> {
        let file = self.open_file(id, true)?;
        let data = data.to_vec();
        tokio::task::spawn_blocking(move || {
            file.write_all_at(&data, offset).map_err(io_status)?;
            match stable {
                stable_how::UNSTABLE => {}
                stable_how::DATA_SYNC => file.sync_data().map_err(io_status)?,
                stable_how::FILE_SYNC => file.sync_all().map_err(io_status)?,
            }
            Ok((attributes(&file.metadata().map_err(io_status)?), stable))
        })
        .await
        .map_err(join_error)?
    }

    async fn create(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
        attr: sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let path = self.child(dirid, filename)?;
        let mode = match attr.mode {
            Nfs3Option::Some(mode) => mode & MODE_MASK,
            Nfs3Option::None => 0o644,
        };
        // UNCHECKED: an existing file is reused (GUARDED was checked by the caller).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_status)?;
        apply(&file, &attr)?;
        let (handle, _) = self.remember(path)?;
        same_inode(&file, handle.as_u64())?;
        Ok((handle, attributes(&file.metadata().map_err(io_status)?)))
    }

    async fn create_exclusive(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
        createverf: createverf3,
    ) -> Result<FileHandleU64, nfsstat3> {
        let path = self.child(dirid, filename)?;
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path);
        match created {
            Ok(file) => {
                file.set_times(verifier_times(&createverf))
                    .map_err(io_status)?;
                self.remember(path).map(|(handle, _)| handle)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // A retransmission of our own CREATE finds its verifier; anything else is EXIST.
                let meta = std::fs::symlink_metadata(&path).map_err(io_status)?;
                if meta.is_file() && has_verifier(&meta, &createverf) {
                    self.remember(path).map(|(handle, _)| handle)
                } else {
                    Err(nfsstat3::NFS3ERR_EXIST)
                }
            }
            Err(e) => Err(io_status(e)),
        }
    }

    async fn mkdir(
        &self,
        dirid: &FileHandleU64,
        dirname: &filename3<'_>,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        let path = self.child(dirid, dirname)?;
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(io_status)?;
        self.remember(path)
    }

    async fn remove(
        &self,
        dirid: &FileHandleU64,
        filename: &filename3<'_>,
    ) -> Result<(), nfsstat3> {
        // REMOVE and RMDIR both land here.
        let path = self.child(dirid, filename)?;
        let meta = std::fs::symlink_metadata(&path).map_err(io_status)?;
        if meta.is_dir() {
            std::fs::remove_dir(&path).map_err(io_status)?;
        } else {
            std::fs::remove_file(&path).map_err(io_status)?;
        }
        let mut paths = self.paths();
        if paths.get(&meta.ino()) == Some(&path) {
            paths.remove(&meta.ino());
        }
        Ok(())
    }

    async fn rename<'a>(
        &self,
        from_dirid: &FileHandleU64,
        from_filename: &filename3<'a>,
        to_dirid: &FileHandleU64,
        to_filename: &filename3<'a>,
    ) -> Result<(), nfsstat3> {
        let from = self.child(from_dirid, from_filename)?;
        let to = self.child(to_dirid, to_filename)?;
        // rename(2) moves a symlink itself, never its target; the kernel refuses moving a
        // directory into itself and replacing a non-empty directory.
        std::fs::rename(&from, &to).map_err(io_status)?;
        // Everything under the old name now lives under the new one.
        let mut paths = self.paths();
        for path in paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(&from) {
                *path = to.join(rest);
            }
        }
        Ok(())
    }

    async fn symlink<'a>(
        &self,
        _dirid: &FileHandleU64,
        _linkname: &filename3<'a>,
        _symlink: &nfspath3<'a>,
        _attr: &sattr3,
    ) -> Result<(FileHandleU64, fattr3), nfsstat3> {
        // A symlink could point outside the SR; an SR of VHD files has no use for one.
        Err(nfsstat3::NFS3ERR_NOTSUPP)
    }

    async fn link(
        &self,
        id: &FileHandleU64,
        dirid: &FileHandleU64,
        linkname: &filename3<'_>,
    ) -> Result<(), nfsstat3> {
        let (from, meta) = self.resolve(id)?;
        if meta.is_dir() {
            return Err(nfsstat3::NFS3ERR_ISDIR); // as Linux's nfsd answers
        }
        let to = self.child(dirid, linkname)?;
        // link(2) never follows a symlink, neither the source nor the new name.
        std::fs::hard_link(&from, &to).map_err(io_status)?;
        // `from` may have been renamed over between the lookup and the link.
        if std::fs::symlink_metadata(&to).is_ok_and(|m| m.ino() != id.as_u64()) {
            let _ = std::fs::remove_file(&to);
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        Ok(())
    }

    async fn commit(&self, id: &FileHandleU64, _offset: u64, _count: u32) -> Result<(), nfsstat3> {
        let file = match self.open_file(id, false) {
            Err(nfsstat3::NFS3ERR_ISDIR) => return Ok(()), // directories are written through
            other => other?,
        };
        tokio::task::spawn_blocking(move || file.sync_all().map_err(io_status))
            .await
            .map_err(join_error)?
    }
}

struct Entries(std::vec::IntoIter<DirEntryPlus<FileHandleU64>>);

impl ReadDirPlusIterator<FileHandleU64> for Entries {
    async fn next(&mut self) -> NextResult<DirEntryPlus<FileHandleU64>> {
        self.0.next().map_or(NextResult::Eof, NextResult::Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> filename3<'static> {
        s.as_bytes().to_vec().into()
    }

    #[tokio::test]
    async fn creates_writes_renames_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let fs = DirFs::new(dir.path()).unwrap();
        let root = fs.root_dir();
        let (sr, _) = fs.mkdir(&root, &name("sr-uuid")).await.unwrap();
        let (vhd, _) = fs
            .create(&sr, &name("a.tmp"), sattr3::default())
            .await
            .unwrap();
        fs.write(&vhd, 3, b"xyz", stable_how::FILE_SYNC)
            .await
            .unwrap();
        fs.rename(&sr, &name("a.tmp"), &sr, &name("a.vhd"))
            .await
            .unwrap();
        // The handle survives the rename.
        let (bytes, eof) = fs.read(&vhd, 0, 100).await.unwrap();
        assert_eq!((bytes.as_slice(), eof), (&b"\0\0\0xyz"[..], true));
        let truncate = sattr3 {
            size: Nfs3Option::Some(1),
            ..Default::default()
        };
        assert_eq!(fs.setattr(&vhd, truncate).await.unwrap().size, 1);
        assert_eq!(
            std::fs::read(dir.path().join("sr-uuid/a.vhd")).unwrap(),
            [0]
        );
        assert_eq!(
            fs.remove(&root, &name("sr-uuid")).await,
            Err(nfsstat3::NFS3ERR_NOTEMPTY)
        );
        fs.remove(&sr, &name("a.vhd")).await.unwrap();
        fs.remove(&root, &name("sr-uuid")).await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A file the A3 adds to a directory (not through NFS) moves the directory's ctime, from
    /// which Linux's NFSv3 client derives its change attribute.
    #[tokio::test]
    async fn a_directory_changes_ctime_when_the_a3_adds_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sr-uuid")).unwrap();
        let fs = DirFs::new(dir.path()).unwrap();
        let sr = fs.lookup(&fs.root_dir(), &name("sr-uuid")).await.unwrap();
        let before = fs.getattr(&sr).await.unwrap();
        let meta = std::fs::metadata(dir.path().join("sr-uuid")).unwrap();
        assert_eq!(
            (before.ctime.seconds, before.ctime.nseconds),
            (meta.ctime() as u32, meta.ctime_nsec() as u32)
        );
        // Past the file system's timestamp granularity.
        wait_for_clock_past(&meta);
        std::fs::write(dir.path().join("sr-uuid/template.vhd"), b"v").unwrap();
        let after = fs.getattr(&sr).await.unwrap();
        assert_ne!(
            (after.ctime.seconds, after.ctime.nseconds),
            (before.ctime.seconds, before.ctime.nseconds)
        );
    }

    /// Returns once the clock reads later than `meta`'s ctime.
    fn wait_for_clock_past(meta: &Metadata) {
        let ctime = UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while SystemTime::now() <= ctime + Duration::from_millis(10) {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock stands still"
            );
            std::thread::yield_now();
        }
    }

    #[tokio::test]
    async fn never_leaves_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret"),
            dir.path().join("secret-link"),
        )
        .unwrap();
        let fs = DirFs::new(dir.path()).unwrap();
        let root = fs.root_dir();

        assert_eq!(fs.lookup(&root, &name("..")).await.unwrap(), root);
        for bad in ["", "a/b", "../x"] {
            assert_eq!(
                fs.lookup(&root, &name(bad)).await,
                Err(nfsstat3::NFS3ERR_INVAL),
                "{bad:?}"
            );
        }
        for bad in [".", ".."] {
            assert_eq!(
                fs.mkdir(&root, &name(bad)).await.err(),
                Some(nfsstat3::NFS3ERR_INVAL)
            );
        }
        // A symlink to a directory is not a directory.
        let out = fs.lookup(&root, &name("out")).await.unwrap();
        assert_eq!(
            fs.lookup(&out, &name("secret")).await,
            Err(nfsstat3::NFS3ERR_NOTDIR)
        );
        assert_eq!(
            fs.create(&out, &name("x"), sattr3::default()).await.err(),
            Some(nfsstat3::NFS3ERR_NOTDIR)
        );
        // A symlink to a file is neither read, written nor truncated.
        let link = fs.lookup(&root, &name("secret-link")).await.unwrap();
        assert_eq!(
            fs.read(&link, 0, 10).await.err(),
            Some(nfsstat3::NFS3ERR_INVAL)
        );
        assert_eq!(
            fs.write(&link, 0, b"x", stable_how::FILE_SYNC).await.err(),
            Some(nfsstat3::NFS3ERR_INVAL)
        );
        let truncate = sattr3 {
            size: Nfs3Option::Some(0),
            ..Default::default()
        };
        assert_eq!(
            fs.setattr(&link, truncate).await.err(),
            Some(nfsstat3::NFS3ERR_INVAL)
        );
        // Creating over a symlink's name does not write through it.
        assert_eq!(
            fs.create(&root, &name("secret-link"), sattr3::default())
                .await
                .err(),
            Some(nfsstat3::NFS3ERR_INVAL)
        );
        assert_eq!(
            fs.symlink(
                &root,
                &name("l"),
                &b"/etc".to_vec().into(),
                &sattr3::default()
            )
            .await
            .err(),
            Some(nfsstat3::NFS3ERR_NOTSUPP)
        );
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
    }

    #[tokio::test]
    async fn handles_outlive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let fs = DirFs::new(dir.path()).unwrap();
        let (sr, _) = fs.mkdir(&fs.root_dir(), &name("sr")).await.unwrap();
        let (file, _) = fs.create(&sr, &name("f"), sattr3::default()).await.unwrap();
        let generation = fs.generation();
        drop(fs);
        let fs = DirFs::new(dir.path()).unwrap();
        assert_eq!(fs.generation(), generation);
        fs.write(&file, 0, b"again", stable_how::UNSTABLE)
            .await
            .unwrap();
        fs.commit(&file, 0, 0).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("sr/f")).unwrap(), b"again");
    }

    async fn listing(
        fs: &DirFs,
        dir: &FileHandleU64,
        cookie: u64,
    ) -> Vec<DirEntryPlus<FileHandleU64>> {
        let mut it = fs.readdirplus(dir, cookie).await.unwrap();
        let mut out = Vec::new();
        while let NextResult::Ok(entry) = it.next().await {
            out.push(entry);
        }
        out
    }

    fn names(entries: &[DirEntryPlus<FileHandleU64>]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8(e.name.as_ref().to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn hard_links_share_the_inode_and_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let fs = DirFs::new(dir.path()).unwrap();
        let root = fs.root_dir();
        let (sr, _) = fs.mkdir(&root, &name("sr")).await.unwrap();
        let (file, _) = fs.create(&sr, &name("a"), sattr3::default()).await.unwrap();
        fs.write(&file, 0, b"data", stable_how::FILE_SYNC)
            .await
            .unwrap();
        fs.link(&file, &root, &name("a.new")).await.unwrap();
        assert_eq!(fs.lookup(&root, &name("a.new")).await.unwrap(), file);
        assert_eq!(fs.getattr(&file).await.unwrap().nlink, 2);
        assert_eq!(std::fs::read(dir.path().join("a.new")).unwrap(), b"data");

        assert_eq!(
            fs.link(&file, &root, &name("a.new")).await,
            Err(nfsstat3::NFS3ERR_EXIST)
        );
        assert_eq!(
            fs.link(&sr, &root, &name("dir-link")).await,
            Err(nfsstat3::NFS3ERR_ISDIR)
        );
        for bad in ["..", ".", "x/y", ""] {
            assert_eq!(
                fs.link(&file, &sr, &name(bad)).await,
                Err(nfsstat3::NFS3ERR_INVAL),
                "{bad:?}"
            );
        }
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let out = fs.lookup(&root, &name("out")).await.unwrap();
        assert_eq!(
            fs.link(&file, &out, &name("escaped")).await,
            Err(nfsstat3::NFS3ERR_NOTDIR)
        );
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        // The handle outlives the name it was made under.
        fs.remove(&sr, &name("a")).await.unwrap();
        assert_eq!(fs.getattr(&file).await.unwrap().nlink, 1);
        assert_eq!(fs.read(&file, 0, 10).await.unwrap().0, b"data");
    }

    #[tokio::test]
    async fn listings_start_with_dot_and_dot_dot() {
        let dir = tempfile::tempdir().unwrap();
        let fs = DirFs::new(dir.path()).unwrap();
        let root = fs.root_dir();
        let (sr, _) = fs.mkdir(&root, &name("sr")).await.unwrap();
        fs.create(&sr, &name("b"), sattr3::default()).await.unwrap();
        fs.create(&sr, &name("a"), sattr3::default()).await.unwrap();

        let top = listing(&fs, &root, 0).await;
        assert_eq!(names(&top), [".", "..", "sr"]);
        assert_eq!(top[0].name_handle, Some(root));
        // `..` of the export root: the root's own id, without handle or attributes.
        assert_eq!(top[1].fileid, root.as_u64());
        assert_eq!(
            (top[1].name_handle, top[1].name_attributes.is_none()),
            (None, true)
        );

        let inner = listing(&fs, &sr, 0).await;
        assert_eq!(names(&inner), [".", "..", "a", "b"]);
        assert_eq!(inner[0].name_handle, Some(sr));
        assert_eq!(inner[1].name_handle, Some(root));
        assert_eq!(
            inner.iter().map(|e| e.cookie).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        // A cookie resumes after its entry.
        assert_eq!(names(&listing(&fs, &sr, 2).await), ["a", "b"]);
        assert_eq!(names(&listing(&fs, &sr, 1).await), ["..", "a", "b"]);
        assert!(listing(&fs, &sr, 4).await.is_empty());
    }

    #[tokio::test]
    async fn exclusive_create_is_idempotent_for_its_own_verifier() {
        let dir = tempfile::tempdir().unwrap();
        let fs = DirFs::new(dir.path()).unwrap();
        let root = fs.root_dir();
        let verf = createverf3(*b"\x01\x02\x03\x04\x05\x06\x07\x08");
        let a = fs.create_exclusive(&root, &name("x"), verf).await.unwrap();
        let b = fs.create_exclusive(&root, &name("x"), verf).await.unwrap();
        assert_eq!(a, b);
        let other = createverf3([9; 8]);
        assert_eq!(
            fs.create_exclusive(&root, &name("x"), other).await.err(),
            Some(nfsstat3::NFS3ERR_EXIST)
        );
    }
}
