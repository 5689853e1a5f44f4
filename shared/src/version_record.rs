//! The version record: one committed version of the A3's store, described by the store
//! itself, so that the catalog can be rebuilt from the store alone (`a3-server store
//! rebuild-catalog`). It carries everything a catalog version row and its disk rows hold.
//!
//! ```text
//! 0   magic "A3VR" (4 B) | format version (1 B) | reserved, zero (3 B)
//! 8   version id (i64 LE, > 0): the catalog's id of the version
//! 16  commit time, unix seconds (i64 LE)
//! 24  subject: length (u32 LE) + UTF-8
//!     metadata: length (u32 LE) + UTF-8 (the caller's JSON, as text)
//!     disk count (u32 LE, ≥ 1), then per disk, in the order given:
//!       name: length (u32 LE) + UTF-8
//!       disk size (u64 LE) | block size (u32 LE) | manifest digest (32 B)
//! end BLAKE3-256 of every byte before it (32 B)
//! ```
//!
//! Like a manifest, the trailing checksum makes the file self-verifying. The decoder reads
//! at most [`MAX_VERSION_RECORD_LEN`] bytes and allocates nothing a length field alone
//! asks for: every length is checked against the bytes that remain first.

use crate::chunk::BlockId;
use crate::formats::{
    MAX_BLOCK_SIZE, MAX_VERSION_RECORD_LEN, VERSION_RECORD_FORMAT_VERSION, VERSION_RECORD_MAGIC,
};

const HEADER_LEN: usize = 24;
const DIGEST_LEN: usize = 32;
/// The fixed part of a disk entry: name length, size, block size, digest.
const DISK_FIXED_LEN: usize = 4 + 8 + 4 + DIGEST_LEN;

/// One committed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// The catalog's id of the version.
    pub id: i64,
    /// What was backed up.
    pub subject: String,
    /// Unix seconds of the commit.
    pub created_at: i64,
    /// The caller's JSON metadata, as text.
    pub metadata: String,
    /// Its disks.
    pub disks: Vec<RecordDisk>,
}

/// One disk of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordDisk {
    /// The disk's name within the version.
    pub name: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// The digest naming the disk's manifest in the store.
    pub manifest: BlockId,
}

/// Bytes that are not a usable version record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Longer than any record the A3 writes.
    #[error("{len} bytes is over the {MAX_VERSION_RECORD_LEN}-byte limit of a version record")]
    TooLong {
        /// The length seen.
        len: usize,
    },
    /// Ends before its fields do.
    #[error("truncated: the {field} runs past the end")]
    Truncated {
        /// The field that does not fit.
        field: &'static str,
    },
    /// Not a version record.
    #[error("bad magic (not a version record)")]
    BadMagic,
    /// A layout this build does not read.
    #[error("format version {0} is unknown")]
    UnknownFormat(u8),
    /// The bytes changed since they were written.
    #[error("checksum mismatch (the file is damaged)")]
    Checksum,
    /// Well-formed and checksummed, but the fields make no sense.
    #[error("invalid: {0}")]
    Invalid(String),
}

impl VersionRecord {
    /// Checks the fields a record must satisfy, before writing or after reading.
    pub fn validate(&self) -> Result<(), RecordError> {
        let bad = |m: String| Err(RecordError::Invalid(m));
        if self.id <= 0 {
            return bad(format!("version id {} is not positive", self.id));
        }
        if self.subject.is_empty() {
            return bad("the subject is empty".into());
        }
        if self.disks.is_empty() {
            return bad("no disk".into());
        }
        for (i, d) in self.disks.iter().enumerate() {
            if d.name.is_empty() {
                return bad(format!("disk {i} has no name"));
            }
            if self.disks[..i].iter().any(|o| o.name == d.name) {
                return bad(format!("disk '{}' is listed twice", d.name));
            }
            if d.block_size == 0 || d.block_size as usize > MAX_BLOCK_SIZE {
                return bad(format!(
                    "disk '{}': block size {} is outside 1..={MAX_BLOCK_SIZE}",
                    d.name, d.block_size
                ));
            }
        }
        Ok(())
    }

