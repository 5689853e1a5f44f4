//! The XVA format: XAPI's VM export and import (`PUT /import`).
//!
//! An XVA is a tar file. Its first member is `ova.xml`, an XML-RPC value
//! `{version: {…, export_vsn: 2}, objects: [{class, id: "Ref:N", snapshot: record}]}`. Each
//! disk follows as `Ref:N/%08d` members of 1 MiB (all-zero chunks are left out, except the
//! first and the last, so the disk's size is known), each followed by `Ref:N/%08d.xxhash`:
//! the chunk's XXH64 as 16 upper-case hex digits.
//!
//! [`XvaWriter`] streams one out; [`read_xva`] streams one in, verifying every checksum, and
//! hands the metadata and the chunks to an [`XvaSink`]. An XVA is untrusted input: every
//! size is bounded and every chunk's checksum is checked before the sink sees it.

use std::io::{self, Read, Write};

use xxhash_rust::xxh64::xxh64;

use crate::xapi_wire::{Value, WireError, xmlrpc};

/// The size of a disk chunk.
pub const CHUNK_SIZE: u64 = 1024 * 1024;
/// The name of the metadata member.
const OVA_XML: &str = "ova.xml";
/// The largest `ova.xml` we read: real ones are kilobytes.
const MAX_OVA_XML: u64 = 16 * 1024 * 1024;
/// The checksum suffix of a chunk member.
const XXHASH_SUFFIX: &str = ".xxhash";

/// What can be wrong with an XVA.
#[derive(Debug, thiserror::Error)]
pub enum XvaError {
    /// Reading or writing the bytes failed.
    #[error("XVA I/O: {0}")]
    Io(#[from] io::Error),
    /// `ova.xml` is not a valid XML-RPC value.
    #[error("XVA ova.xml: {0}")]
    Metadata(#[from] WireError),
    /// The archive's structure is wrong; the message names the member.
    #[error("not a valid XVA: {0}")]
    Invalid(String),
    /// A chunk's bytes do not match its checksum.
    #[error(
        "XVA chunk {member}: checksum mismatch (expected {expected}, got {actual}); the file is corrupt"
    )]
    Checksum {
        /// The chunk member, e.g. `Ref:3/00000012`.
        member: String,
        /// The checksum in the archive.
        expected: String,
        /// The checksum of the bytes.
        actual: String,
    },
    /// The sink refused the content.
    #[error("XVA import: {0}")]
    Sink(String),
}

/// The XXH64 of `data` as XAPI writes it: 16 upper-case hex digits.
pub fn chunk_checksum(data: &[u8]) -> String {
    format!("{:016X}", xxh64(data, 0))
}

fn header(path: &str, len: u64) -> Result<tar::Header, XvaError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(len);
    h.set_mode(0o644);
    // Fixed owner and time, so that the same inputs give the same bytes.
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Streams an XVA out.
pub struct XvaWriter<W: Write> {
    tar: tar::Builder<W>,
}

impl<W: Write> XvaWriter<W> {
    /// Starts an XVA whose `ova.xml` is `ova`.
    pub fn new(out: W, ova: &Value) -> Result<XvaWriter<W>, XvaError> {
        let mut tar = tar::Builder::new(out);
        let xml = xmlrpc::encode_value(ova);
        tar.append(&header(OVA_XML, xml.len() as u64)?, xml.as_bytes())?;
        Ok(XvaWriter { tar })
    }

