//! Blocks and chunks: how a disk block is named, and how it travels and rests.
//!
//! A block's id is the BLAKE3-256 of its plaintext, so the same bytes on any disk of any VM
//! dedup to one chunk. An all-zero block is never hashed, sent or stored: manifests mark it.
//! A chunk is a block encoded for the wire and the store:
//!
//! ```text
//! 0  magic "A3" (2 B) | format version (1 B) | codec (1 B: 0 raw, 1 zstd)
//! 4  plaintext length (u32, little-endian)
//! 8  payload: the plaintext (raw) or its zstd frame
//! ```
//!
//! Compression keeps the raw block when zstd does not shrink it. Decoding always checks
//! the plaintext's BLAKE3 against the id it was asked for: a chunk whose bytes don't match
//! its id is an error, never data.

use std::fmt;
use std::str::FromStr;

use crate::formats::{CHUNK_FORMAT_VERSION, CHUNK_HEADER_LEN, CHUNK_MAGIC, MAX_BLOCK_SIZE};

/// The id of a block: BLAKE3-256 of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    /// The id of `plain`.
    pub fn of(plain: &[u8]) -> BlockId {
        BlockId(*blake3::hash(plain).as_bytes())
    }

    /// The id as 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from_digit(u32::from(b >> 4), 16).expect("nibble"));
            s.push(char::from_digit(u32::from(b & 15), 16).expect("nibble"));
        }
        s
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockId({})", &self.to_hex()[..16])
    }
}

impl From<[u8; 32]> for BlockId {
    fn from(bytes: [u8; 32]) -> BlockId {
        BlockId(bytes)
    }
}

/// A block id that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a block id (64 hex digits): {0:?}")]
pub struct BadBlockId(String);

impl FromStr for BlockId {
    type Err = BadBlockId;

    fn from_str(s: &str) -> Result<BlockId, BadBlockId> {
        let bad = || BadBlockId(s.chars().take(80).collect());
        if s.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(BlockId(out))
    }
}

/// Whether every byte of `block` is zero. Word-at-a-time: this runs on every block read.
pub fn is_zero(block: &[u8]) -> bool {
    let words = block.chunks_exact(16);
    let tail = words.remainder();
    words
        .map(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")))
        .fold(0, |acc, w| acc | w)
        == 0
        && tail.iter().all(|b| *b == 0)
}

/// How a chunk's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// The plaintext itself: compression did not shrink it.
    Raw = 0,
    /// A zstd frame.
    Zstd = 1,
}

/// What can be wrong with a chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// The bytes are not a chunk of a format this build reads.
    #[error("chunk {id}: malformed: {reason}")]
    Malformed {
        /// The chunk asked for.
        id: BlockId,
        /// What is wrong.
        reason: String,
    },
    /// The plaintext does not hash to the chunk's id: the chunk is corrupt.
    #[error("chunk {id}: content does not match its id (got {actual}); the chunk is corrupt")]
    Mismatch {
        /// The chunk asked for.
        id: BlockId,
        /// The BLAKE3 of what was decoded.
        actual: BlockId,
    },
    /// Compression failed.
    #[error("chunk compression failed: {0}")]
    Compress(std::io::Error),
}

/// Encodes blocks into chunks, reusing one zstd context (allocating one per block costs
/// more than compressing a small one).
pub struct ChunkEncoder {
    zstd: zstd::bulk::Compressor<'static>,
}

impl ChunkEncoder {
    /// An encoder at zstd `level` (1 to 3 is the data path's range).
    pub fn new(level: i32) -> Result<ChunkEncoder, ChunkError> {
        Ok(ChunkEncoder {
            zstd: zstd::bulk::Compressor::new(level).map_err(ChunkError::Compress)?,
        })
    }

