//! The backup planner: which blocks of a disk the agent must read.
//!
//! Both peers run it on the same inputs (disk size, block size, base manifest, CBT bitmap):
//! the agent to know what to read, the A3 to know which blocks must be reported and which it
//! takes from the base. A block is read when:
//! - there is no usable base (none, a different block size, or no CBT bitmap); or
//! - any 64 KiB CBT granule it overlaps is marked changed (a bitmap too short counts as
//!   changed: missing information never means "unchanged"); or
//! - it lies beyond the base's last whole block (the disk grew, or the base's last block was
//!   short and now holds more bytes).

use std::ops::Range;

use base64::Engine;

use super::consts::CBT_GRANULE;
use super::messages::Manifest;

/// Why a CBT bitmap is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CbtError {
    /// Not base64.
    #[error("CBT bitmap is not base64 (expected the output of VDI.list_changed_blocks): {0}")]
    Base64(#[from] base64::DecodeError),
}

/// XAPI's changed-block bitmap: one bit per 64 KiB, most significant bit first; bit `i`
/// covers the bytes from `i`·64 KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CbtBitmap {
    bits: Vec<u8>,
}

impl CbtBitmap {
    /// Decodes `VDI.list_changed_blocks`'s base64 answer (whitespace ignored).
    pub fn from_base64(text: &str) -> Result<CbtBitmap, CbtError> {
        let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        Ok(CbtBitmap {
            bits: base64::engine::general_purpose::STANDARD.decode(clean)?,
        })
    }

    /// Wraps decoded bytes.
    pub fn from_bytes(bits: Vec<u8>) -> CbtBitmap {
        CbtBitmap { bits }
    }

    /// The decoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Whether granule `i` changed; granules past the bitmap's end count as changed.
    pub fn granule_changed(&self, i: u64) -> bool {
        match usize::try_from(i / 8).ok().and_then(|b| self.bits.get(b)) {
            Some(byte) => byte & (0x80 >> (i % 8)) != 0,
            None => true,
        }
    }

    /// Marks every granule touching the bytes of `range` as changed, growing the bitmap
    /// when `range` lies past its end.
    pub fn mark_changed(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let (first, last) = (range.start / CBT_GRANULE, (range.end - 1) / CBT_GRANULE);
        let need = usize::try_from(last / 8 + 1).expect("bitmap fits in memory");
        if self.bits.len() < need {
            // Past the old end everything already counted as changed; keep it so.
            self.bits.resize(need, 0xFF);
        }
        for g in first..=last {
            self.bits[(g / 8) as usize] |= 0x80 >> (g % 8);
        }
    }

    /// Whether any byte of `range` lies in a changed granule.
    pub fn any_changed(&self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return false;
        }
        let first = range.start / CBT_GRANULE;
        let last = (range.end - 1) / CBT_GRANULE;
        (first..=last).any(|g| self.granule_changed(g))
    }
}

/// What to read: block-index ranges in increasing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Runs of blocks to read and report.
    pub reads: Vec<Range<u64>>,
    /// Blocks of the disk in all.
    pub blocks: u64,
    /// Whether blocks outside `reads` are taken from the base manifest.
    pub uses_base: bool,
}

impl Plan {
    /// Blocks to read.
    pub fn read_blocks(&self) -> u64 {
        self.reads.iter().map(|r| r.end - r.start).sum()
    }

    /// Whether block `i` is to be read.
    pub fn reads_block(&self, i: u64) -> bool {
        let at = self.reads.partition_point(|r| r.end <= i);
        self.reads.get(at).is_some_and(|r| r.contains(&i))
    }
}