    /// The file bytes, checksum included; fails on invalid fields or an oversized record.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.validate()?;
        let mut out = Vec::with_capacity(
            HEADER_LEN
                + 8
                + self.subject.len()
                + self.metadata.len()
                + 4
                + self.disks.len() * DISK_FIXED_LEN
                + DIGEST_LEN,
        );
        out.extend_from_slice(VERSION_RECORD_MAGIC);
        out.push(VERSION_RECORD_FORMAT_VERSION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.created_at.to_le_bytes());
        put_str(&mut out, &self.subject)?;
        put_str(&mut out, &self.metadata)?;
        out.extend_from_slice(&len_u32(self.disks.len())?.to_le_bytes());
        for d in &self.disks {
            put_str(&mut out, &d.name)?;
            out.extend_from_slice(&d.size.to_le_bytes());
            out.extend_from_slice(&d.block_size.to_le_bytes());
            out.extend_from_slice(&d.manifest.0);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        if out.len() > MAX_VERSION_RECORD_LEN {
            return Err(RecordError::TooLong { len: out.len() });
        }
        Ok(out)
    }

    /// Parses and checks a record file.
    pub fn decode(bytes: &[u8]) -> Result<VersionRecord, RecordError> {
        if bytes.len() > MAX_VERSION_RECORD_LEN {
            return Err(RecordError::TooLong { len: bytes.len() });
        }
        if bytes.len() < HEADER_LEN + DIGEST_LEN {
            return Err(RecordError::Truncated { field: "header" });
        }
        if &bytes[0..4] != VERSION_RECORD_MAGIC {
            return Err(RecordError::BadMagic);
        }
        if bytes[4] != VERSION_RECORD_FORMAT_VERSION {
            return Err(RecordError::UnknownFormat(bytes[4]));
        }
        let (body, sum) = bytes.split_at(bytes.len() - DIGEST_LEN);
        if blake3::hash(body).as_bytes() != sum {
            return Err(RecordError::Checksum);
        }
        if body[5..8] != [0; 3] {
            return Err(RecordError::Invalid("reserved bytes are not zero".into()));
        }
        let mut r = Reader { rest: &body[8..] };
        let id = i64::from_le_bytes(r.take_array("version id")?);
        let created_at = i64::from_le_bytes(r.take_array("commit time")?);
        let subject = r.take_str("subject")?;
        let metadata = r.take_str("metadata")?;
        let count = u32::from_le_bytes(r.take_array("disk count")?) as usize;
        // Each disk takes at least DISK_FIXED_LEN bytes: bounds the allocation by the file.
        if count > r.rest.len() / DISK_FIXED_LEN {
            return Err(RecordError::Truncated { field: "disk list" });
        }
        let mut disks = Vec::with_capacity(count);
        for _ in 0..count {
            let name = r.take_str("disk name")?;
            let size = u64::from_le_bytes(r.take_array("disk size")?);
            let block_size = u32::from_le_bytes(r.take_array("block size")?);
            let manifest = BlockId(r.take_array("manifest digest")?);
            disks.push(RecordDisk {
                name,
                size,
                block_size,
                manifest,
            });
        }
        if !r.rest.is_empty() {
            return Err(RecordError::Invalid(format!(
                "{} bytes after the last disk",
                r.rest.len()
            )));
        }
        let record = VersionRecord {
            id,
            subject,
            created_at,
            metadata,
            disks,
        };
        record.validate()?;
        Ok(record)
    }
}

