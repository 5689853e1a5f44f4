//! The messages of port 2811, encoded with postcard inside [`super::frame`]s.
//!
//! A connection carries:
//! - **the control stream**, the first bidirectional stream the agent opens: it sends
//!   [`AgentMsg::Hello`] (or [`AgentMsg::Enroll`] on a connection without a client
//!   certificate), the A3 answers [`A3Msg::Welcome`] (or [`A3Msg::Enrolled`] /
//!   [`A3Msg::Refused`]), then the A3 assigns jobs and the agent reports progress and results;
//! - **data streams**, further bidirectional streams the agent opens per job, each starting
//!   with [`DataUp::Open`]. For a backup, [`HashBatch`]es go up, [`DataDown::Need`] answers
//!   come down, and the needed chunks go up. For a restore, the A3 sends the chunks of its
//!   share of the blocks down.
//!
//! Block ids travel as raw 32-byte BLAKE3-256 digests; chunk bodies are the store's chunk
//! encoding (zstd or raw, see `crate::chunk`), carried as opaque bytes.

use serde::{Deserialize, Serialize};

/// A BLAKE3-256 block id on the wire.
pub type WireId = [u8; 32];

/// Agent → A3, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// First message of an enrolled agent.
    Hello {
        /// [`super::PROTOCOL_VERSION`] of the agent.
        version: u32,
        /// The ABD id; must match the id the client certificate was issued for.
        abd_id: String,
        /// The agent's build, for logs.
        agent: String,
    },
    /// First (and only) message of an agent without a certificate: trade a one-time token
    /// for a client certificate.
    Enroll {
        /// [`super::PROTOCOL_VERSION`] of the agent.
        version: u32,
        /// The ABD id the token was issued for.
        abd_id: String,
        /// The one-time enrollment token.
        token: String,
        /// The agent's ECDSA P-256 public key (uncompressed SEC1 point) to certify. The
        /// token, not a CSR signature, is what authenticates the request.
        public_key: Vec<u8>,
    },
    /// Progress of a running job.
    Progress(Progress),
    /// A job ended well.
    Done {
        /// The job.
        job: u64,
        /// What it did.
        outcome: Outcome,
    },
    /// A job failed; nothing is committed.
    Failed {
        /// The job.
        job: u64,
        /// What went wrong, naming the thing and the fix.
        reason: String,
    },
    /// A [`HashJob`] read its whole device.
    Hashed {
        /// The job.
        job: u64,
        /// The device's size in bytes (all of it was read).
        size: u64,
        /// BLAKE3-256 of the device's bytes.
        digest: WireId,
        /// How long the read took, in microseconds.
        micros: u64,
    },
}

/// How far a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The job.
    pub job: u64,
    /// Bytes of the disk dealt with (read, or taken from the base; written, for a restore).
    pub done: u64,
    /// Bytes of the disk in all.
    pub total: u64,
    /// Compressed bytes sent over the wire so far.
    pub sent: u64,
}

/// The result of a finished job, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Bytes read from the device (backup) or written to the target (restore).
    pub bytes_io: u64,
    /// Blocks found all-zero (backup) or written sparsely (restore).
    pub zero_blocks: u64,
    /// Chunks sent (backup) or received (restore).
    pub chunks: u64,
    /// Chunk bytes (encoded) sent or received.
    pub chunk_bytes: u64,
}

/// A3 → agent, on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum A3Msg {
    /// The agent is accepted; jobs follow.
    Welcome {
        /// [`super::PROTOCOL_VERSION`] of the A3.
        version: u32,
    },
    /// Enrollment succeeded: the client certificate (DER) for the agent's key, to present
    /// on every later connection.
    Enrolled {
        /// The certificate, issued by the A3's CA for this ABD id.
        cert_der: Vec<u8>,
    },
    /// The A3 refuses the agent (bad version, token, id); the connection closes.
    Refused {
        /// Why, and what to do.
        reason: String,
    },
    /// Back up a device.
    Backup(BackupJob),
    /// Restore a disk version onto a device or file.
    Restore(RestoreJob),
    /// Stop a running job; the agent answers [`AgentMsg::Failed`].
    Cancel {
        /// The job.
        job: u64,
        /// Why.
        reason: String,
    },
    /// Read a whole device and hash it (the ABD diag job's test disk); the agent answers
    /// [`AgentMsg::Hashed`] or [`AgentMsg::Failed`].
    Hash(HashJob),
}

/// A hash assignment: proves the ABD sees a hot-plugged disk and reads it end to end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashJob {
    /// The job id.
    pub job: u64,
    /// The device: a path or a device id the agent resolves, as for a backup.
    pub device: String,
}

