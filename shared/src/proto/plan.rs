//! The backup planner: which blocks of a disk the agent must read.
//!
//! The A3 runs it on the disk size the agent announces, the base's geometry and the CBT
//! bitmap, and sends the result down in [`DataDown::Plan`] pages ([`Plan::pages`]); the
//! agent puts them together ([`PlanReceiver`]) and reads what they say. The plan is one bit
//! per block (8 MiB for 16 TiB at 256 KiB), never a list of ranges, which a fragmented
//! CBT bitmap could grow without bound. A block is read when:
//! - there is no usable base (none, a different block size, or no CBT bitmap); or
//! - any 64 KiB CBT granule it overlaps is marked changed (a bitmap too short counts as
//!   changed: missing information never means "unchanged"); or
//! - it lies beyond the base's last whole block (the disk grew, or the base's last block was
//!   short and now holds more bytes).

use std::ops::Range;

use base64::Engine;

use super::bitmap::BlockBitmap;
use super::consts::{CBT_GRANULE, PLAN_PAGE_BYTES};
use super::messages::{DataDown, Geometry};

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

/// What to read: one bit per block of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The blocks to read and report.
    pub reads: BlockBitmap,
    /// Blocks of the disk in all.
    pub blocks: u64,
    /// Whether blocks outside `reads` are taken from the base.
    pub uses_base: bool,
}

impl Plan {
    /// Blocks to read.
    pub fn read_blocks(&self) -> u64 {
        self.reads.count_ones()
    }

    /// Whether block `i` is to be read.
    pub fn reads_block(&self, i: u64) -> bool {
        self.reads.get(i)
    }

    /// The runs of blocks to read, in order.
    pub fn runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.reads.runs()
    }

    /// The plan as [`DataDown::Plan`] pages, in order; at least one (a disk of no block
    /// has an empty last page).
    pub fn pages(&self) -> impl Iterator<Item = DataDown> + '_ {
        let per_page = 8 * PLAN_PAGE_BYTES as u64;
        let pages = self.blocks.div_ceil(per_page).max(1);
        (0..pages).map(move |p| {
            let first = p * per_page;
            DataDown::Plan {
                first,
                bits: self.reads.bytes(first, PLAN_PAGE_BYTES).to_vec(),
                last: p + 1 == pages,
            }
        })
    }
}

/// A plan page out of order, too long, or a plan that ends short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backup plan from the A3: {0}")]
pub struct PlanPageError(String);

/// The agent's side of the plan pages: puts them together, in order.
#[derive(Debug)]
pub struct PlanReceiver {
    reads: BlockBitmap,
    next: u64,
}

impl PlanReceiver {
    /// Waits for the plan of a disk of `blocks` blocks.
    pub fn new(blocks: u64) -> PlanReceiver {
        PlanReceiver {
            reads: BlockBitmap::new(blocks),
            next: 0,
        }
    }

    /// Takes the next page; returns the blocks to read once the last page is in.
    pub fn page(
        &mut self,
        first: u64,
        bits: &[u8],
        last: bool,
    ) -> Result<Option<BlockBitmap>, PlanPageError> {
        let blocks = self.reads.len();
        if first != self.next {
            return Err(PlanPageError(format!(
                "a page for block {first}, where block {} comes next",
                self.next
            )));
        }
        if bits.len() > PLAN_PAGE_BYTES {
            return Err(PlanPageError(format!(
                "a page of {} bytes (max {PLAN_PAGE_BYTES})",
                bits.len()
            )));
        }
        let end = first + 8 * bits.len() as u64;
        if end.div_ceil(8) > blocks.div_ceil(8) {
            return Err(PlanPageError(format!(
                "a page up to block {end} of a {blocks}-block disk"
            )));
        }
        self.reads.put_bytes(first, bits);
        self.next = end.min(blocks);
        match (last, self.next == blocks) {
            (true, true) => Ok(Some(std::mem::replace(
                &mut self.reads,
                BlockBitmap::new(0),
            ))),
            (true, false) => Err(PlanPageError(format!(
                "the plan ends at block {} of {blocks}",
                self.next
            ))),
            (false, _) => Ok(None),
        }
    }
}

