//! The messages of port 2811, encoded with postcard inside [`super::frame`]s.
//!
//! A connection carries:
//! - **the control stream**, the first bidirectional stream the agent opens: it sends
//!   [`AgentMsg::Hello`] (or [`AgentMsg::Enroll`] on a connection without a client
//!   certificate), the A3 answers [`A3Msg::Welcome`] (or [`A3Msg::Enrolled`] /
//!   [`A3Msg::Refused`]), then the A3 assigns jobs and the agent reports progress and results;
//! - **data streams**, further bidirectional streams the agent opens per job, each starting
//!   with [`DataUp::Open`]. For a backup, the A3 sends the plan down stream 0
//!   ([`DataDown::Plan`] pages), [`HashBatch`]es go up, [`DataDown::Need`] answers come
//!   down, and the needed chunks go up. For a restore, the A3 sends each stream its share
//!   of the blocks down, in order: chunks and runs of zero blocks.
//!
//! No message carries a disk's block list or a per-block table of the disk: every frame
//! stays within a few MiB whatever the disk's size (the largest are chunks and plan pages).
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
    /// A renewed client certificate (DER) for the agent's key, issued before the current
    /// one expires: the agent keeps it and presents it from its next connection on.
    Renewed {
        /// The certificate.
        cert_der: Vec<u8>,
    },
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
}

/// A restore assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreJob {
    /// The job id.
    pub job: u64,
    /// Where to write: a device path or a file (created if missing).
    pub target: String,
    /// The disk's shape; its blocks come down the data streams.
    pub geometry: Geometry,
    /// The version and disk, for error messages.
    pub label: String,
}

/// A disk's shape: its size and its block size. The last block may be short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    /// Disk size in bytes.
    pub size: u64,
    /// Block size in bytes.
    pub block_size: u32,
}

impl Geometry {
    /// The number of blocks.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.block_size.max(1)))
    }

    /// The byte range of block `index`.
    pub fn block_range(&self, index: u64) -> std::ops::Range<u64> {
        let start = index * u64::from(self.block_size);
        start..(start + u64::from(self.block_size)).min(self.size)
    }

    /// Bytes in blocks `first..end` (the last block may be short).
    pub fn bytes_of(&self, blocks: std::ops::Range<u64>) -> u64 {
        if blocks.is_empty() {
            return 0;
        }
        let start = blocks.start * u64::from(self.block_size);
        (blocks.end * u64::from(self.block_size)).min(self.size) - start.min(self.size)
    }

    /// Whether a peer's geometry is usable: a block size within the limits (a multiple of
    /// a sector) and a size no larger than [`super::MAX_DISK_SIZE`].
    pub fn is_valid(&self) -> bool {
        (super::consts::MIN_BLOCK_SIZE..=super::consts::MAX_BLOCK_SIZE).contains(&self.block_size)
            && self
                .block_size
                .is_multiple_of(super::consts::MIN_BLOCK_SIZE)
            && self.size <= super::consts::MAX_DISK_SIZE
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
    /// A chunk to restore at block `index`, the stream's next block.
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
    /// A page of a backup's plan, on stream 0 before anything else: bit `k` (LSB first in
    /// each byte) of `bits` set means "read and report block `first + k`". Pages come in
    /// order, at most [`super::PLAN_PAGE_BYTES`] each, the last with `last` set.
    Plan {
        /// The first block the page covers, a multiple of 8.
        first: u64,
        /// One bit per block.
        #[serde(with = "serde_bytes")]
        bits: Vec<u8>,
        /// Whether the plan is complete with this page.
        last: bool,
    },
    /// A run of `count` of this restore stream's blocks, all zeros, from block `first`
    /// (its blocks in stream order: a run may cross into the stream's next stripe).
    Zeros {
        /// The first block of the run.
        first: u64,
        /// How many of the stream's blocks.
        count: u64,
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
    /// Its id; the A3 says whether it needs the chunk (it asks the store nothing when the
    /// id is the base's at this index).
    Hash(WireId),
}

/// Whether bit `k` of a [`DataDown::Need`] bitmap is set.
pub fn need_bit(bits: &[u8], k: usize) -> bool {
    bits.get(k / 8).is_some_and(|b| b & (1 << (k % 8)) != 0)
}
