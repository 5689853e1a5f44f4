//! The VHD disk format (Microsoft VHD specification), as XAPI stores and exports disks.
//!
//! Layout of a dynamic VHD (all fields big-endian):
//!
//! ```text
//! 0      footer copy (512 B, "conectix", disk type 3)
//! 512    dynamic header (1024 B, "cxsparse", 2 MiB blocks)
//! 1536   BAT: one u32 sector offset per block, 0xFFFFFFFF = not allocated, padded to 512 B
//! ...    allocated blocks: a 512 B sector bitmap, then 2 MiB of data
//! end-512 footer (512 B)
//! ```
//!
//! [`DynamicLayout`] computes the bytes of a dynamic VHD for a given allocation, so a writer
//! can stream one without seeking. [`VhdReader`] reads a dynamic or fixed VHD from any
//! `Read + Seek`, checking every structure it relies on: a VHD is untrusted input.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// The footer cookie.
const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// The dynamic header cookie.
const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";
/// The size of a sector, of the footer, and the unit of BAT offsets.
pub const SECTOR: u64 = 512;
/// The block size XAPI uses for dynamic VHDs.
pub const BLOCK_SIZE: u64 = 2 * 1024 * 1024;
/// Footer and dynamic header format version 1.0.
const FORMAT_VERSION: u32 = 0x0001_0000;
/// Disk type: fixed.
const DISK_TYPE_FIXED: u32 = 2;
/// Disk type: dynamic.
const DISK_TYPE_DYNAMIC: u32 = 3;
/// A BAT entry for a block that is not allocated (reads as zeros).
const BAT_UNUSED: u32 = 0xFFFF_FFFF;
/// The largest disk we accept: 2 TiB, XAPI's own limit for VHD.
pub const MAX_DISK_SIZE: u64 = 2040 * 1024 * 1024 * 1024;
/// VHD timestamps count seconds from 2000-01-01T00:00:00Z.
const VHD_EPOCH_UNIX: u64 = 946_684_800;

/// What can be wrong with a VHD.
#[derive(Debug, thiserror::Error)]
pub enum VhdError {
    /// Reading or writing the bytes failed.
    #[error("VHD I/O: {0}")]
    Io(#[from] io::Error),
    /// A structure is malformed; the message says which and how.
    #[error("not a valid VHD: {0}")]
    Invalid(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, VhdError> {
    Err(VhdError::Invalid(msg.into()))
}

/// The one's complement of the byte sum, the checksum of footers and headers.
fn checksum(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(0u32, |acc, b| acc.wrapping_add(u32::from(*b)))
}

/// CHS geometry from the VHD specification's algorithm (appendix "CHS calculation").
fn geometry(size: u64) -> u32 {
    let mut total = (size / SECTOR).min(65535 * 16 * 255);
    let (mut spt, mut heads, mut cyl_x_heads);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cyl_x_heads = total / spt;
    } else {
        spt = 17;
        cyl_x_heads = total / spt;
        heads = cyl_x_heads.div_ceil(1024).max(4);
        if cyl_x_heads >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cyl_x_heads = total / spt;
        }
        if cyl_x_heads >= heads * 1024 {
            spt = 63;
            heads = 16;
            cyl_x_heads = total / spt;
        }
    }
    let cylinders = cyl_x_heads / heads;
    total = cylinders;
    ((total as u32) << 16) | ((heads as u32) << 8) | spt as u32
}

/// The 512-byte footer of a VHD of `size` bytes.
fn footer(size: u64, disk_type: u32, uuid: [u8; 16], unix_time: u64) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(FOOTER_COOKIE);
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit, always set
    f[12..16].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    let data_offset = if disk_type == DISK_TYPE_DYNAMIC {
        SECTOR
    } else {
        u64::MAX
    };
    f[16..24].copy_from_slice(&data_offset.to_be_bytes());
    let stamp = unix_time.saturating_sub(VHD_EPOCH_UNIX) as u32;
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"a3  "); // creator application
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // creator version
    f[36..40].copy_from_slice(b"Lnux"); // creator host OS
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    f[56..60].copy_from_slice(&geometry(size).to_be_bytes());
    f[60..64].copy_from_slice(&disk_type.to_be_bytes());
    f[68..84].copy_from_slice(&uuid);
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The byte layout of a dynamic VHD, computed up front so it can be streamed.
#[derive(Debug, Clone)]
pub struct DynamicLayout {
    size: u64,
    allocated: Vec<bool>,
    uuid: [u8; 16],
    unix_time: u64,
}