    /// Encodes `plain` (at most [`MAX_BLOCK_SIZE`] bytes) into `out`, replacing its
    /// contents. Keeps the raw bytes when zstd does not make them smaller.
    pub fn encode_into(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<Codec, ChunkError> {
        assert!(
            plain.len() <= MAX_BLOCK_SIZE,
            "block larger than MAX_BLOCK_SIZE"
        );
        out.clear();
        out.reserve(CHUNK_HEADER_LEN + plain.len());
        out.extend_from_slice(&[0; CHUNK_HEADER_LEN]);
        // Compress into the spare room; a result no smaller than the plaintext is useless.
        out.resize(CHUNK_HEADER_LEN + plain.len(), 0);
        let codec = match self
            .zstd
            .compress_to_buffer(plain, &mut out[CHUNK_HEADER_LEN..])
        {
            Ok(n) if n < plain.len() => {
                out.truncate(CHUNK_HEADER_LEN + n);
                Codec::Zstd
            }
            // Err here means "did not fit": the data is incompressible.
            _ => {
                out[CHUNK_HEADER_LEN..].copy_from_slice(plain);
                Codec::Raw
            }
        };
        out[0..2].copy_from_slice(CHUNK_MAGIC);
        out[2] = CHUNK_FORMAT_VERSION;
        out[3] = codec as u8;
        out[4..8].copy_from_slice(&(plain.len() as u32).to_le_bytes());
        Ok(codec)
    }

    /// Encodes `plain` into a new chunk.
    pub fn encode(&mut self, plain: &[u8]) -> Result<Vec<u8>, ChunkError> {
        let mut out = Vec::new();
        self.encode_into(plain, &mut out)?;
        Ok(out)
    }
}

/// The plaintext length a chunk declares, after checking its header.
pub fn plain_len(id: &BlockId, chunk: &[u8]) -> Result<usize, ChunkError> {
    let malformed = |reason: String| ChunkError::Malformed { id: *id, reason };
    if chunk.len() < CHUNK_HEADER_LEN {
        return Err(malformed(format!(
            "{} bytes is shorter than the header",
            chunk.len()
        )));
    }
    if &chunk[0..2] != CHUNK_MAGIC {
        return Err(malformed("bad magic".into()));
    }
    if chunk[2] != CHUNK_FORMAT_VERSION {
        return Err(malformed(format!("format version {} is unknown", chunk[2])));
    }
    let len = u32::from_le_bytes(chunk[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_BLOCK_SIZE {
        return Err(malformed(format!(
            "declared size {len} is over the maximum"
        )));
    }
    Ok(len)
}

/// Decodes `chunk` and checks that its plaintext is the block `id`.
pub fn decode(id: &BlockId, chunk: &[u8]) -> Result<Vec<u8>, ChunkError> {
    let len = plain_len(id, chunk)?;
    let payload = &chunk[CHUNK_HEADER_LEN..];
    let plain = match chunk[3] {
        c if c == Codec::Raw as u8 => payload.to_vec(),
        c if c == Codec::Zstd as u8 => {
            zstd::bulk::decompress(payload, len).map_err(|e| ChunkError::Malformed {
                id: *id,
                reason: format!("zstd: {e}"),
            })?
        }
        c => {
            return Err(ChunkError::Malformed {
                id: *id,
                reason: format!("codec {c} is unknown"),
            });
        }
    };
    if plain.len() != len {
        return Err(ChunkError::Malformed {
            id: *id,
            reason: format!("declared {len} bytes, decoded {}", plain.len()),
        });
    }
    let actual = BlockId::of(&plain);
    if actual != *id {
        return Err(ChunkError::Mismatch { id: *id, actual });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incompressible(n: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn known_digest() {
        // BLAKE3 of the empty input, from the BLAKE3 test vectors.
        assert_eq!(
            BlockId::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let id = BlockId::of(b"abc");
        assert_eq!(id.to_hex().parse::<BlockId>().unwrap(), id);
        assert!("xyz".parse::<BlockId>().is_err());
    }

    #[test]
    fn compressible_blocks_shrink_and_round_trip_at_odd_sizes() {
        let mut enc = ChunkEncoder::new(1).unwrap();
        for size in [1usize, 511, 4096, 65_537, 1 << 20] {
            let plain: Vec<u8> = (0..size).map(|i| (i % 7) as u8).collect();
            let chunk = enc.encode(&plain).unwrap();
            if size > 100 {
                assert_eq!(chunk[3], Codec::Zstd as u8);
                assert!(chunk.len() < plain.len() / 4);
            }
            assert_eq!(decode(&BlockId::of(&plain), &chunk).unwrap(), plain);
        }
    }

    #[test]
    fn incompressible_blocks_stay_raw() {
        let plain = incompressible(1 << 20);
        let mut enc = ChunkEncoder::new(3).unwrap();
        let chunk = enc.encode(&plain).unwrap();
        assert_eq!(chunk[3], Codec::Raw as u8);
        assert_eq!(chunk.len(), plain.len() + CHUNK_HEADER_LEN);
        assert_eq!(decode(&BlockId::of(&plain), &chunk).unwrap(), plain);
    }

    #[test]
    fn corruption_is_caught() {
        let plain = incompressible(4096);
        let id = BlockId::of(&plain);
        let mut chunk = ChunkEncoder::new(1).unwrap().encode(&plain).unwrap();
        chunk[100] ^= 1;
        assert!(matches!(
            decode(&id, &chunk),
            Err(ChunkError::Mismatch { .. })
        ));
        let other = BlockId::of(b"other");
        chunk[100] ^= 1;
        assert!(matches!(
            decode(&other, &chunk),
            Err(ChunkError::Mismatch { .. })
        ));
        assert!(matches!(
            decode(&id, &chunk[..5]),
            Err(ChunkError::Malformed { .. })
        ));
        let mut huge = chunk.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&id, &huge),
            Err(ChunkError::Malformed { .. })
        ));
    }

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 1 << 20];
        assert!(is_zero(&b));
        assert!(is_zero(&b[3..1001]));
        b[(1 << 20) - 1] = 1;
        assert!(!is_zero(&b));
        assert!(!is_zero(&b[1..]));
        assert!(is_zero(&[]));
    }
}
