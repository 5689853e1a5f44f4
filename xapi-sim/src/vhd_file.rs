//! A dynamic VHD file in a [`FileStore`], read and written in place: the content of a VDI
//! on a file-based SR (`<sr-uuid>/<vdi-uuid>.vhd` on an NFS SR, as XCP-ng's NFSSR keeps it).
//!
//! [`VhdFile::open`] checks the file with [`a3_shared::vhd::VhdReader`] (a file on an SR is
//! untrusted: anyone with the export can write it) and keeps its block map. A write into an
//! unstored 2 MiB block appends the block (sector bitmap, data) where the footer was, writes
//! the footer after it, then points the BAT entry at it: until that last write, the file is
//! the valid VHD it was before. Writes of zeros into unstored blocks store nothing.

use std::io::{self, Read, Seek, SeekFrom};

use a3_shared::vhd::{BLOCK_SIZE, DynamicLayout, SECTOR, VhdError, VhdReader};

use crate::file_store::FileStore;

/// Bytes of a block's sector bitmap (2 MiB / 512 B = 4096 bits).
const BITMAP_LEN: u64 = SECTOR;

/// A VHD file opened for reading and writing.
pub struct VhdFile<'a> {
    store: &'a dyn FileStore,
    path: String,
    size: u64,
    bat_offset: u64,
    /// Byte offset of each block's bitmap, `None` when unstored.
    blocks: Vec<Option<u64>>,
    footer: [u8; 512],
    /// Where the trailing footer starts: the next block goes there.
    end: u64,
}

/// Reads a store file through `Read + Seek`, for [`VhdReader`].
struct StoreReader<'a> {
    store: &'a dyn FileStore,
    path: &'a str,
    len: u64,
    pos: u64,
}

impl Read for StoreReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n > 0 {
            self.store.read_at(self.path, self.pos, &mut buf[..n])?;
            self.pos += n as u64;
        }
        Ok(n)
    }
}

impl Seek for StoreReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::other("seek before the start of the file"))?;
        Ok(self.pos)
    }
}

