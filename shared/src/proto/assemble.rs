//! The A3's side of a backup: the "need" bookkeeping and the block list being built.
//!
//! Call order, for each data stream, under one lock per job:
//! 1. [`Assembler::record_batch`] on every [`HashBatch`]: checks it against the plan, writes
//!    its blocks into the [`Slots`], and returns the ids worth asking the store about
//!    ([`Pending`]). An id equal to the base's at its index, settled earlier in this job,
//!    or being asked or awaited already, is not asked again.
//! 2. Ask the store which of [`Pending::ids`] it has (I/O, outside the lock).
//! 3. [`Assembler::resolve`] with the answer: returns the [`DataDown::Need`] to send, and
//!    remembers each needed id as outstanding.
//! 4. [`Assembler::chunk_received`] once a chunk's bytes are stored (the store re-hashed
//!    them): only outstanding ids are accepted.
//! 5. [`Assembler::finish`] when the agent says it is done: every planned block must have
//!    been reported and every needed chunk received, or nothing is committed.
//!
//! Memory is bounded whatever the disk's size: the block list lives in the slots (the A3's
//! is a temp file), the plan and the unreported blocks are one bit per block, settled ids
//! are a bounded cache ([`IdCache`]: forgetting one costs a second question to the store),
//! and ids asked or awaited are capped at [`MAX_UNSETTLED`] (the agent sends a batch's
//! chunks before its next batch, so a few batches' worth is all an honest agent needs).
//!
//! For an incremental, the caller fills the slots with the base's block list before
//! [`Assembler::new`]: blocks the plan does not read keep the base's ids, and a reported id
//! equal to the base's needs no question (the committed base version keeps its chunks from
//! GC). A base block whose chunk the store lost must be cleared from the slots (and marked
//! changed in the CBT bitmap) by the caller.

use std::collections::HashSet;

use super::bitmap::BlockBitmap;
use super::consts::MAX_BATCH_ENTRIES;
use super::idcache::IdCache;
use super::messages::{BlockRef, DataDown, Geometry, HashBatch, WireId};
use super::plan::{CbtBitmap, Plan, plan};
use super::slots::Slots;

/// The most ids a job may have asked about or requested without an answer or the chunk.
pub const MAX_UNSETTLED: usize = 16 * MAX_BATCH_ENTRIES;

/// A peer broke the protocol, or a job cannot complete. The message names the block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    /// A batch names blocks outside the plan, twice, or is malformed.
    #[error("hash batch {seq}: {what}")]
    BadBatch {
        /// The batch.
        seq: u64,
        /// What is wrong with it.
        what: String,
    },
    /// A chunk arrived that was never asked for (or twice).
    #[error("chunk {} was not requested", hex(.0))]
    Unrequested(WireId),
    /// The agent said it was done, but parts are missing.
    #[error("backup incomplete: {0}")]
    Incomplete(String),
    /// The block list could not be read or written.
    #[error("the job's block list: {0}")]
    Slots(String),
}

/// Lower-case hex of an id, for messages.
pub fn hex(id: &WireId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The ids of one batch to check against the store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "resolve the pending question, or the batch is never answered"]
pub struct Pending {
    seq: u64,
    entries: usize,
    /// `(entry index, id)` to ask about.
    asks: Vec<(usize, WireId)>,
}

impl Pending {
    /// The ids to ask the store about, in order.
    pub fn ids(&self) -> impl Iterator<Item = &WireId> {
        self.asks.iter().map(|(_, id)| id)
    }

    /// How many ids there are.
    pub fn len(&self) -> usize {
        self.asks.len()
    }

    /// Whether there is nothing to ask.
    pub fn is_empty(&self) -> bool {
        self.asks.is_empty()
    }
}

