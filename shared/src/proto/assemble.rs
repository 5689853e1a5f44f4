//! The A3's side of a backup: the "need" bookkeeping and the manifest being built.
//!
//! Call order, for each data stream, under one lock per job:
//! 1. [`Assembler::record_batch`] on every [`HashBatch`]: checks it against the plan, fills
//!    the manifest, and returns the ids worth asking the store about ([`Pending`]). Ids
//!    already decided in this job, or equal to the base, are never asked twice.
//! 2. Ask the store which of [`Pending::ids`] it has (I/O, outside the lock).
//! 3. [`Assembler::resolve`] with the answer: returns the [`DataDown::Need`] to send, and
//!    remembers each needed id as outstanding.
//! 4. [`Assembler::chunk_received`] once a chunk's bytes are stored (the store re-hashed
//!    them): only outstanding ids are accepted.
//! 5. [`Assembler::finish`] when the agent says it is done: every planned block must have
//!    been reported and every needed chunk received, or nothing is committed.

use std::collections::HashSet;

use super::consts::MAX_BATCH_ENTRIES;
use super::messages::{BlockRef, DataDown, HashBatch, Manifest, WireId};
use super::plan::{CbtBitmap, Plan, plan};

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

/// Builds one disk version from an agent's reports.
#[derive(Debug)]
pub struct Assembler {
    size: u64,
    block_size: u32,
    plan: Plan,
    base: Option<Manifest>,
    blocks: Vec<Option<WireId>>,
    /// Planned blocks not yet reported.
    unreported: HashSet<u64>,
    /// Ids decided in this job (present, or requested).
    seen: HashSet<WireId>,
    /// Ids requested and not yet received.
    outstanding: HashSet<WireId>,
    reported_bytes: u64,
}

impl Assembler {
    /// Starts a backup of a `size`-byte disk. Blocks the plan does not read are taken from
    /// `base` now.
    pub fn new(
        size: u64,
        block_size: u32,
        base: Option<Manifest>,
        cbt: Option<&CbtBitmap>,
    ) -> Assembler {
        let plan = plan(size, block_size, base.as_ref(), cbt);
        let n = plan.blocks as usize;
        let mut blocks = vec![None; n];
        if plan.uses_base {
            let b = base
                .as_ref()
                .expect("a plan uses the base only when there is one");
            for (i, slot) in blocks.iter_mut().enumerate() {
                if !plan.reads_block(i as u64) {
                    *slot = b.blocks[i];
                }
            }
        }
        let unreported = plan.reads.iter().flat_map(|r| r.clone()).collect();
        Assembler {
            size,
            block_size,
            plan,
            base,
            blocks,
            unreported,
            seen: HashSet::new(),
            outstanding: HashSet::new(),
            reported_bytes: 0,
        }
    }

    /// The disk size the agent announced.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The plan both peers follow.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Bytes of the disk reported so far plus those taken from the base.
    pub fn done_bytes(&self) -> u64 {
        let planned: u64 = self
            .plan
            .reads
            .iter()
            .flat_map(|r| r.clone())
            .map(|i| {
                let r = Manifest::block_range(self.size, self.block_size, i);
                r.end - r.start
            })
            .sum();
        self.size - planned + self.reported_bytes
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
        if let Some(i) = (batch.first..end).find(|i| !self.unreported.contains(i)) {
            return Err(bad(format!(
                "block {i} is not planned or was already reported"
            )));
        }
        let mut asks = Vec::new();
        for (k, entry) in batch.entries.iter().enumerate() {
            let i = batch.first + k as u64;
            let id = match entry {
                BlockRef::Zero => None,
                BlockRef::Same => {
                    let base_id = self
                        .base
                        .as_ref()
                        .filter(|b| b.block_size == self.block_size)
                        .and_then(|b| b.blocks.get(i as usize).copied().flatten())
                        .ok_or_else(|| {
                            bad(format!(
                                "block {i}: \"same as base\" but the base has no such block"
                            ))
                        })?;
                    Some(base_id)
                }
                BlockRef::Hash(id) => {
                    if self.seen.insert(*id) {
                        asks.push((k, *id));
                    }
                    Some(*id)
                }
            };
            self.blocks[i as usize] = id;
        }
        for i in batch.first..end {
            self.unreported.remove(&i);
            let r = Manifest::block_range(self.size, self.block_size, i);
            self.reported_bytes += r.end - r.start;
        }
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
            if !have {
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
            Ok(())
        } else {
            Err(AssembleError::Unrequested(*id))
        }
    }

    /// Step 5: the finished manifest, when nothing is missing.
    pub fn finish(&self) -> Result<Manifest, AssembleError> {
        if let Some(first) = self.unreported.iter().min() {
            return Err(AssembleError::Incomplete(format!(
                "{} planned block(s) never reported, the first at offset {}",
                self.unreported.len(),
                first * u64::from(self.block_size)
            )));
        }
        if let Some(id) = self.outstanding.iter().next() {
            return Err(AssembleError::Incomplete(format!(
                "{} needed chunk(s) never received, e.g. {}",
                self.outstanding.len(),
                hex(id)
            )));
        }
        Ok(Manifest {
            size: self.size,
            block_size: self.block_size,
            blocks: self.blocks.clone(),
        })
    }
}
