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
//!
//! A 16 TiB disk's manifest is 2.1 GB (64 Mi entries at 256 KiB blocks), so the format is
//! written and read as a stream: [`ManifestWriter`] hashes as it writes, and
//! [`ManifestReader`] checks the whole file (its name, its checksum, every entry) in a
//! first pass with bounded memory before handing out a single entry. [`DiskManifest`], the
//! whole list in memory, is for small uses (tests, GC and verify's walks).

use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

use a3_shared::chunk::BlockId;
use a3_shared::formats::{MANIFEST_FORMAT_VERSION, MANIFEST_MAGIC, MAX_BLOCK_SIZE};
use a3_shared::proto::Geometry;

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
    /// The file could not be read or written.
    #[error("manifest I/O: {0}")]
    Io(#[from] io::Error),
}

/// Checks a manifest's geometry and entry count.
fn check_fields(size: u64, block_size: u32, count: u64) -> Result<(), ManifestError> {
    if block_size == 0 || block_size as usize > MAX_BLOCK_SIZE {
        return Err(ManifestError::Inconsistent(format!(
            "block size {block_size} is outside 1..={MAX_BLOCK_SIZE}"
        )));
    }
    let want = size.div_ceil(u64::from(block_size));
    if count != want {
        return Err(ManifestError::Inconsistent(format!(
            "{count} blocks listed, but a {size}-byte disk at {block_size}-byte blocks has {want}"
        )));
    }
    Ok(())
}

/// Writes a manifest file as its entries come, hashing as it goes.
pub struct ManifestWriter<W: Write> {
    out: BufWriter<W>,
    /// The trailing checksum: every byte before it.
    body: blake3::Hasher,
    /// The file's name: every byte.
    file: blake3::Hasher,
    count: u64,
    written: u64,
}

impl<W: Write> ManifestWriter<W> {
    /// Starts the file of a disk of `size` bytes in `block_size` blocks.
    pub fn new(out: W, size: u64, block_size: u32) -> Result<ManifestWriter<W>, ManifestError> {
        let count = Geometry { size, block_size }.blocks();
        check_fields(size, block_size, count)?;
        let mut w = ManifestWriter {
            out: BufWriter::with_capacity(1 << 20, out),
            body: blake3::Hasher::new(),
            file: blake3::Hasher::new(),
            count,
            written: 0,
        };
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MANIFEST_MAGIC);
        header.push(MANIFEST_FORMAT_VERSION);
        header.extend_from_slice(&[0; 3]);
        header.extend_from_slice(&block_size.to_le_bytes());
        header.extend_from_slice(&size.to_le_bytes());
        header.extend_from_slice(&count.to_le_bytes());
        w.body_bytes(&header)?;
        Ok(w)
    }

    fn body_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.body.update(bytes);
        self.file.update(bytes);
        self.out.write_all(bytes)
    }

    /// Appends the next block's entry.
    pub fn push(&mut self, block: Option<BlockId>) -> Result<(), ManifestError> {
        if self.written == self.count {
            return Err(ManifestError::Inconsistent(format!(
                "more than the {} blocks of the disk",
                self.count
            )));
        }
        self.written += 1;
        match block {
            None => self.body_bytes(&[TAG_ZERO])?,
            Some(id) => {
                let mut entry = [TAG_CHUNK; 33];
                entry[1..].copy_from_slice(&id.0);
                self.body_bytes(&entry)?;
            }
        }
        Ok(())
    }

    /// Ends the file; returns its name (the BLAKE3 of the whole file) and the writer.
    pub fn finish(mut self) -> Result<(BlockId, W), ManifestError> {
        if self.written != self.count {
            return Err(ManifestError::Inconsistent(format!(
                "{} of the disk's {} blocks listed",
                self.written, self.count
            )));
        }
        let sum = *self.body.finalize().as_bytes();
        self.file.update(&sum);
        self.out.write_all(&sum)?;
        let name = BlockId(*self.file.finalize().as_bytes());
        let out = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok((name, out))
    }
}

/// Reads a manifest file as a stream of entries, after checking all of it.
pub struct ManifestReader<R> {
    r: BufReader<R>,
    geometry: Geometry,
    count: u64,
    next: u64,
}