fn len_u32(len: usize) -> Result<u32, RecordError> {
    u32::try_from(len).map_err(|_| RecordError::TooLong { len })
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), RecordError> {
    out.extend_from_slice(&len_u32(s.len())?.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Takes fields off the front of the body, checking each length first.
struct Reader<'a> {
    rest: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], RecordError> {
        if n > self.rest.len() {
            return Err(RecordError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn take_array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RecordError> {
        Ok(self.take(N, field)?.try_into().expect("N bytes"))
    }

    fn take_str(&mut self, field: &'static str) -> Result<String, RecordError> {
        let len = u32::from_le_bytes(self.take_array(field)?) as usize;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| RecordError::Invalid(format!("the {field} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VersionRecord {
        VersionRecord {
            id: 7,
            subject: "0b5c…-vm-uuid".into(),
            created_at: 1_700_000_000,
            metadata: r#"{"name_label":"web","disks":[]}"#.into(),
            disks: vec![
                RecordDisk {
                    name: "xvda".into(),
                    size: 5 << 20,
                    block_size: 1 << 20,
                    manifest: BlockId::of(b"manifest a"),
                },
                RecordDisk {
                    name: "xvdb".into(),
                    size: 3,
                    block_size: 4096,
                    manifest: BlockId::of(b"manifest b"),
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let bytes = r.encode().unwrap();
        assert_eq!(&bytes[..4], b"A3VR");
        assert_eq!(VersionRecord::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn the_format_is_pinned() {
        // Any change to the layout changes this digest: bump VERSION_RECORD_FORMAT_VERSION.
        let bytes = sample().encode().unwrap();
        assert_eq!(
            BlockId::of(&bytes).to_hex(),
            "38226c221f10d7235fe3af7a53650ca28edf76ecdbfff3db764fb744ead3b03f"
        );
    }

    #[test]
    fn every_damage_is_a_typed_error() {
        let bytes = sample().encode().unwrap();
        // Every single bit flip and every truncation is refused, never a panic.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(VersionRecord::decode(&b).is_err(), "flip at {i} accepted");
            assert!(VersionRecord::decode(&bytes[..i]).is_err(), "cut at {i}");
        }
        let mut manifest = b"A3MF\x01\0\0\0".to_vec();
        manifest.resize(100, 0);
        assert_eq!(VersionRecord::decode(&manifest), Err(RecordError::BadMagic));
        let mut b = bytes.clone();
        b[4] = 9;
        assert_eq!(
            VersionRecord::decode(&b),
            Err(RecordError::UnknownFormat(9))
        );
        let mut b = bytes.clone();
        b[30] ^= 1;
        assert_eq!(VersionRecord::decode(&b), Err(RecordError::Checksum));
        let huge = vec![0u8; MAX_VERSION_RECORD_LEN + 1];
        assert!(matches!(
            VersionRecord::decode(&huge),
            Err(RecordError::TooLong { .. })
        ));
    }

    /// A checksum recomputed over lying lengths (a hostile or buggy writer) is still
    /// refused, without allocating what the lengths ask for.
    #[test]
    fn lies_under_a_good_checksum_are_refused() {
        let reseal = |mut body: Vec<u8>| {
            let sum = blake3::hash(&body);
            body.extend_from_slice(sum.as_bytes());
            body
        };
        let bytes = sample().encode().unwrap();
        let body = &bytes[..bytes.len() - DIGEST_LEN];
        // The subject's length claims 4 GiB.
        let mut b = body.to_vec();
        b[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            VersionRecord::decode(&reseal(b)),
            Err(RecordError::Truncated { field: "subject" })
        );
        // A billion disks.
        let disks_at = 24 + 4 + sample().subject.len() + 4 + sample().metadata.len();
        let mut b = body.to_vec();
        b[disks_at..disks_at + 4].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert_eq!(
            VersionRecord::decode(&reseal(b)),
            Err(RecordError::Truncated { field: "disk list" })
        );
        // Fields that are well formed but wrong.
        let mut r = sample();
        r.disks[1].name = "xvda".into();
        assert!(matches!(r.encode(), Err(RecordError::Invalid(_))));
        let mut r = sample();
        r.id = 0;
        assert!(matches!(r.encode(), Err(RecordError::Invalid(_))));
    }
}
