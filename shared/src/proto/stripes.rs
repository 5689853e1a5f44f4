//! How a restore's blocks are shared among its data streams, and the agent's check that
//! each stream gets every one of its blocks exactly once, in order.
//!
//! Blocks go in stripes of [`RESTORE_STRIPE`], round robin: stripe `j` belongs to stream
//! `j % streams`. A stream's own blocks, in disk order, are numbered by their *ordinal*
//! `0..count`. The A3 sends each of them in ordinal order, either as a chunk or inside a
//! run of zero blocks, so the agent needs O(1) state per stream (the next ordinal), never
//! the disk's block list.

use std::ops::Range;

use super::messages::{Geometry, WireId};

/// Restore streams take blocks in stripes of this many, round robin, so that each stream
/// writes runs of neighbouring blocks.
pub const RESTORE_STRIPE: u64 = 8;

/// The stream a restore block belongs to.
pub fn restore_stream_of(index: u64, streams: u32) -> u32 {
    ((index / RESTORE_STRIPE) % u64::from(streams.max(1))) as u32
}

/// One stream's share of a disk's blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripes {
    stream: u64,
    streams: u64,
    blocks: u64,
}

impl Stripes {
    /// Stream `stream` of `streams` over a disk of `blocks` blocks.
    pub fn new(stream: u32, streams: u32, blocks: u64) -> Stripes {
        Stripes {
            stream: u64::from(stream),
            streams: u64::from(streams.max(1)),
            blocks,
        }
    }

    /// How many blocks the stream has.
    pub fn count(&self) -> u64 {
        let stripes = self.blocks.div_ceil(RESTORE_STRIPE);
        if self.stream >= stripes {
            return 0;
        }
        let own = (stripes - 1 - self.stream) / self.streams + 1;
        let last_is_ours = (stripes - 1) % self.streams == self.stream;
        let short = if last_is_ours {
            stripes * RESTORE_STRIPE - self.blocks
        } else {
            0
        };
        own * RESTORE_STRIPE - short
    }

    /// The block index of ordinal `ord`.
    pub fn block(&self, ord: u64) -> u64 {
        ((ord / RESTORE_STRIPE) * self.streams + self.stream) * RESTORE_STRIPE
            + ord % RESTORE_STRIPE
    }

    /// The ordinal of block `index`, when it is one of this stream's.
    pub fn ordinal(&self, index: u64) -> Option<u64> {
        let stripe = index / RESTORE_STRIPE;
        (index < self.blocks && stripe % self.streams == self.stream)
            .then(|| (stripe / self.streams) * RESTORE_STRIPE + index % RESTORE_STRIPE)
    }

    /// The block ranges (one per stripe at most) of ordinals `ords`, in order.
    pub fn block_ranges(&self, ords: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut ord = ords.start;
        std::iter::from_fn(move || {
            if ord >= ords.end {
                return None;
            }
            let in_stripe = (RESTORE_STRIPE - ord % RESTORE_STRIPE).min(ords.end - ord);
            let start = self.block(ord);
            ord += in_stripe;
            Some(start..start + in_stripe)
        })
    }
}

/// What the A3 sends next on a restore stream (the chunk's bytes are read later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreItem {
    /// A stored block: send its chunk.
    Chunk {
        /// The block.
        index: u64,
        /// Its id.
        id: WireId,
    },
    /// A run of the stream's zero blocks.
    Zeros {
        /// The first block.
        first: u64,
        /// How many of the stream's blocks.
        count: u64,
    },
}

/// The A3's side: turns a disk's block list, in disk order, into what stream `stream` of
/// `streams` sends, in order (the other streams' blocks are skipped, zero blocks merged
/// into runs). Errors of the list pass through and end the items.
pub fn restore_items<E>(
    stream: u32,
    streams: u32,
    list: impl Iterator<Item = Result<(u64, Option<WireId>), E>>,
) -> impl Iterator<Item = Result<RestoreItem, E>> {
    let mut list = list
        .filter(move |e| {
            e.as_ref()
                .map_or(true, |(i, _)| restore_stream_of(*i, streams) == stream)
        })
        .peekable();
    std::iter::from_fn(move || {
        let (index, block) = match list.next()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e)),
        };
        if let Some(id) = block {
            return Some(Ok(RestoreItem::Chunk { index, id }));
        }
        let mut count = 1;
        while let Some(Ok((_, None))) = list.peek() {
            list.next();
            count += 1;
        }
        Some(Ok(RestoreItem::Zeros {
            first: index,
            count,
        }))
    })
}