/// Rounds a requested VDI size up to whole 2 MiB blocks, as XCP-ng's `vhdutil` does for
/// VDIs on VHD-based SRs.
pub fn round_size(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

impl<'a> VhdFile<'a> {
    /// Writes an empty dynamic VHD of `size` bytes (a multiple of 512) at `path`.
    pub fn create(
        store: &dyn FileStore,
        path: &str,
        size: u64,
        uuid: [u8; 16],
    ) -> Result<(), VhdError> {
        let blocks = size.div_ceil(BLOCK_SIZE) as usize;
        let layout = DynamicLayout::new(
            size,
            vec![false; blocks],
            uuid,
            crate::clock::unix_now() as u64,
        )?;
        let head = layout.head();
        store.create(path)?;
        store.write_at(path, 0, &head)?;
        store.write_at(path, head.len() as u64, &layout.footer())?;
        Ok(())
    }

    /// Opens and checks the VHD at `path`.
    pub fn open(store: &'a dyn FileStore, path: &str) -> Result<VhdFile<'a>, VhdError> {
        let len = store.len(path)?;
        let reader = VhdReader::open(StoreReader {
            store,
            path,
            len,
            pos: 0,
        })?;
        let Some((block_size, blocks)) = reader.block_map() else {
            return Err(VhdError::Invalid(format!(
                "{path} is a fixed VHD; VDIs on this SR are dynamic VHDs"
            )));
        };
        if block_size != BLOCK_SIZE {
            return Err(VhdError::Invalid(format!(
                "{path} has {block_size}-byte blocks; only 2 MiB blocks are supported"
            )));
        }
        let blocks = blocks.to_vec();
        let size = reader.size();
        let mut footer = [0u8; 512];
        store.read_at(path, len - SECTOR, &mut footer)?;
        let data_offset = u64::from_be_bytes(footer[16..24].try_into().expect("8 bytes"));
        let mut bat = [0u8; 8];
        store.read_at(path, data_offset + 16, &mut bat)?;
        Ok(VhdFile {
            store,
            path: path.to_owned(),
            size,
            bat_offset: u64::from_be_bytes(bat),
            blocks,
            footer,
            end: len - SECTOR,
        })
    }

    /// The disk's virtual size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The indexes of the stored blocks, in order.
    pub fn stored_blocks(&self) -> Vec<u64> {
        (0..self.blocks.len() as u64)
            .filter(|i| self.blocks[*i as usize].is_some())
            .collect()
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), VhdError> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(VhdError::Invalid(format!(
                "{len} bytes at {offset} are past the end of the {}-byte disk",
                self.size
            )));
        }
        Ok(())
    }

    /// Fills `buf` with the disk's bytes from `offset`.
    pub fn read_at(&self, mut offset: u64, mut buf: &mut [u8]) -> Result<(), VhdError> {
        self.check_range(offset, buf.len())?;
        while !buf.is_empty() {
            let (block, within) = (offset / BLOCK_SIZE, offset % BLOCK_SIZE);
            let n = buf.len().min((BLOCK_SIZE - within) as usize);
            let (now, rest) = buf.split_at_mut(n);
            match self.blocks[block as usize] {
                None => now.fill(0),
                Some(at) => {
                    let mut bitmap = [0u8; BITMAP_LEN as usize];
                    self.store.read_at(&self.path, at, &mut bitmap)?;
                    self.store
                        .read_at(&self.path, at + BITMAP_LEN + within, now)?;
                    zero_unwritten(&bitmap, within, now);
                }
            }
            offset += n as u64;
            buf = rest;
        }
        Ok(())
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&mut self, mut offset: u64, mut data: &[u8]) -> Result<(), VhdError> {
        self.check_range(offset, data.len())?;
        while !data.is_empty() {
            let (block, within) = (offset / BLOCK_SIZE, offset % BLOCK_SIZE);
            let n = data.len().min((BLOCK_SIZE - within) as usize);
            let (now, rest) = data.split_at(n);
            self.write_in_block(block, within, now)?;
            offset += n as u64;
            data = rest;
        }
        Ok(())
    }

    fn write_in_block(&mut self, block: u64, within: u64, data: &[u8]) -> Result<(), VhdError> {
        let Some(at) = self.blocks[block as usize] else {
            if data.iter().all(|b| *b == 0) {
                return Ok(());
            }
            let mut full = vec![0u8; BLOCK_SIZE as usize];
            full[within as usize..within as usize + data.len()].copy_from_slice(data);
            return self.append_block(block, &full);
        };
        let mut bitmap = [0u8; BITMAP_LEN as usize];
        self.store.read_at(&self.path, at, &mut bitmap)?;
        let (first, last) = (within / SECTOR, (within + data.len() as u64 - 1) / SECTOR);
        if (first..=last).all(|s| bit(&bitmap, s)) {
            self.store
                .write_at(&self.path, at + BITMAP_LEN + within, data)?;
            return Ok(());
        }
        // Some touched sector was never written (another tool's partial block): its stored
        // bytes are not its content. Rewrite the whole block with a full bitmap.
        let mut full = vec![0u8; BLOCK_SIZE as usize];
        self.store.read_at(&self.path, at + BITMAP_LEN, &mut full)?;
        zero_unwritten(&bitmap, 0, &mut full);
        full[within as usize..within as usize + data.len()].copy_from_slice(data);
        self.store.write_at(&self.path, at + BITMAP_LEN, &full)?;
        self.store
            .write_at(&self.path, at, &DynamicLayout::block_bitmap())?;
        Ok(())
    }

    fn append_block(&mut self, block: u64, data: &[u8]) -> Result<(), VhdError> {
        let at = self.end;
        let mut stored = Vec::with_capacity((BITMAP_LEN + BLOCK_SIZE) as usize + 512);
        stored.extend_from_slice(&DynamicLayout::block_bitmap());
        stored.extend_from_slice(data);
        stored.extend_from_slice(&self.footer);
        self.store.write_at(&self.path, at, &stored)?;
        let entry = u32::try_from(at / SECTOR)
            .map_err(|_| VhdError::Invalid(format!("{} is too large for a VHD", self.path)))?;
        self.store.write_at(
            &self.path,
            self.bat_offset + 4 * block,
            &entry.to_be_bytes(),
        )?;
        self.blocks[block as usize] = Some(at);
        self.end = at + BITMAP_LEN + BLOCK_SIZE;
        Ok(())
    }
}

fn bit(bitmap: &[u8], sector: u64) -> bool {
    bitmap[(sector / 8) as usize] & (0x80 >> (sector % 8)) != 0
}