/// Builds one disk version from an agent's reports, into `S`.
#[derive(Debug)]
pub struct Assembler<S> {
    geometry: Geometry,
    plan: Plan,
    slots: S,
    /// Planned blocks not yet reported.
    unreported: BlockBitmap,
    /// Ids settled in this job (the store has them, or they arrived), as far as remembered.
    settled: IdCache,
    /// Ids asked about and not yet answered.
    asking: HashSet<WireId>,
    /// Ids requested and not yet received.
    outstanding: HashSet<WireId>,
    planned_bytes: u64,
    reported_bytes: u64,
}

fn slots_error(e: std::io::Error) -> AssembleError {
    AssembleError::Slots(e.to_string())
}

impl<S: Slots> Assembler<S> {
    /// Starts a backup of a `size`-byte disk. `slots` holds the base's block list for an
    /// incremental (`base` is its geometry), or nothing; it is resized to the disk.
    pub fn new(
        size: u64,
        block_size: u32,
        base: Option<Geometry>,
        cbt: Option<&CbtBitmap>,
        mut slots: S,
    ) -> Result<Assembler<S>, AssembleError> {
        let geometry = Geometry { size, block_size };
        let plan = plan(size, block_size, base, cbt);
        slots.resize(plan.blocks).map_err(slots_error)?;
        let planned_bytes = plan.runs().map(|r| geometry.bytes_of(r)).sum();
        Ok(Assembler {
            geometry,
            unreported: plan.reads.clone(),
            plan,
            slots,
            settled: IdCache::default(),
            asking: HashSet::new(),
            outstanding: HashSet::new(),
            planned_bytes,
            reported_bytes: 0,
        })
    }

    /// The disk size the agent announced.
    pub fn size(&self) -> u64 {
        self.geometry.size
    }

    /// The plan the agent follows.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Bytes of the disk reported so far plus those taken from the base.
    pub fn done_bytes(&self) -> u64 {
        self.geometry.size - self.planned_bytes + self.reported_bytes
    }

    /// Step 1: records a batch and returns the ids to ask the store about.
    pub fn record_batch(&mut self, batch: &HashBatch) -> Result<Pending, AssembleError> {
        let bad = |what: String| AssembleError::BadBatch {
            seq: batch.seq,
            what,
        };
        if batch.entries.len() > MAX_BATCH_ENTRIES {
            return Err(bad(format!(
                "{} entries (max {MAX_BATCH_ENTRIES})",
                batch.entries.len()
            )));
        }
        let end = batch
            .first
            .checked_add(batch.entries.len() as u64)
            .filter(|&e| e <= self.plan.blocks)
            .ok_or_else(|| bad(format!("blocks from {} past the disk's end", batch.first)))?;
        if !self.unreported.all_set(batch.first..end) {
            let i = (batch.first..end)
                .find(|&i| !self.unreported.get(i))
                .expect("a block not set");
            return Err(bad(format!(
                "block {i} is not planned or was already reported"
            )));
        }
        if self.asking.len() + self.outstanding.len() + batch.entries.len() > MAX_UNSETTLED {
            return Err(bad(format!(
                "over {MAX_UNSETTLED} chunks asked for and not received: the agent does not \
                 send the chunks it is asked for"
            )));
        }
        // The slots hold the base's ids (or nothing) until the blocks are reported.
        let mut list = vec![None; batch.entries.len()];
        self.slots
            .read(batch.first, &mut list)
            .map_err(slots_error)?;
        let mut asks = Vec::new();
        for (k, entry) in batch.entries.iter().enumerate() {
            list[k] = match entry {
                BlockRef::Zero => None,
                BlockRef::Hash(id) => {
                    let known = list[k] == Some(*id)
                        || self.asking.contains(id)
                        || self.outstanding.contains(id)
                        || self.settled.contains(id);
                    if !known {
                        self.asking.insert(*id);
                        asks.push((k, *id));
                    }
                    Some(*id)
                }
            };
        }
        self.slots.write(batch.first, &list).map_err(slots_error)?;
        for i in batch.first..end {
            self.unreported.clear(i);
        }
        self.reported_bytes += self.geometry.bytes_of(batch.first..end);
        Ok(Pending {
            seq: batch.seq,
            entries: batch.entries.len(),
            asks,
        })
    }