/// The A3 broke a restore stream's order. Each names the offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverError {
    /// A block other than the next one expected (a gap, a repeat, out of order, or another
    /// stream's block).
    #[error(
        "restore stream {stream}: the A3 sent the block at offset {got}, but the block at \
         offset {want} comes next on this stream (a gap, a repeat, or a block out of order)"
    )]
    OutOfOrder {
        /// The stream.
        stream: u32,
        /// The offset sent.
        got: u64,
        /// The offset expected.
        want: u64,
    },
    /// Blocks past the end of the stream's share.
    #[error(
        "restore stream {stream}: the A3 sent the block at offset {got}, past this stream's \
         last block"
    )]
    PastEnd {
        /// The stream.
        stream: u32,
        /// The offset sent.
        got: u64,
    },
    /// A run of zero blocks that holds none, or runs past the end.
    #[error(
        "restore stream {stream}: the A3 sent a run of {count} zero block(s) at offset {at}, \
         which this stream does not have"
    )]
    BadRun {
        /// The stream.
        stream: u32,
        /// The run's first offset.
        at: u64,
        /// Its length in blocks.
        count: u64,
    },
    /// The stream ended with blocks left.
    #[error(
        "restore stream {stream}: the A3 ended the stream before the block at offset {want} \
         ({left} block(s) of this stream never came)"
    )]
    Incomplete {
        /// The stream.
        stream: u32,
        /// The first offset missing.
        want: u64,
        /// How many blocks are missing.
        left: u64,
    },
}

/// The agent's per-stream check: every block of the stream, once, in order, no gap.
#[derive(Debug, Clone)]
pub struct Coverage {
    stream: u32,
    stripes: Stripes,
    block_size: u64,
    next: u64,
}

impl Coverage {
    /// Stream `stream` of `streams` restoring a disk of `geometry`.
    pub fn new(stream: u32, streams: u32, geometry: Geometry) -> Coverage {
        Coverage {
            stream,
            stripes: Stripes::new(stream, streams, geometry.blocks()),
            block_size: u64::from(geometry.block_size),
            next: 0,
        }
    }

    /// The stream's share.
    pub fn stripes(&self) -> &Stripes {
        &self.stripes
    }

    fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(self.block_size)
    }

    /// Checks that `index` is the next block (the A3 sent its chunk).
    pub fn chunk(&mut self, index: u64) -> Result<(), CoverError> {
        self.expect(index)?;
        self.next += 1;
        Ok(())
    }

    /// Checks that a run of `count` zero blocks from block `first` is next; returns the
    /// ordinals it covers.
    pub fn zeros(&mut self, first: u64, count: u64) -> Result<Range<u64>, CoverError> {
        self.expect(first)?;
        let end = self
            .next
            .checked_add(count)
            .filter(|&e| count > 0 && e <= self.stripes.count())
            .ok_or(CoverError::BadRun {
                stream: self.stream,
                at: self.offset(first),
                count,
            })?;
        let ords = self.next..end;
        self.next = end;
        Ok(ords)
    }

    fn expect(&self, index: u64) -> Result<(), CoverError> {
        if self.next >= self.stripes.count() {
            return Err(CoverError::PastEnd {
                stream: self.stream,
                got: self.offset(index),
            });
        }
        let want = self.stripes.block(self.next);
        if index != want {
            return Err(CoverError::OutOfOrder {
                stream: self.stream,
                got: self.offset(index),
                want: self.offset(want),
            });
        }
        Ok(())
    }

    /// Checks, at the stream's end, that no block is left.
    pub fn finish(&self) -> Result<(), CoverError> {
        let count = self.stripes.count();
        if self.next < count {
            return Err(CoverError::Incomplete {
                stream: self.stream,
                want: self.offset(self.stripes.block(self.next)),
                left: count - self.next,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u32 = 64 << 10;

    fn geometry(blocks: u64) -> Geometry {
        Geometry {
            size: blocks * u64::from(BS) - 1,
            block_size: BS,
        }
    }

    #[test]
    fn ordinals_match_the_stream_of_each_block() {
        for blocks in [0u64, 1, 7, 8, 9, 23, 24, 25, 100] {
            for streams in 1..5u32 {
                let mut total = 0;
                for s in 0..streams {
                    let st = Stripes::new(s, streams, blocks);
                    let mine: Vec<u64> = (0..blocks)
                        .filter(|&i| restore_stream_of(i, streams) == s)
                        .collect();
                    assert_eq!(st.count(), mine.len() as u64, "{blocks} {streams} {s}");
                    for (ord, &i) in mine.iter().enumerate() {
                        assert_eq!(st.block(ord as u64), i);
                        assert_eq!(st.ordinal(i), Some(ord as u64));
                    }
                    let ranges: Vec<u64> = st.block_ranges(0..st.count()).flatten().collect();
                    assert_eq!(ranges, mine);
                    total += st.count();
                }
                assert_eq!(total, blocks);
            }
        }
    }

    #[test]
    fn the_items_a_stream_sends_cover_it_in_order() {
        let blocks = 45u64;
        let list: Vec<Option<WireId>> = (0..blocks)
            .map(|i| (i % 5 == 0).then_some([i as u8; 32]))
            .collect();
        for streams in 1..4 {
            for s in 0..streams {
                let entries = list
                    .iter()
                    .enumerate()
                    .map(|(i, b)| Ok::<_, ()>((i as u64, *b)));
                let mut c = Coverage::new(s, streams, geometry(blocks));
                for item in restore_items(s, streams, entries) {
                    match item.unwrap() {
                        RestoreItem::Chunk { index, id } => {
                            assert_eq!(list[index as usize], Some(id));
                            c.chunk(index).unwrap();
                        }
                        RestoreItem::Zeros { first, count } => {
                            let ords = c.zeros(first, count).unwrap();
                            for r in c.stripes().block_ranges(ords) {
                                assert!(r.clone().all(|i| list[i as usize].is_none()), "{r:?}");
                            }
                        }
                    }
                }
                c.finish().unwrap();
            }
        }
        // An error in the list ends the items with it.
        let broken = [Ok((0, None)), Err("bad manifest")].into_iter();
        let items: Vec<_> = restore_items(0, 1, broken).collect();
        assert_eq!(items.last(), Some(&Err("bad manifest")));
    }

    #[test]
    fn chunks_and_zero_runs_in_order_cover_the_stream() {
        // 3 streams over 40 blocks: stream 1 has 8..16 and 32..40.
        let mut c = Coverage::new(1, 3, geometry(40));
        c.chunk(8).unwrap();
        assert_eq!(
            c.zeros(9, 9).unwrap(),
            1..10,
            "a run crosses into the next stripe"
        );
        assert_eq!(
            c.stripes().block_ranges(1..10).collect::<Vec<_>>(),
            [9..16, 32..34]
        );
        assert!(c.finish().is_err());
        c.chunk(34).unwrap();
        c.zeros(35, 5).unwrap();
        c.finish().unwrap();
    }

    #[test]
    fn gaps_repeats_disorder_and_overruns_are_refused_naming_the_offset() {
        let bs = u64::from(BS);
        let mut c = Coverage::new(0, 2, geometry(20));
        c.chunk(0).unwrap();
        // A gap: block 1 skipped.
        let e = c.clone().chunk(2).unwrap_err();
        assert_eq!(
            e,
            CoverError::OutOfOrder {
                stream: 0,
                got: 2 * bs,
                want: bs
            }
        );
        assert!(e.to_string().contains(&format!("offset {}", 2 * bs)), "{e}");
        // A repeat.
        assert!(matches!(c.chunk(0), Err(CoverError::OutOfOrder { .. })));
        // Another stream's block.
        c.zeros(1, 7).unwrap();
        assert!(matches!(c.chunk(8), Err(CoverError::OutOfOrder { .. })));
        // A run past the end (stream 0 has 0..8 and 16..20: 4 left).
        assert!(matches!(c.zeros(16, 5), Err(CoverError::BadRun { .. })));
        assert!(matches!(c.zeros(16, 0), Err(CoverError::BadRun { .. })));
        c.zeros(16, 4).unwrap();
        assert!(matches!(c.chunk(20), Err(CoverError::PastEnd { .. })));
        c.finish().unwrap();
        // Ending early names the first missing offset.
        let early = Coverage::new(1, 2, geometry(20));
        let e = early.finish().unwrap_err();
        assert!(e.to_string().contains(&format!("offset {}", 8 * bs)), "{e}");
    }
}