impl DynamicLayout {
    /// A disk of `size` bytes (a multiple of 512) whose 2 MiB block `i` is stored when
    /// `allocated[i]`; unstored blocks read as zeros. `uuid` and `unix_time` go into the
    /// footer: pass fixed values for reproducible output.
    pub fn new(
        size: u64,
        allocated: Vec<bool>,
        uuid: [u8; 16],
        unix_time: u64,
    ) -> Result<DynamicLayout, VhdError> {
        if !size.is_multiple_of(SECTOR) || size > MAX_DISK_SIZE {
            return invalid(format!(
                "disk size {size} must be a multiple of 512 and at most {MAX_DISK_SIZE}"
            ));
        }
        if allocated.len() as u64 != size.div_ceil(BLOCK_SIZE) {
            return invalid(format!(
                "{} allocation flags for {} blocks",
                allocated.len(),
                size.div_ceil(BLOCK_SIZE)
            ));
        }
        Ok(DynamicLayout {
            size,
            allocated,
            uuid,
            unix_time,
        })
    }

    fn blocks(&self) -> u64 {
        self.allocated.len() as u64
    }

    fn bat_bytes(&self) -> u64 {
        (self.blocks() * 4).div_ceil(SECTOR) * SECTOR
    }

    /// Where the data blocks start.
    fn data_start(&self) -> u64 {
        SECTOR + 1024 + self.bat_bytes()
    }

    /// The size of one stored block: its sector bitmap, then its data.
    pub const STORED_BLOCK: u64 = SECTOR + BLOCK_SIZE;

    /// The whole file's length.
    pub fn total_len(&self) -> u64 {
        let stored = self.allocated.iter().filter(|a| **a).count() as u64;
        self.data_start() + stored * Self::STORED_BLOCK + SECTOR
    }

    /// The footer, which also opens the file.
    pub fn footer(&self) -> [u8; 512] {
        footer(self.size, DISK_TYPE_DYNAMIC, self.uuid, self.unix_time)
    }

    /// Everything before the first block: the footer copy, the dynamic header and the BAT.
    pub fn head(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data_start() as usize);
        out.extend_from_slice(&self.footer());
        let mut h = [0u8; 1024];
        h[0..8].copy_from_slice(DYNAMIC_COOKIE);
        h[8..16].copy_from_slice(&u64::MAX.to_be_bytes()); // no next structure
        h[16..24].copy_from_slice(&(SECTOR + 1024).to_be_bytes()); // BAT offset
        h[24..28].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        h[28..32].copy_from_slice(&(self.blocks() as u32).to_be_bytes());
        h[32..36].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
        let sum = checksum(&h);
        h[36..40].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&h);
        let mut next_sector = self.data_start() / SECTOR;
        for &a in &self.allocated {
            let entry = if a {
                let e = next_sector as u32;
                next_sector += Self::STORED_BLOCK / SECTOR;
                e
            } else {
                BAT_UNUSED
            };
            out.extend_from_slice(&entry.to_be_bytes());
        }
        out.resize(self.data_start() as usize, 0xFF);
        out
    }

    /// The sector bitmap written before each stored block: every sector present.
    pub fn block_bitmap() -> [u8; 512] {
        [0xFF; 512]
    }

    /// Writes the whole VHD to `out`. `read_block(i, buf)` fills `buf` (2 MiB, zeroed past
    /// the disk's end) with block `i`; it is called only for allocated blocks, in order.
    pub fn write_to(
        &self,
        out: &mut impl Write,
        mut read_block: impl FnMut(u64, &mut [u8]) -> io::Result<()>,
    ) -> Result<(), VhdError> {
        out.write_all(&self.head())?;
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        for (i, &a) in self.allocated.iter().enumerate() {
            if !a {
                continue;
            }
            buf.fill(0);
            let len = BLOCK_SIZE.min(self.size - i as u64 * BLOCK_SIZE) as usize;
            read_block(i as u64, &mut buf[..len])?;
            out.write_all(&Self::block_bitmap())?;
            out.write_all(&buf)?;
        }
        out.write_all(&self.footer())?;
        Ok(())
    }
}

/// A parsed VHD footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Footer {
    size: u64,
    disk_type: u32,
    data_offset: u64,
}

fn parse_footer(f: &[u8; 512]) -> Result<Footer, VhdError> {
    if &f[0..8] != FOOTER_COOKIE {
        return invalid("footer cookie is not \"conectix\"");
    }
    let stored = u32::from_be_bytes(f[64..68].try_into().expect("4 bytes"));
    let mut zeroed = *f;
    zeroed[64..68].fill(0);
    if checksum(&zeroed) != stored {
        return invalid("footer checksum mismatch");
    }
    let be64 = |r: std::ops::Range<usize>| u64::from_be_bytes(f[r].try_into().expect("8 bytes"));
    let disk_type = u32::from_be_bytes(f[60..64].try_into().expect("4 bytes"));
    let size = be64(48..56);
    if size > MAX_DISK_SIZE {
        return invalid(format!("disk size {size} is over the 2 TiB VHD limit"));
    }
    Ok(Footer {
        size,
        disk_type,
        data_offset: be64(16..24),
    })
}