    /// Appends the disk `disk_ref` (e.g. `Ref:3`) of `size` bytes. `read(offset, buf)` fills
    /// `buf` with the disk's bytes at `offset`.
    pub fn write_disk(
        &mut self,
        disk_ref: &str,
        size: u64,
        mut read: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> Result<(), XvaError> {
        let chunks = size.div_ceil(CHUNK_SIZE).max(1);
        let mut buf = vec![0u8; CHUNK_SIZE as usize];
        for i in 0..chunks {
            let len = CHUNK_SIZE.min(size.saturating_sub(i * CHUNK_SIZE)) as usize;
            let data = &mut buf[..len];
            read(i * CHUNK_SIZE, data)?;
            let edge = i == 0 || i == chunks - 1;
            if !edge && data.iter().all(|b| *b == 0) {
                continue;
            }
            let name = format!("{disk_ref}/{i:08}");
            self.tar.append(&header(&name, len as u64)?, &*data)?;
            let sum = chunk_checksum(data);
            self.tar.append(
                &header(&format!("{name}{XXHASH_SUFFIX}"), sum.len() as u64)?,
                sum.as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Ends the archive and returns the writer.
    pub fn finish(self) -> Result<W, XvaError> {
        Ok(self.tar.into_inner()?)
    }
}

/// Receives an XVA's content from [`read_xva`].
pub trait XvaSink {
    /// The parsed `ova.xml`, before any chunk.
    fn metadata(&mut self, ova: &Value) -> Result<(), String>;
    /// A verified chunk of the disk `disk_ref` at byte `offset`. Chunks that are absent
    /// from the archive are zeros.
    fn chunk(&mut self, disk_ref: &str, offset: u64, data: &[u8]) -> Result<(), String>;
}

/// Reads an XVA from `input`, verifying every chunk, and feeds it to `sink`. Returns the
/// number of chunks read.
pub fn read_xva(input: impl Read, sink: &mut impl XvaSink) -> Result<u64, XvaError> {
    let mut archive = tar::Archive::new(input);
    let mut entries = archive.entries()?;
    let first = entries
        .next()
        .ok_or_else(|| XvaError::Invalid("the archive is empty".into()))??;
    if first.path_bytes().as_ref() != OVA_XML.as_bytes() {
        return Err(XvaError::Invalid(format!(
            "the first member is {:?}, not ova.xml",
            String::from_utf8_lossy(&first.path_bytes())
        )));
    }
    let xml = read_member(first, MAX_OVA_XML, OVA_XML)?;
    let ova = xmlrpc::decode_value_document(&xml)?;
    sink.metadata(&ova).map_err(XvaError::Sink)?;

    // A chunk waits here until its checksum member arrives.
    let mut pending: Option<(String, String, u64, Vec<u8>)> = None;
    let mut count = 0;
    for entry in entries {
        let entry = entry?;
        let path = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| XvaError::Invalid("a member name is not UTF-8".into()))?;
        if let Some(chunk_name) = path.strip_suffix(XXHASH_SUFFIX) {
            let Some((name, disk_ref, offset, data)) = pending.take() else {
                return Err(XvaError::Invalid(format!("{path} follows no chunk")));
            };
            if name != chunk_name {
                return Err(XvaError::Invalid(format!(
                    "{path} does not follow {chunk_name}"
                )));
            }
            let expected = String::from_utf8_lossy(&read_member(entry, 64, &path)?)
                .trim()
                .to_ascii_uppercase();
            let actual = chunk_checksum(&data);
            if expected != actual {
                return Err(XvaError::Checksum {
                    member: name,
                    expected,
                    actual,
                });
            }
            sink.chunk(&disk_ref, offset, &data)
                .map_err(XvaError::Sink)?;
            count += 1;
            continue;
        }
        if let Some((name, ..)) = &pending {
            return Err(XvaError::Invalid(format!(
                "chunk {name} has no {XXHASH_SUFFIX} member"
            )));
        }
        let (disk_ref, index) = parse_chunk_name(&path)?;
        let disk_ref = disk_ref.to_owned();
        let data = read_member(entry, CHUNK_SIZE, &path)?;
        pending = Some((path, disk_ref, index * CHUNK_SIZE, data));
    }
    if let Some((name, ..)) = pending {
        return Err(XvaError::Invalid(format!(
            "chunk {name} has no {XXHASH_SUFFIX} member"
        )));
    }
    Ok(count)
}

/// Splits `Ref:3/00000012` into (`Ref:3`, 12).
fn parse_chunk_name(path: &str) -> Result<(&str, u64), XvaError> {
    let bad = || XvaError::Invalid(format!("unexpected member {path:?}"));
    let (disk_ref, index) = path.split_once('/').ok_or_else(bad)?;
    if !disk_ref.starts_with("Ref:")
        || index.len() != 8
        || !index.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    Ok((disk_ref, index.parse().map_err(|_| bad())?))
}

fn read_member(entry: impl Read, max: u64, name: &str) -> Result<Vec<u8>, XvaError> {
    let mut data = Vec::new();
    entry.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(XvaError::Invalid(format!(
            "member {name} is larger than {max} bytes"
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Collect {
        ova: Option<Value>,
        disks: BTreeMap<String, Vec<u8>>,
    }

    impl XvaSink for Collect {
        fn metadata(&mut self, ova: &Value) -> Result<(), String> {
            self.ova = Some(ova.clone());
            Ok(())
        }
        fn chunk(&mut self, disk_ref: &str, offset: u64, data: &[u8]) -> Result<(), String> {
            let disk = self.disks.entry(disk_ref.to_owned()).or_default();
            let end = offset as usize + data.len();
            if disk.len() < end {
                disk.resize(end, 0);
            }
            disk[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
    }

    fn sample_ova() -> Value {
        let mut version = BTreeMap::new();
        version.insert("export_vsn".to_owned(), Value::String("2".into()));
        let mut root = BTreeMap::new();
        root.insert("version".to_owned(), Value::Struct(version));
        root.insert("objects".to_owned(), Value::Array(vec![]));
        Value::Struct(root)
    }

    fn disk() -> Vec<u8> {
        // 3.5 chunks: data, zeros, data, half a chunk of zeros at the end.
        let mut d = vec![0u8; (3 * CHUNK_SIZE + CHUNK_SIZE / 2) as usize];
        d[..CHUNK_SIZE as usize].fill(0xAB);
        d[2 * CHUNK_SIZE as usize + 5] = 1;
        d
    }

    fn xva(d: &[u8]) -> Vec<u8> {
        let mut w = XvaWriter::new(Vec::new(), &sample_ova()).unwrap();
        w.write_disk("Ref:3", d.len() as u64, |off, buf| {
            buf.copy_from_slice(&d[off as usize..off as usize + buf.len()]);
            Ok(())
        })
        .unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_skips_inner_zero_chunks_only() {
        let d = disk();
        let bytes = xva(&d);
        let mut sink = Collect::default();
        // Chunks 0, 2 and the last (3, all zeros) are stored; chunk 1 is skipped.
        assert_eq!(read_xva(&bytes[..], &mut sink).unwrap(), 3);
        assert_eq!(sink.ova, Some(sample_ova()));
        assert!(sink.disks["Ref:3"] == d, "the last chunk carries the size");
    }

    #[test]
    fn same_inputs_same_bytes() {
        let d = disk();
        assert!(xva(&d) == xva(&d));
    }

    #[test]
    fn corrupt_chunk_is_refused_naming_it() {
        let d = disk();
        let mut bytes = xva(&d);
        // The first chunk's data starts after ova.xml's header+data and the chunk header.
        let pos = bytes.windows(4).position(|w| w == [0xAB; 4]).unwrap();
        bytes[pos + 100] ^= 0xFF;
        let err = read_xva(&bytes[..], &mut Collect::default()).unwrap_err();
        assert!(
            matches!(&err, XvaError::Checksum { member, .. } if member == "Ref:3/00000000"),
            "{err}"
        );
    }

    #[test]
    fn known_checksum() {
        // XXH64 of the empty input with seed 0.
        assert_eq!(chunk_checksum(b""), "EF46DB3751D8E999");
    }
}
