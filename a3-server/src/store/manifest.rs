//! The disk manifest format: one disk of one version, as an ordered list of block ids with
//! zero marks.
//!
//! ```text
//! 0   magic "A3MF" (4 B) | format version (1 B) | reserved, zero (3 B)
//! 8   block size (u32 LE)
//! 12  disk size (u64 LE)
//! 20  block count (u64 LE)
//! 28  one entry per block, in disk order:
//!       0x00            an all-zero block (never stored)
//!       0x01 + 32 B     the block's id (BLAKE3-256 of its plaintext)
//! end BLAKE3-256 of every byte before it (32 B)
//! ```
//!
//! A manifest is stored under the BLAKE3 of its whole file, in the store's manifest
//! namespace, never among chunks. The trailing checksum makes a file self-verifying even
//! when read without its name.

use a3_shared::chunk::BlockId;
use a3_shared::formats::{MANIFEST_FORMAT_VERSION, MANIFEST_MAGIC, MAX_BLOCK_SIZE};
use a3_shared::proto::Manifest;

const HEADER_LEN: usize = 28;
const DIGEST_LEN: usize = 32;
const TAG_ZERO: u8 = 0;
const TAG_CHUNK: u8 = 1;

/// One disk of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskManifest {
    /// Disk size in bytes.
    pub size: u64,
    /// Block size in bytes; the last block may be short.
    pub block_size: u32,
    /// Block ids in disk order; `None` marks an all-zero block.
    pub blocks: Vec<Option<BlockId>>,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file is not a manifest this build reads, or is damaged.
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// The fields disagree with each other.
    #[error("inconsistent manifest: {0}")]
    Inconsistent(String),
}