/// Reads the disk inside a fixed or dynamic VHD.
pub struct VhdReader<R> {
    inner: R,
    size: u64,
    /// For a dynamic VHD: each block's byte offset (of its bitmap), or `None` when unstored.
    bat: Option<Vec<Option<u64>>>,
    block_size: u64,
}

impl<R: Read + Seek> VhdReader<R> {
    /// Parses the structures of the VHD in `inner`.
    pub fn open(mut inner: R) -> Result<VhdReader<R>, VhdError> {
        let file_len = inner.seek(SeekFrom::End(0))?;
        if file_len < SECTOR {
            return invalid(format!(
                "file of {file_len} bytes is too short for a footer"
            ));
        }
        let mut f = [0u8; 512];
        inner.seek(SeekFrom::Start(file_len - SECTOR))?;
        inner.read_exact(&mut f)?;
        let footer = parse_footer(&f)?;
        match footer.disk_type {
            DISK_TYPE_FIXED => {
                if file_len - SECTOR < footer.size {
                    return invalid("fixed VHD is shorter than its disk size");
                }
                Ok(VhdReader {
                    inner,
                    size: footer.size,
                    bat: None,
                    block_size: BLOCK_SIZE,
                })
            }
            DISK_TYPE_DYNAMIC => Self::open_dynamic(inner, footer, file_len),
            t => invalid(format!(
                "disk type {t} is not supported (fixed = 2, dynamic = 3)"
            )),
        }
    }

