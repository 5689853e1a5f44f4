//! One bit per block: the plan's blocks to read, the blocks not yet reported.
//!
//! At the largest disk ([`super::MAX_DISK_SIZE`]) and the default block size this is 8 MiB,
//! where a set of indices or a list of ranges could grow to gigabytes on a fragmented CBT
//! bitmap. On the wire (plan pages) bit `k` of byte `b` stands for block `8b + k`, least
//! significant bit first, like [`super::need_bit`].

use std::ops::Range;

/// A fixed-length set of block indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockBitmap {
    bytes: Vec<u8>,
    len: u64,
}

impl BlockBitmap {
    /// `len` blocks, none set.
    pub fn new(len: u64) -> BlockBitmap {
        let bytes = usize::try_from(len.div_ceil(8)).expect("a disk's bitmap fits in memory");
        BlockBitmap {
            bytes: vec![0; bytes],
            len,
        }
    }

    /// How many blocks it covers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it covers no block.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether block `i` is set (false past the end).
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Sets block `i`.
    ///
    /// # Panics
    /// When `i` is past the end.
    pub fn set(&mut self, i: u64) {
        assert!(
            i < self.len,
            "block {i} past the bitmap's {} blocks",
            self.len
        );
        self.bytes[(i / 8) as usize] |= 1 << (i % 8);
    }

    /// Clears block `i` (nothing past the end).
    pub fn clear(&mut self, i: u64) {
        if i < self.len {
            self.bytes[(i / 8) as usize] &= !(1 << (i % 8));
        }
    }

    /// Sets every block of `range`.
    pub fn set_range(&mut self, range: Range<u64>) {
        // Whole bytes at once: a full backup sets every block of a 16 TiB disk.
        let mut i = range.start;
        while i < range.end {
            if i.is_multiple_of(8) && range.end - i >= 8 {
                self.bytes[(i / 8) as usize] = 0xFF;
                i += 8;
            } else {
                self.set(i);
                i += 1;
            }
        }
    }

    /// How many blocks are set.
    pub fn count_ones(&self) -> u64 {
        self.bytes.iter().map(|b| u64::from(b.count_ones())).sum()
    }

    /// The lowest set block.
    pub fn first_set(&self) -> Option<u64> {
        self.next_set(0)
    }

    /// The lowest set block at or after `from`.
    fn next_set(&self, from: u64) -> Option<u64> {
        let mut i = from;
        while i < self.len {
            let byte = self.bytes[(i / 8) as usize] >> (i % 8);
            if byte == 0 {
                i = (i / 8 + 1) * 8;
                continue;
            }
            let at = i + u64::from(byte.trailing_zeros());
            return (at < self.len).then_some(at);
        }
        None
    }

    /// The lowest clear block in `from..limit`, or `limit` (at most the length). The
    /// limit matters: a check of one batch must not scan the rest of a disk.
    fn next_clear(&self, from: u64, limit: u64) -> u64 {
        let limit = limit.min(self.len);
        let mut i = from;
        while i < limit {
            // 64 set blocks at a time through long runs.
            let at = (i / 8) as usize;
            if i.is_multiple_of(64)
                && let Some(word) = self.bytes.get(at..at + 8)
                && word.iter().all(|&b| b == 0xff)
            {
                i += 64;
                continue;
            }
            let byte = !self.bytes[at] >> (i % 8);
            if byte == 0 {
                i = (i / 8 + 1) * 8;
                continue;
            }
            return (i + u64::from(byte.trailing_zeros())).min(limit);
        }
        limit
    }

    /// Whether every block of `range` is set.
    pub fn all_set(&self, range: Range<u64>) -> bool {
        range.is_empty()
            || (range.end <= self.len && self.next_clear(range.start, range.end) >= range.end)
    }

    /// The maximal runs of set blocks, in order.
    pub fn runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut from = 0;
        std::iter::from_fn(move || {
            let start = self.next_set(from)?;
            let end = self.next_clear(start, self.len);
            from = end;
            Some(start..end)
        })
    }

    /// The wire bytes of blocks `first..first + 8 * n` (`first` a multiple of 8), cut at
    /// the end.
    pub fn bytes(&self, first: u64, n: usize) -> &[u8] {
        let start = ((first / 8) as usize).min(self.bytes.len());
        &self.bytes[start..(start + n).min(self.bytes.len())]
    }

    /// Copies wire bytes in at block `first` (a multiple of 8); bits past the end are
    /// ignored.
    pub fn put_bytes(&mut self, first: u64, bytes: &[u8]) {
        let start = ((first / 8) as usize).min(self.bytes.len());
        let n = bytes.len().min(self.bytes.len() - start);
        self.bytes[start..start + n].copy_from_slice(&bytes[..n]);
        if !self.len.is_multiple_of(8)
            && let Some(last) = self.bytes.last_mut()
        {
            *last &= (1u8 << (self.len % 8)) - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_follow_the_set_blocks() {
        let mut b = BlockBitmap::new(70);
        b.set_range(3..20);
        b.set(21);
        b.set_range(64..70);
        assert_eq!(b.runs().collect::<Vec<_>>(), [3..20, 21..22, 64..70]);
        assert_eq!(b.count_ones(), 17 + 1 + 6);
        assert!(b.all_set(3..20) && !b.all_set(3..21) && !b.all_set(69..71));
        assert_eq!(b.first_set(), Some(3));
        b.clear(3);
        assert_eq!(b.first_set(), Some(4));
        assert!(!b.get(70), "past the end reads clear");
        assert_eq!(BlockBitmap::new(0).runs().count(), 0);
    }

    /// Long runs (the word-at-a-time path) and short ones agree with a plain bit-by-bit
    /// reading, for ranges starting and ending anywhere.
    #[test]
    fn runs_and_all_set_agree_with_the_bits() {
        let len = 1000;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..50 {
            let mut b = BlockBitmap::new(len);
            let mut bits = vec![false; len as usize];
            let mut at = 0;
            while at < len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let run = (x % 200).min(len - at);
                if x & (1 << 40) != 0 {
                    b.set_range(at..at + run);
                    bits[at as usize..(at + run) as usize].fill(true);
                }
                at += run.max(1);
            }
            let want: Vec<Range<u64>> = {
                let mut out = Vec::new();
                let mut i = 0;
                while i < len {
                    if bits[i as usize] {
                        let s = i;
                        while i < len && bits[i as usize] {
                            i += 1;
                        }
                        out.push(s..i);
                    }
                    i += 1;
                }
                out
            };
            assert_eq!(b.runs().collect::<Vec<_>>(), want);
            for s in (0..len).step_by(37) {
                for e in (s..=len).step_by(61) {
                    let all = bits[s as usize..e as usize].iter().all(|&v| v);
                    assert_eq!(b.all_set(s..e), all, "{s}..{e}");
                }
            }
        }
    }

    #[test]
    fn wire_bytes_round_trip_and_ignore_bits_past_the_end() {
        let mut a = BlockBitmap::new(20);
        a.set_range(0..20);
        let mut b = BlockBitmap::new(20);
        b.put_bytes(0, &[0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(a, b);
        assert_eq!(b.bytes(16, 8), &[0x0F]);
        assert_eq!(b.runs().collect::<Vec<_>>(), vec![0..20]);
    }
}