impl DiskManifest {
    /// Checks that the block list covers exactly `size` bytes at `block_size`.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.block_size == 0 || self.block_size as usize > MAX_BLOCK_SIZE {
            return Err(ManifestError::Inconsistent(format!(
                "block size {} is outside 1..={MAX_BLOCK_SIZE}",
                self.block_size
            )));
        }
        let want = self.size.div_ceil(u64::from(self.block_size));
        if self.blocks.len() as u64 != want {
            return Err(ManifestError::Inconsistent(format!(
                "{} blocks listed, but a {}-byte disk at {}-byte blocks has {want}",
                self.blocks.len(),
                self.size,
                self.block_size
            )));
        }
        Ok(())
    }

    /// The byte offset of block `index` on the disk.
    pub fn offset_of(&self, index: usize) -> u64 {
        index as u64 * u64::from(self.block_size)
    }

    /// The stored blocks: (index, id), in disk order.
    pub fn chunks(&self) -> impl Iterator<Item = (usize, BlockId)> + '_ {
        self.blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|id| (i, id)))
    }

    /// The file bytes, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let stored = self.blocks.iter().flatten().count();
        let mut out = Vec::with_capacity(HEADER_LEN + self.blocks.len() + stored * 32 + DIGEST_LEN);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.push(MANIFEST_FORMAT_VERSION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        for b in &self.blocks {
            match b {
                None => out.push(TAG_ZERO),
                Some(id) => {
                    out.push(TAG_CHUNK);
                    out.extend_from_slice(&id.0);
                }
            }
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Parses and checks a manifest file.
    pub fn decode(bytes: &[u8]) -> Result<DiskManifest, ManifestError> {
        let bad = |m: String| ManifestError::Malformed(m);
        if bytes.len() < HEADER_LEN + DIGEST_LEN {
            return Err(bad(format!("{} bytes is too short", bytes.len())));
        }
        if &bytes[0..4] != MANIFEST_MAGIC {
            return Err(bad("bad magic (not a manifest)".into()));
        }
        if bytes[4] != MANIFEST_FORMAT_VERSION {
            return Err(bad(format!("format version {} is unknown", bytes[4])));
        }
        let (body, sum) = bytes.split_at(bytes.len() - DIGEST_LEN);
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("checksum mismatch (the file is damaged)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().expect("8 bytes"));
        let block_size = u32_at(8);
        let size = u64_at(12);
        let count = u64_at(20);
        // Each entry takes at least one byte: bounds the allocation by the file's size.
        let mut entries = &body[HEADER_LEN..];
        if count > entries.len() as u64 {
            return Err(bad(format!(
                "{count} blocks declared in {} bytes",
                entries.len()
            )));
        }
        let mut blocks = Vec::with_capacity(count as usize);
        while let Some((&tag, rest)) = entries.split_first() {
            match tag {
                TAG_ZERO => {
                    blocks.push(None);
                    entries = rest;
                }
                TAG_CHUNK if rest.len() >= 32 => {
                    let id: [u8; 32] = rest[..32].try_into().expect("32 bytes");
                    blocks.push(Some(BlockId(id)));
                    entries = &rest[32..];
                }
                TAG_CHUNK => return Err(bad("truncated block entry".into())),
                t => return Err(bad(format!("unknown entry tag {t}"))),
            }
        }
        if blocks.len() as u64 != count {
            return Err(bad(format!(
                "{count} blocks declared, {} present",
                blocks.len()
            )));
        }
        let m = DiskManifest {
            size,
            block_size,
            blocks,
        };
        m.validate()?;
        Ok(m)
    }
}

impl From<Manifest> for DiskManifest {
    fn from(m: Manifest) -> DiskManifest {
        DiskManifest {
            size: m.size,
            block_size: m.block_size,
            blocks: m.blocks.into_iter().map(|b| b.map(BlockId)).collect(),
        }
    }
}

impl From<DiskManifest> for Manifest {
    fn from(m: DiskManifest) -> Manifest {
        Manifest {
            size: m.size,
            block_size: m.block_size,
            blocks: m.blocks.into_iter().map(|b| b.map(|id| id.0)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DiskManifest {
        DiskManifest {
            size: 3 * 4096 + 100,
            block_size: 4096,
            blocks: vec![
                Some(BlockId::of(b"a")),
                None,
                Some(BlockId::of(b"b")),
                Some(BlockId::of(b"a")),
            ],
        }
    }

    #[test]
    fn round_trip_with_zero_marks_and_a_short_last_block() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(&bytes[..4], b"A3MF");
        assert_eq!(bytes.len(), HEADER_LEN + 4 + 3 * 32 + DIGEST_LEN);
        assert_eq!(DiskManifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.chunks().map(|(i, _)| i).collect::<Vec<_>>(), [0, 2, 3]);
        assert_eq!(m.offset_of(2), 8192);
    }

    #[test]
    fn the_format_is_pinned() {
        // Any change to the layout changes this digest: bump MANIFEST_FORMAT_VERSION then.
        let bytes = sample().encode();
        assert_eq!(
            BlockId::of(&bytes).to_hex(),
            "2eb6c7a3a91ef3a769de24f4eec1c7f40523ace712495cc9d885a6bc3ecce308"
        );
    }

    #[test]
    fn damage_and_lies_are_refused() {
        let bytes = sample().encode();
        for i in [0, 4, 9, 30, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(DiskManifest::decode(&b).is_err(), "flip at {i} accepted");
        }
        assert!(DiskManifest::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(
            DiskManifest::decode(b"A3\x01\x00chunk-ish bytes that are not a manifest").is_err()
        );
        let mut wrong = sample();
        wrong.blocks.pop();
        assert!(wrong.validate().is_err());
        // A consistent checksum over inconsistent fields is still refused.
        assert!(DiskManifest::decode(&wrong.encode()).is_err());
    }

    #[test]
    fn converts_to_and_from_the_wire_manifest() {
        let m = sample();
        let wire: Manifest = m.clone().into();
        assert_eq!(wire.blocks[1], None);
        assert_eq!(DiskManifest::from(wire), m);
    }
}