/// Plans a backup of a `size`-byte disk in `block_size` blocks.
pub fn plan(size: u64, block_size: u32, base: Option<Geometry>, cbt: Option<&CbtBitmap>) -> Plan {
    let g = Geometry { size, block_size };
    let blocks = g.blocks();
    let mut reads = BlockBitmap::new(blocks);
    let (base, cbt) = match (base, cbt) {
        (Some(b), Some(c)) if b.block_size == block_size && b.is_valid() => (b, c),
        _ => {
            reads.set_range(0..blocks);
            return Plan {
                reads,
                blocks,
                uses_base: false,
            };
        }
    };
    // Base blocks that are whole, and whole in the new disk too, can be reused.
    let base_whole = base.size / u64::from(block_size);
    for i in 0..blocks {
        let range = g.block_range(i);
        let whole_now = range.end - range.start == u64::from(block_size);
        if i >= base_whole || !whole_now || cbt.any_changed(range) {
            reads.set(i);
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

    fn base(size: u64) -> Geometry {
        Geometry {
            size,
            block_size: MIB as u32,
        }
    }

    fn runs(p: &Plan) -> Vec<Range<u64>> {
        p.runs().collect()
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
        assert_eq!(runs(&full), vec![0..6]);
        assert!(!full.uses_base);
        let b = base(size);
        assert_eq!(runs(&plan(size, MIB as u32, Some(b), None)), vec![0..6]);
        let cbt = CbtBitmap::from_bytes(vec![0; 16]);
        // A base of another block size is unusable.
        let mut other = b;
        other.block_size = 2 * MIB as u32;
        assert_eq!(
            runs(&plan(size, MIB as u32, Some(other), Some(&cbt))),
            vec![0..6]
        );
        assert_eq!(runs(&plan(0, MIB as u32, None, None)), vec![]);
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
            Some(base(size)),
            Some(&CbtBitmap::from_bytes(bits)),
        );
        assert_eq!(runs(&p), vec![0..2, 6..7]);
        assert!(p.uses_base);
        assert!(p.reads_block(1) && !p.reads_block(2) && p.reads_block(6));
        assert_eq!(p.read_blocks(), 3);
    }

    #[test]
    fn grown_disk_and_short_last_blocks_are_read() {
        // Base of 2.5 MiB: blocks 0,1 whole, block 2 short. New disk 4 MiB + 1.
        let cbt = CbtBitmap::from_bytes(vec![0; 16]);
        let p = plan(4 * MIB + 1, MIB as u32, Some(base(5 * MIB / 2)), Some(&cbt));
        assert_eq!(runs(&p), vec![2..5]);
        // Same size, short last block: always re-read (cheap, and never trusts a partial).
        let p = plan(5 * MIB / 2, MIB as u32, Some(base(5 * MIB / 2)), Some(&cbt));
        assert_eq!(runs(&p), vec![2..3]);
        // A bitmap too short for the disk: the uncovered tail is read.
        let short = CbtBitmap::from_bytes(vec![0; 2]); // 1 MiB covered
        let p = plan(4 * MIB, MIB as u32, Some(base(4 * MIB)), Some(&short));
        assert_eq!(runs(&p), vec![1..4]);
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

    #[test]
    fn pages_put_together_give_the_plan_back() {
        let mut bits = vec![0u8; 16];
        bits[3] = 0xF0;
        let size = 8 * MIB * 16 + 5;
        let p = plan(
            size,
            MIB as u32,
            Some(base(size)),
            Some(&CbtBitmap::from_bytes(bits)),
        );
        let pages: Vec<DataDown> = p.pages().collect();
        assert_eq!(pages.len(), 1);
        let mut rx = PlanReceiver::new(p.blocks);
        let DataDown::Plan { first, bits, last } = &pages[0] else {
            panic!("a plan page")
        };
        assert_eq!(rx.page(*first, bits, *last).unwrap(), Some(p.reads.clone()));
        // A disk of no block still gets its (empty) last page.
        let empty = plan(0, MIB as u32, None, None);
        assert_eq!(empty.pages().count(), 1);
    }

    #[test]
    fn bad_plan_pages_are_refused() {
        let mut rx = PlanReceiver::new(20);
        assert!(rx.page(8, &[0xFF], false).is_err(), "out of order");
        assert!(rx.page(0, &[0; 4], true).is_err(), "past the end");
        assert!(rx.page(0, &[0xFF], true).is_err(), "ends short");
        let mut rx = PlanReceiver::new(20);
        assert_eq!(rx.page(0, &[0xFF, 0], false).unwrap(), None);
        let done = rx.page(16, &[0xFF], true).unwrap().unwrap();
        assert_eq!(done.runs().collect::<Vec<_>>(), [0..8, 16..20]);
    }
}