    fn open_dynamic(mut inner: R, footer: Footer, file_len: u64) -> Result<Self, VhdError> {
        let mut h = [0u8; 1024];
        if footer
            .data_offset
            .checked_add(1024)
            .is_none_or(|end| end > file_len)
        {
            return invalid("dynamic header offset is past the end of the file");
        }
        inner.seek(SeekFrom::Start(footer.data_offset))?;
        inner.read_exact(&mut h)?;
        if &h[0..8] != DYNAMIC_COOKIE {
            return invalid("dynamic header cookie is not \"cxsparse\"");
        }
        let stored = u32::from_be_bytes(h[36..40].try_into().expect("4 bytes"));
        let mut zeroed = h;
        zeroed[36..40].fill(0);
        if checksum(&zeroed) != stored {
            return invalid("dynamic header checksum mismatch");
        }
        let bat_offset = u64::from_be_bytes(h[16..24].try_into().expect("8 bytes"));
        let entries = u64::from(u32::from_be_bytes(h[28..32].try_into().expect("4 bytes")));
        let block_size = u64::from(u32::from_be_bytes(h[32..36].try_into().expect("4 bytes")));
        if block_size == 0 || block_size % SECTOR != 0 || block_size > 256 * 1024 * 1024 {
            return invalid(format!("block size {block_size} is not usable"));
        }
        if entries < footer.size.div_ceil(block_size) {
            return invalid(format!(
                "the BAT has {entries} entries, too few for a disk of {} bytes",
                footer.size
            ));
        }
        if bat_offset
            .checked_add(entries * 4)
            .is_none_or(|end| end > file_len)
        {
            return invalid("the BAT runs past the end of the file");
        }
        let mut raw = vec![0u8; (entries * 4) as usize];
        inner.seek(SeekFrom::Start(bat_offset))?;
        inner.read_exact(&mut raw)?;
        let bitmap_len = (block_size / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR;
        let mut bat = Vec::with_capacity(entries as usize);
        for (i, e) in raw.chunks_exact(4).enumerate() {
            let e = u32::from_be_bytes(e.try_into().expect("4 bytes"));
            if e == BAT_UNUSED {
                bat.push(None);
                continue;
            }
            let off = u64::from(e) * SECTOR;
            if off + bitmap_len + block_size > file_len {
                return invalid(format!("block {i} lies past the end of the file"));
            }
            bat.push(Some(off));
        }
        Ok(VhdReader {
            inner,
            size: footer.size,
            bat: Some(bat),
            block_size,
        })
    }

    /// The virtual size of the disk.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// For a dynamic VHD, its block size and each block's byte offset in the file (of its
    /// sector bitmap), `None` for an unstored block; `None` for a fixed VHD. An editor of
    /// the file uses it after `open` has checked every structure.
    pub fn block_map(&self) -> Option<(u64, &[Option<u64>])> {
        self.bat.as_deref().map(|bat| (self.block_size, bat))
    }

    /// Fills `buf` with the disk's bytes from `offset`; unstored regions read as zeros.
    pub fn read_at(&mut self, mut offset: u64, mut buf: &mut [u8]) -> Result<(), VhdError> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return invalid(format!(
                "read of {} bytes at {offset} is past the disk's end ({})",
                buf.len(),
                self.size
            ));
        }
        while !buf.is_empty() {
            let block = offset / self.block_size;
            let within = offset % self.block_size;
            let n = buf.len().min((self.block_size - within) as usize);
            let (now, rest) = buf.split_at_mut(n);
            match &self.bat {
                None => {
                    self.inner.seek(SeekFrom::Start(offset))?;
                    self.inner.read_exact(now)?;
                }
                Some(bat) => match bat[block as usize] {
                    None => now.fill(0),
                    Some(block_off) => {
                        let bitmap_len =
                            (self.block_size / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR;
                        let mut bitmap = vec![0u8; bitmap_len as usize];
                        self.inner.seek(SeekFrom::Start(block_off))?;
                        self.inner.read_exact(&mut bitmap)?;
                        self.inner
                            .seek(SeekFrom::Start(block_off + bitmap_len + within))?;
                        self.inner.read_exact(now)?;
                        // A sector whose bitmap bit is clear was never written: zeros.
                        let first = within / SECTOR;
                        for (k, chunk) in now.chunks_mut(SECTOR as usize).enumerate() {
                            let s = first + k as u64;
                            if bitmap[(s / 8) as usize] & (0x80 >> (s % 8)) == 0 {
                                chunk.fill(0);
                            }
                        }
                    }
                },
            }
            offset += n as u64;
            buf = rest;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn pattern(size: usize, seed: u8) -> Vec<u8> {
        (0..size)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn dynamic_round_trip_with_holes() {
        let size = 5 * BLOCK_SIZE + 4096; // a partial last block
        let mut disk = pattern(size as usize, 7);
        disk[BLOCK_SIZE as usize..2 * BLOCK_SIZE as usize].fill(0); // block 1 is a hole
        let allocated: Vec<bool> = disk
            .chunks(BLOCK_SIZE as usize)
            .map(|c| c.iter().any(|b| *b != 0))
            .collect();
        assert_eq!(allocated, [true, false, true, true, true, true]);
        let layout = DynamicLayout::new(size, allocated, [9; 16], 1_700_000_000).unwrap();
        let mut file = Vec::new();
        layout
            .write_to(&mut file, |i, buf| {
                let start = (i * BLOCK_SIZE) as usize;
                buf.copy_from_slice(&disk[start..start + buf.len()]);
                Ok(())
            })
            .unwrap();
        assert_eq!(file.len() as u64, layout.total_len());
        assert_eq!(&file[..512], &file[file.len() - 512..], "footer copy at 0");

        let mut r = VhdReader::open(Cursor::new(&file)).unwrap();
        assert_eq!(r.size(), size);
        let mut back = vec![0u8; size as usize];
        // Odd-sized reads that straddle block boundaries.
        for chunk in back.chunks_mut(777_777).enumerate() {
            let (i, buf) = chunk;
            r.read_at(i as u64 * 777_777, buf).unwrap();
        }
        assert!(back == disk);
    }

    #[test]
    fn footer_checksum_is_ones_complement_of_byte_sum() {
        let f = footer(10 * 1024 * 1024, DISK_TYPE_DYNAMIC, [0; 16], 0);
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut z = f;
        z[64..68].fill(0);
        let sum: u32 = z.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(stored, !sum);
    }

    #[test]
    fn corrupt_structures_are_refused() {
        let layout = DynamicLayout::new(BLOCK_SIZE, vec![true], [1; 16], 0).unwrap();
        let mut file = Vec::new();
        layout
            .write_to(&mut file, |_, b| {
                b.fill(1);
                Ok(())
            })
            .unwrap();
        let n = file.len();
        let mut bad = file.clone();
        bad[n - 512 + 50] ^= 1; // the size, under the footer checksum
        assert!(matches!(
            VhdReader::open(Cursor::new(&bad)),
            Err(VhdError::Invalid(m)) if m.contains("checksum")
        ));
        let mut bad = file.clone();
        bad[512 + 30] ^= 1; // the BAT size, under the header checksum
        assert!(VhdReader::open(Cursor::new(&bad)).is_err());
        assert!(VhdReader::open(Cursor::new(&file[..100])).is_err());
    }

    #[test]
    fn known_geometry() {
        // 10 MiB: 20480 sectors -> 17 spt, 4 heads, 301 cylinders (spec algorithm).
        assert_eq!(geometry(10 * 1024 * 1024), (301 << 16) | (4 << 8) | 17);
    }
}