/// A backup assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupJob {
    /// The job id, repeated in every message about it.
    pub job: u64,
    /// The device: a path (`/dev/xvdb`, a file) or a device id the agent resolves.
    pub device: String,
    /// The disk's name in the store (for logs).
    pub disk: String,
    /// Block size in bytes, within [`super::MIN_BLOCK_SIZE`]..=[`super::MAX_BLOCK_SIZE`].
    pub block_size: u32,
    /// The last committed version of this disk, when the job is incremental.
    pub base: Option<Manifest>,
    /// The CBT bitmap against `base` (decoded: one bit per 64 KiB, MSB first).
    pub cbt: Option<Vec<u8>>,
}

/// A restore assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJob {
    /// The job id.
    pub job: u64,
    /// Where to write: a device path or a file (created if missing).
    pub target: String,
    /// What to write: the version's manifest.
    pub manifest: Manifest,
    /// The version and disk, for error messages.
    pub label: String,
}

/// One disk version: its size and the id of every block, `None` for an all-zero block. The
/// last block may be short; its id is the hash of its actual bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Disk size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Block ids in disk order.
    pub blocks: Vec<Option<WireId>>,
}

impl Manifest {
    /// The number of blocks a disk of `size` bytes has.
    pub fn block_count(size: u64, block_size: u32) -> u64 {
        size.div_ceil(u64::from(block_size))
    }

    /// The byte range of block `index`.
    pub fn block_range(size: u64, block_size: u32, index: u64) -> std::ops::Range<u64> {
        let start = index * u64::from(block_size);
        start..(start + u64::from(block_size)).min(size)
    }

    /// Whether the block list matches the size (a manifest from the wire may lie).
    pub fn is_consistent(&self) -> bool {
        (super::consts::MIN_BLOCK_SIZE..=super::consts::MAX_BLOCK_SIZE).contains(&self.block_size)
            && self.blocks.len() as u64 == Manifest::block_count(self.size, self.block_size)
    }
}

/// Agent → A3, on a data stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataUp {
    /// First message of a data stream: which job it serves. For a restore, the A3 sends
    /// this stream the blocks `i` with `(i / RESTORE_STRIPE) % streams == stream`.
    Open {
        /// The job.
        job: u64,
        /// This stream's number, `0..streams`.
        stream: u32,
        /// How many data streams the agent opens for the job.
        streams: u32,
        /// The disk size in bytes the agent found (backup; the A3 plans with it and checks
        /// every stream agrees); 0 for a restore.
        size: u64,
    },
    /// The ids of a run of blocks the agent has read (backup).
    Hashes(HashBatch),
    /// A needed chunk, in the store's chunk encoding (backup).
    Chunk {
        /// The block id; the A3 re-hashes the decoded bytes and refuses a mismatch.
        id: WireId,
        /// The encoded chunk.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The agent sends nothing more on this stream; the A3 answers [`DataDown::End`] once
    /// everything received on it is stored.
    End,
}

/// A3 → agent, on a data stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataDown {
    /// Which hashed blocks of batch `seq` the store lacks: bit `k` (LSB first in each
    /// byte) set means "send entry `k`'s chunk".
    Need {
        /// The batch answered.
        seq: u64,
        /// One bit per batch entry.
        bits: Vec<u8>,
    },
    /// A chunk to restore at block `index`.
    Chunk {
        /// Block index in the disk.
        index: u64,
        /// The id the manifest says; the agent checks the decoded bytes against it.
        id: WireId,
        /// The encoded chunk.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Everything on this stream is done (stored, for a backup; sent, for a restore).
    End,
    /// The A3 cannot go on with this stream's job (e.g. a corrupt chunk), naming why.
    Error {
        /// What failed, naming version, disk and offset where it applies.
        reason: String,
    },
}

/// The agent's report on a run of consecutive blocks `first..first + entries.len()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashBatch {
    /// Per-stream sequence number, echoed in [`DataDown::Need`].
    pub seq: u64,
    /// Index of the first block.
    pub first: u64,
    /// One entry per block.
    pub entries: Vec<BlockRef>,
}

/// What a block turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockRef {
    /// All zero: never hashed, never sent.
    Zero,
    /// Same id as the base manifest's block at this index: no question to the store.
    Same,
    /// Its id; the A3 says whether it needs the chunk.
    Hash(WireId),
}

/// Restore streams take blocks in stripes of this many, round robin, so that each stream
/// writes runs of neighbouring blocks.
pub const RESTORE_STRIPE: u64 = 8;

/// Whether bit `k` of a [`DataDown::Need`] bitmap is set.
pub fn need_bit(bits: &[u8], k: usize) -> bool {
    bits.get(k / 8).is_some_and(|b| b & (1 << (k % 8)) != 0)
}

/// The stream a restore block belongs to.
pub fn restore_stream_of(index: u64, streams: u32) -> u32 {
    ((index / RESTORE_STRIPE) % u64::from(streams.max(1))) as u32
}