/// Zeroes the sectors of `buf` (which starts `within` bytes into its block) whose bitmap
/// bit is clear: they were never written.
fn zero_unwritten(bitmap: &[u8], within: u64, buf: &mut [u8]) {
    let mut pos = 0usize;
    while pos < buf.len() {
        let abs = within + pos as u64;
        let sector_end = (abs / SECTOR + 1) * SECTOR;
        let n = ((sector_end - abs) as usize).min(buf.len() - pos);
        if !bit(bitmap, abs / SECTOR) {
            buf[pos..pos + n].fill(0);
        }
        pos += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_store::LocalDir;
    use std::io::Cursor;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
            .collect()
    }

    #[test]
    fn writes_read_back_and_the_file_stays_a_valid_vhd() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        let size = 5 * BLOCK_SIZE;
        VhdFile::create(&store, "d.vhd", size, [7; 16]).unwrap();
        let mut model = vec![0u8; size as usize];
        let mut f = VhdFile::open(&store, "d.vhd").unwrap();
        assert_eq!(f.size(), size);
        assert!(f.stored_blocks().is_empty());
        let writes = [
            (10u64, pattern(100, 1)),
            (BLOCK_SIZE - 7, pattern(20, 2)), // straddles blocks 0 and 1
            (3 * BLOCK_SIZE, vec![0u8; 4096]), // zeros into an unstored block: nothing
            (4 * BLOCK_SIZE + 511, pattern(3 * 512, 3)),
            (20, pattern(10, 4)), // rewrite inside a stored block
        ];
        for (off, data) in &writes {
            f.write_at(*off, data).unwrap();
            model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        assert_eq!(f.stored_blocks(), [0, 1, 4]);
        let mut back = vec![0u8; size as usize];
        f.read_at(0, &mut back).unwrap();
        assert!(back == model);

        // A fresh open (and the shared reader) see the same disk.
        let again = VhdFile::open(&store, "d.vhd").unwrap();
        assert_eq!(again.stored_blocks(), [0, 1, 4]);
        let bytes = std::fs::read(dir.path().join("d.vhd")).unwrap();
        assert_eq!(
            &bytes[..512],
            &bytes[bytes.len() - 512..],
            "footer copy at 0"
        );
        let mut r = VhdReader::open(Cursor::new(&bytes)).unwrap();
        let mut whole = vec![0u8; size as usize];
        r.read_at(0, &mut whole).unwrap();
        assert!(whole == model);
        assert!(f.write_at(size - 1, b"xy").is_err());
        assert!(f.read_at(size, &mut [0u8; 1]).is_err());
    }

    #[test]
    fn a_partial_bitmap_from_another_tool_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        VhdFile::create(&store, "p.vhd", BLOCK_SIZE, [1; 16]).unwrap();
        let mut f = VhdFile::open(&store, "p.vhd").unwrap();
        f.write_at(0, &vec![0xAA; BLOCK_SIZE as usize]).unwrap();
        // Clear the bitmap bit of sector 1: it now reads as zeros.
        let at = f.blocks[0].unwrap();
        let mut bitmap = [0xFFu8; 512];
        bitmap[0] = 0b1011_1111;
        store.write_at("p.vhd", at, &bitmap).unwrap();
        let f = VhdFile::open(&store, "p.vhd").unwrap();
        let mut buf = vec![0u8; 1536];
        f.read_at(0, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 0xAA));
        assert!(buf[512..1024].iter().all(|b| *b == 0));
        // Writing one byte into sector 1 keeps the rest of that sector zero.
        let mut f = VhdFile::open(&store, "p.vhd").unwrap();
        f.write_at(600, b"Z").unwrap();
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(buf[600], b'Z');
        assert!(buf[512..600].iter().all(|b| *b == 0));
        assert!(buf[1024..].iter().all(|b| *b == 0xAA));
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path());
        store.create("junk.vhd").unwrap();
        store.write_at("junk.vhd", 0, &[0x55; 4096]).unwrap();
        assert!(matches!(
            VhdFile::open(&store, "junk.vhd"),
            Err(VhdError::Invalid(_))
        ));
        assert!(VhdFile::open(&store, "missing.vhd").is_err());
        assert_eq!(round_size(1), BLOCK_SIZE);
        assert_eq!(round_size(2 * BLOCK_SIZE), 2 * BLOCK_SIZE);
    }
}