    /// Step 3: `present[k]` says whether the store has the `k`-th id of `pending`. Returns
    /// the answer to send.
    #[must_use = "the Need answer must be sent to the agent"]
    pub fn resolve(&mut self, pending: Pending, present: &[bool]) -> DataDown {
        assert_eq!(present.len(), pending.asks.len(), "one answer per asked id");
        let mut bits = vec![0u8; pending.entries.div_ceil(8)];
        for ((k, id), &have) in pending.asks.iter().zip(present) {
            self.asking.remove(id);
            if have {
                self.settled.insert(*id);
            } else {
                bits[k / 8] |= 1 << (k % 8);
                self.outstanding.insert(*id);
            }
        }
        DataDown::Need {
            seq: pending.seq,
            bits,
        }
    }

    /// Whether `id` is an outstanding request (check before storing a received chunk).
    pub fn is_outstanding(&self, id: &WireId) -> bool {
        self.outstanding.contains(id)
    }

    /// Step 4: a requested chunk is stored.
    pub fn chunk_received(&mut self, id: &WireId) -> Result<(), AssembleError> {
        if self.outstanding.remove(id) {
            self.settled.insert(*id);
            Ok(())
        } else {
            Err(AssembleError::Unrequested(*id))
        }
    }

    /// Step 5: the disk's geometry and its finished block list, when nothing is missing.
    pub fn finish(self) -> Result<(Geometry, S), AssembleError> {
        if let Some(first) = self.unreported.first_set() {
            return Err(AssembleError::Incomplete(format!(
                "{} planned block(s) never reported, the first at offset {}",
                self.unreported.count_ones(),
                first * u64::from(self.geometry.block_size)
            )));
        }
        if let Some(id) = self.outstanding.iter().chain(&self.asking).next() {
            return Err(AssembleError::Incomplete(format!(
                "{} needed chunk(s) never received, e.g. {}",
                self.outstanding.len() + self.asking.len(),
                hex(id)
            )));
        }
        Ok((self.geometry, self.slots))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u32 = 64 << 10;

    fn id(n: u8) -> WireId {
        [n; 32]
    }

    fn batch(seq: u64, first: u64, entries: Vec<BlockRef>) -> HashBatch {
        HashBatch {
            seq,
            first,
            entries,
        }
    }

    #[test]
    fn base_ids_and_settled_ids_are_not_asked_again() {
        let size = 6 * u64::from(BS);
        // Base: blocks 0..6 hold ids 1..=6; the CBT marks blocks 2 and 3 changed.
        let base: Vec<Option<WireId>> = (1..=6).map(|n| Some(id(n))).collect();
        let mut cbt = CbtBitmap::from_bytes(vec![0; 1]);
        cbt.mark_changed(2 * u64::from(BS)..4 * u64::from(BS));
        let geometry = Geometry {
            size,
            block_size: BS,
        };
        let mut a = Assembler::new(size, BS, Some(geometry), Some(&cbt), base).unwrap();
        assert_eq!(a.plan().runs().collect::<Vec<_>>(), vec![2..4]);
        assert_eq!(a.done_bytes(), 4 * u64::from(BS));
        // Block 2 unchanged after all (same id as the base), block 3 new.
        let p = a
            .record_batch(&batch(
                0,
                2,
                vec![BlockRef::Hash(id(3)), BlockRef::Hash(id(9))],
            ))
            .unwrap();
        assert_eq!(p.ids().copied().collect::<Vec<_>>(), [id(9)]);
        let need = a.resolve(p, &[false]);
        assert_eq!(
            need,
            DataDown::Need {
                seq: 0,
                bits: vec![0b10]
            }
        );
        assert!(a.finish_ref_incomplete());
        a.chunk_received(&id(9)).unwrap();
        let (g, list) = a.finish().unwrap();
        assert_eq!(g, geometry);
        assert_eq!(
            list,
            [1, 2, 3, 9, 5, 6].map(|n| Some(id(n))).to_vec(),
            "unread blocks keep the base's ids"
        );
    }

    #[test]
    fn an_id_being_asked_or_awaited_is_never_requested_twice() {
        let size = 8 * u64::from(BS);
        let mut a = Assembler::new(size, BS, None, None, Vec::new()).unwrap();
        // Two streams report the same new id before either is answered.
        let p1 = a
            .record_batch(&batch(0, 0, vec![BlockRef::Hash(id(7))]))
            .unwrap();
        let p2 = a
            .record_batch(&batch(0, 1, vec![BlockRef::Hash(id(7)), BlockRef::Zero]))
            .unwrap();
        assert_eq!(p1.len(), 1);
        assert!(p2.is_empty(), "already being asked");
        let _ = a.resolve(p1, &[false]);
        let _ = a.resolve(p2, &[]);
        // Outstanding: not asked again either.
        let p3 = a
            .record_batch(&batch(1, 3, vec![BlockRef::Hash(id(7))]))
            .unwrap();
        assert!(p3.is_empty());
        let _ = a.resolve(p3, &[]);
        a.chunk_received(&id(7)).unwrap();
        assert!(a.chunk_received(&id(7)).is_err(), "received twice");
        // Settled: not asked again.
        let p4 = a
            .record_batch(&batch(2, 4, vec![BlockRef::Hash(id(7))]))
            .unwrap();
        assert!(p4.is_empty());
        let _ = a.resolve(p4, &[]);
        let err = a.finish().unwrap_err();
        assert!(err.to_string().contains("offset 327680"), "{err}");
    }

    #[test]
    fn an_agent_that_never_sends_what_it_is_asked_for_is_stopped() {
        let blocks = (MAX_UNSETTLED / MAX_BATCH_ENTRIES + 2) * MAX_BATCH_ENTRIES;
        let size = blocks as u64 * u64::from(BS);
        let mut a = Assembler::new(size, BS, None, None, Vec::new()).unwrap();
        let mut n = 0u32;
        let err = (0..blocks / MAX_BATCH_ENTRIES)
            .map(|b| {
                let entries = (0..MAX_BATCH_ENTRIES)
                    .map(|_| {
                        n += 1;
                        let mut x = [0u8; 32];
                        x[..4].copy_from_slice(&n.to_le_bytes());
                        BlockRef::Hash(x)
                    })
                    .collect();
                let first = (b * MAX_BATCH_ENTRIES) as u64;
                a.record_batch(&batch(b as u64, first, entries)).map(|p| {
                    let none = vec![false; p.len()];
                    let _ = a.resolve(p, &none);
                })
            })
            .find_map(Result::err)
            .expect("refused at some point");
        assert!(err.to_string().contains("does not send"), "{err}");
    }

    #[test]
    fn hostile_batches_are_refused() {
        let mut a = Assembler::new(10 * u64::from(BS), BS, None, None, Vec::new()).unwrap();
        assert!(
            a.record_batch(&batch(0, 8, vec![BlockRef::Zero; 3]))
                .is_err(),
            "past the end"
        );
        assert!(
            a.record_batch(&batch(0, 0, vec![BlockRef::Zero; MAX_BATCH_ENTRIES + 1]))
                .is_err(),
            "too long"
        );
        let p = a
            .record_batch(&batch(0, 0, vec![BlockRef::Zero; 2]))
            .unwrap();
        assert!(p.is_empty());
        assert!(
            a.record_batch(&batch(1, 1, vec![BlockRef::Zero])).is_err(),
            "reported twice"
        );
        assert!(a.chunk_received(&[7; 32]).is_err(), "unrequested chunk");
    }

    impl<S: Slots> Assembler<S> {
        /// Whether finishing now would fail (without consuming the assembler).
        fn finish_ref_incomplete(&self) -> bool {
            self.unreported.first_set().is_some() || !self.outstanding.is_empty()
        }
    }
}
