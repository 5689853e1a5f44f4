//! The initramfs: a newc cpio the kernel unpacks as its root filesystem.

use std::io::{self, Write};

use cpio::NewcBuilder;

/// One entry of the initramfs.
pub enum Entry {
    /// A directory.
    Dir(String),
    /// A file with its mode and contents.
    File {
        /// The path, without a leading `/`.
        path: String,
        /// The permission bits.
        mode: u32,
        /// The contents.
        data: Vec<u8>,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// Writes `entries` as a newc cpio archive. Owners are root and times are 0, so that the
/// same inputs give the same bytes.
pub fn write_cpio(entries: &[Entry], mut out: impl Write) -> io::Result<()> {
    for (i, entry) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        let (path, mode, data): (&str, u32, &[u8]) = match entry {
            Entry::Dir(path) => (path, S_IFDIR | 0o755, &[]),
            Entry::File { path, mode, data } => (path, S_IFREG | mode, data),
        };
        let len = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{path}: too large for cpio")))?;
        let mut w = NewcBuilder::new(path)
            .ino(ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(if matches!(entry, Entry::Dir(_)) { 2 } else { 1 })
            .mtime(0)
            .write(&mut out, len);
        w.write_all(data)?;
        w.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_reads_back() {
        let entries = vec![
            Entry::Dir("etc".into()),
            Entry::File {
                path: "init".into(),
                mode: 0o755,
                data: b"#!agent".to_vec(),
            },
        ];
        let mut out = Vec::new();
        write_cpio(&entries, &mut out).unwrap();
        let r = cpio::NewcReader::new(&out[..]).unwrap();
        assert_eq!(r.entry().name(), "etc");
        let mut r = cpio::NewcReader::new(r.finish().unwrap()).unwrap();
        assert_eq!(r.entry().name(), "init");
        assert_eq!(r.entry().mode() & 0o777, 0o755);
        let mut data = Vec::new();
        io::Read::read_to_end(&mut r, &mut data).unwrap();
        assert_eq!(data, b"#!agent");
        let mut again = Vec::new();
        write_cpio(&entries, &mut again).unwrap();
        assert_eq!(out, again, "reproducible");
    }
}