impl<R: Read + Seek> ManifestReader<R> {
    /// Checks the whole file in a first pass, in bounded memory: the format, the trailing
    /// checksum, every entry, the fields, and, when `name` is given, that the file's
    /// BLAKE3 is its name. Then stands at the first entry.
    pub fn open(mut r: R, name: Option<&BlockId>) -> Result<ManifestReader<R>, ManifestError> {
        let bad = |m: String| ManifestError::Malformed(m);
        let len = r.seek(SeekFrom::End(0))?;
        r.seek(SeekFrom::Start(0))?;
        if len < (HEADER_LEN + DIGEST_LEN) as u64 {
            return Err(bad(format!("{len} bytes is too short")));
        }
        let mut r = BufReader::with_capacity(1 << 20, r);
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header)?;
        if &header[0..4] != MANIFEST_MAGIC {
            return Err(bad("bad magic (not a manifest)".into()));
        }
        if header[4] != MANIFEST_FORMAT_VERSION {
            return Err(bad(format!("format version {} is unknown", header[4])));
        }
        let block_size = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let size = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
        let count = u64::from_le_bytes(header[20..28].try_into().expect("8 bytes"));
        let mut body = blake3::Hasher::new();
        let mut file = blake3::Hasher::new();
        body.update(&header);
        file.update(&header);
        // The entries: a tag, then 32 id bytes after a chunk tag.
        let mut left = len - (HEADER_LEN + DIGEST_LEN) as u64;
        let (mut entries, mut id_left) = (0u64, 0usize);
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            r.read_exact(&mut buf[..n])?;
            body.update(&buf[..n]);
            file.update(&buf[..n]);
            left -= n as u64;
            let mut at = 0;
            while at < n {
                if id_left > 0 {
                    let take = id_left.min(n - at);
                    id_left -= take;
                    at += take;
                    continue;
                }
                match buf[at] {
                    TAG_ZERO => {}
                    TAG_CHUNK => id_left = 32,
                    t => return Err(bad(format!("unknown entry tag {t}"))),
                }
                entries += 1;
                at += 1;
            }
        }
        if id_left > 0 {
            return Err(bad("truncated block entry".into()));
        }
        let mut sum = [0u8; DIGEST_LEN];
        r.read_exact(&mut sum)?;
        if body.finalize().as_bytes() != &sum {
            return Err(bad("checksum mismatch (the file is damaged)".into()));
        }
        file.update(&sum);
        if let Some(name) = name
            && file.finalize().as_bytes() != &name.0
        {
            return Err(bad("content does not match its name (damaged)".into()));
        }
        if entries != count {
            return Err(bad(format!("{count} blocks declared, {entries} present")));
        }
        check_fields(size, block_size, count)?;
        r.seek(SeekFrom::Start(HEADER_LEN as u64))?;
        Ok(ManifestReader {
            r,
            geometry: Geometry { size, block_size },
            count,
            next: 0,
        })
    }

    /// The disk's size and block size.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The next block's index and id (`None` for a zero block), until the last block. After
    /// an error there is nothing more.
    pub fn next_entry(&mut self) -> Result<Option<(u64, Option<BlockId>)>, ManifestError> {
        if self.next == self.count {
            return Ok(None);
        }
        let entry = self.read_entry();
        if entry.is_err() {
            self.next = self.count;
        }
        entry.map(Some)
    }

    fn read_entry(&mut self) -> Result<(u64, Option<BlockId>), ManifestError> {
        let mut tag = [0u8; 1];
        self.r.read_exact(&mut tag)?;
        let block = match tag[0] {
            TAG_ZERO => None,
            TAG_CHUNK => {
                let mut id = [0u8; 32];
                self.r.read_exact(&mut id)?;
                Some(BlockId(id))
            }
            // The first pass saw every tag: the file changed under us.
            t => {
                return Err(ManifestError::Malformed(format!(
                    "unknown entry tag {t} on the second read"
                )));
            }
        };
        let index = self.next;
        self.next += 1;
        Ok((index, block))
    }
}

impl<R: Read + Seek> Iterator for ManifestReader<R> {
    type Item = Result<(u64, Option<BlockId>), ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().transpose()
    }
}

impl DiskManifest {
    /// Checks that the block list covers exactly `size` bytes at `block_size`.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_fields(self.size, self.block_size, self.blocks.len() as u64)
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
    ///
    /// # Panics
    /// When the list does not match the size ([`DiskManifest::validate`] first).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = ManifestWriter::new(Vec::new(), self.size, self.block_size)
            .expect("a validated manifest");
        for b in &self.blocks {
            w.push(*b).expect("a validated manifest");
        }
        w.finish().expect("a validated manifest").1
    }

    /// Parses and checks a manifest file.
    pub fn decode(bytes: &[u8]) -> Result<DiskManifest, ManifestError> {
        let mut r = ManifestReader::open(io::Cursor::new(bytes), None)?;
        let g = r.geometry();
        // The first pass counted the entries: the allocation is bounded by the file's size.
        let mut blocks = Vec::with_capacity(g.blocks() as usize);
        while let Some((_, b)) = r.next_entry()? {
            blocks.push(b);
        }
        Ok(DiskManifest {
            size: g.size,
            block_size: g.block_size,
            blocks,
        })
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
        // A consistent checksum over inconsistent fields is still refused: one block too
        // few for the size, in a file otherwise well made.
        let mut body = bytes[..bytes.len() - DIGEST_LEN - 33].to_vec();
        body[20..28].copy_from_slice(&3u64.to_le_bytes());
        let sum = blake3::hash(&body);
        body.extend_from_slice(sum.as_bytes());
        let err = DiskManifest::decode(&body).unwrap_err();
        assert!(matches!(err, ManifestError::Inconsistent(_)), "{err}");
    }

    #[test]
    fn the_reader_checks_the_name_and_streams_the_entries() {
        let m = sample();
        let bytes = m.encode();
        let name = BlockId::of(&bytes);
        let r = ManifestReader::open(io::Cursor::new(&bytes), Some(&name)).unwrap();
        assert_eq!(r.geometry().blocks(), 4);
        let entries: Vec<_> = r.map(Result::unwrap).collect();
        assert_eq!(
            entries,
            m.blocks
                .iter()
                .copied()
                .enumerate()
                .map(|(i, b)| (i as u64, b))
                .collect::<Vec<_>>()
        );
        let other = BlockId::of(b"another name");
        assert!(ManifestReader::open(io::Cursor::new(&bytes), Some(&other)).is_err());
        // The writer names the file by its BLAKE3.
        let mut w = ManifestWriter::new(Vec::new(), m.size, m.block_size).unwrap();
        for b in &m.blocks {
            w.push(*b).unwrap();
        }
        assert!(w.push(None).is_err(), "more blocks than the disk has");
        let (n, out) = w.finish().unwrap();
        assert_eq!((n, out), (name, bytes));
        let short = ManifestWriter::new(Vec::new(), m.size, m.block_size).unwrap();
        assert!(short.finish().is_err(), "fewer blocks than the disk has");
    }
}