/// Plans a backup of a `size`-byte disk in `block_size` blocks.
pub fn plan(size: u64, block_size: u32, base: Option<&Manifest>, cbt: Option<&CbtBitmap>) -> Plan {
    let blocks = Manifest::block_count(size, block_size);
    let (base, cbt) = match (base, cbt) {
        (Some(b), Some(c)) if b.block_size == block_size && b.is_consistent() => (b, c),
        _ => {
            return Plan {
                reads: std::iter::once(0..blocks)
                    .filter(|r| !r.is_empty())
                    .collect(),
                blocks,
                uses_base: false,
            };
        }
    };
    // Base blocks that are whole, and whole in the new disk too, can be reused.
    let base_whole = base.size / u64::from(block_size);
    let mut reads: Vec<Range<u64>> = Vec::new();
    for i in 0..blocks {
        let range = Manifest::block_range(size, block_size, i);
        let whole_now = range.end - range.start == u64::from(block_size);
        if i >= base_whole || !whole_now || cbt.any_changed(range) {
            match reads.last_mut() {
                Some(r) if r.end == i => r.end += 1,
                _ => reads.push(i..i + 1),
            }
        }
    }
    Plan {
        reads,
        blocks,
        uses_base: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn base(size: u64) -> Manifest {
        Manifest {
            size,
            block_size: MIB as u32,
            blocks: vec![Some([1; 32]); Manifest::block_count(size, MIB as u32) as usize],
        }
    }

    #[test]
    fn bitmap_is_msb_first_per_64k() {
        // 0x80: granule 0 only; 0x01: granule 7.
        let b = CbtBitmap::from_base64("gAE=").unwrap();
        assert_eq!(b.as_bytes(), &[0x80, 0x01]);
        assert!(b.granule_changed(0));
        assert!(!b.granule_changed(1));
        assert!(b.granule_changed(15));
        assert!(!b.granule_changed(14));
        assert!(b.granule_changed(16), "past the end counts as changed");
        assert!(b.any_changed(0..1));
        assert!(!b.any_changed(CBT_GRANULE..15 * CBT_GRANULE));
        assert!(b.any_changed(CBT_GRANULE..15 * CBT_GRANULE + 1));
    }

    #[test]
    fn no_base_or_no_cbt_reads_everything() {
        let size = 5 * MIB + 3;
        let full = plan(size, MIB as u32, None, None);
        assert_eq!(full.reads, vec![0..6]);
        assert!(!full.uses_base);
        let b = base(size);
        assert_eq!(plan(size, MIB as u32, Some(&b), None).reads, vec![0..6]);
        let cbt = CbtBitmap::from_bytes(vec![0; 16]);
        // A base of another block size is unusable.
        let mut other = b.clone();
        other.block_size = 2 * MIB as u32;
        other.blocks.truncate(3);
        assert_eq!(
            plan(size, MIB as u32, Some(&other), Some(&cbt)).reads,
            vec![0..6]
        );
        assert_eq!(plan(0, MIB as u32, None, None).reads, vec![]);
    }

    #[test]
    fn cbt_selects_blocks_overlapping_changed_granules() {
        let size = 8 * MIB;
        let mut bits = vec![0u8; 16]; // 128 granules = 8 MiB
        bits[0] = 0x01; // granule 7: block 0
        bits[2] = 0x80; // granule 16: block 1
        bits[12] = 0x10; // granule 99: block 6
        let p = plan(
            size,
            MIB as u32,
            Some(&base(size)),
            Some(&CbtBitmap::from_bytes(bits)),
        );
        assert_eq!(p.reads, vec![0..2, 6..7]);
        assert!(p.uses_base);
        assert!(p.reads_block(1) && !p.reads_block(2) && p.reads_block(6));
        assert_eq!(p.read_blocks(), 3);
    }

    #[test]
    fn grown_disk_and_short_last_blocks_are_read() {
        // Base of 2.5 MiB: blocks 0,1 whole, block 2 short. New disk 4 MiB + 1.
        let cbt = CbtBitmap::from_bytes(vec![0; 16]);
        let p = plan(
            4 * MIB + 1,
            MIB as u32,
            Some(&base(5 * MIB / 2)),
            Some(&cbt),
        );
        assert_eq!(p.reads, vec![2..5]);
        // Same size, short last block: always re-read (cheap, and never trusts a partial).
        let p = plan(
            5 * MIB / 2,
            MIB as u32,
            Some(&base(5 * MIB / 2)),
            Some(&cbt),
        );
        assert_eq!(p.reads, vec![2..3]);
        // A bitmap too short for the disk: the uncovered tail is read.
        let short = CbtBitmap::from_bytes(vec![0; 2]); // 1 MiB covered
        let p = plan(4 * MIB, MIB as u32, Some(&base(4 * MIB)), Some(&short));
        assert_eq!(p.reads, vec![1..4]);
    }

    #[test]
    fn marking_a_range_sets_its_granules_only() {
        let mut cbt = CbtBitmap::from_bytes(vec![0; 4]);
        cbt.mark_changed(3 * CBT_GRANULE + 1..5 * CBT_GRANULE);
        let changed: Vec<u64> = (0..32).filter(|g| cbt.granule_changed(*g)).collect();
        assert_eq!(changed, [3, 4]);
        cbt.mark_changed(40 * CBT_GRANULE..41 * CBT_GRANULE);
        assert!(cbt.granule_changed(40));
        assert!(
            cbt.granule_changed(35),
            "past the old end still counts as changed"
        );
        assert!(!cbt.granule_changed(5));
    }
}
