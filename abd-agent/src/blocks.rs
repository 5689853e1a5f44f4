//! The agent's use of `a3_shared::chunk`: block ids, zero detection, and chunk encoding with
//! one zstd context per thread (the blocking pool's threads are reused, so contexts are
//! created a handful of times per process, not per block).

use std::cell::RefCell;

use a3_shared::chunk::{self, BlockId, ChunkEncoder};
use a3_shared::proto::WireId;

/// zstd level for chunks: level 1 is the fastest of DESIGN.md §4's 1–3 range; on two cores
/// compression competes with QUIC for CPU, and level 1 already removes most redundancy.
pub const ZSTD_LEVEL: i32 = 1;

pub use chunk::is_zero;

/// A block's id.
pub fn block_id(block: &[u8]) -> WireId {
    BlockId::of(block).0
}

thread_local! {
    static ENCODER: RefCell<Option<ChunkEncoder>> = const { RefCell::new(None) };
}

/// Encodes a block into a chunk (zstd, or raw when that does not shrink it).
pub fn encode(block: &[u8]) -> anyhow::Result<Vec<u8>> {
    ENCODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(ChunkEncoder::new(ZSTD_LEVEL)?);
        }
        Ok(slot.as_mut().expect("just set").encode(block)?)
    })
}

/// Decodes a chunk, checking its plaintext hashes to `id`.
pub fn decode(chunk_bytes: &[u8], id: &WireId) -> anyhow::Result<Vec<u8>> {
    Ok(chunk::decode(&BlockId(*id), chunk_bytes)?)
}
