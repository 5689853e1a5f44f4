//! Every magic number and format version of the port-2811 protocol, with where it comes from.

/// The protocol version both peers announce in their first message. Bump it on any
/// incompatible change to a message; a peer refuses a version it does not speak.
///
/// 2: no block list travels any more (the plan comes down in pages, restores send chunks
/// and zero runs in order), and `BlockRef::Same` is gone.
pub const PROTOCOL_VERSION: u32 = 2;

/// The ALPN of the QUIC (and TLS/TCP fallback) connection on port 2811 (DESIGN.md §4).
pub const ALPN: &[u8] = b"abd/1";

/// The default port of the data path: UDP for QUIC, TCP for the fallback.
pub const DEFAULT_PORT: u16 = 2811;

/// The TLS/TCP fallback for networks that drop UDP (DESIGN.md §4). TCP has no streams, so
/// each QUIC stream becomes a TLS connection of its own, with the same client certificate;
/// its first byte says which stream it stands for, and the frames that follow are the
/// QUIC stream's, unchanged.
pub mod tcp {
    /// The connection carries the control stream (enrollment, or Hello and the jobs).
    pub const CONTROL: u8 = b'C';
    /// The connection carries one data stream of a job (it opens with `DataUp::Open`).
    pub const DATA: u8 = b'D';
}

/// The largest frame either peer accepts. The biggest legitimate frame is a chunk: at most
/// [`MAX_BLOCK_SIZE`] (a block that does not compress is kept raw) plus its header; no
/// message grows with the disk (plan pages are at most [`PLAN_PAGE_BYTES`]). The decoder
/// checks the length prefix against this before buffering, and never allocates ahead of the
/// bytes actually received, so a hostile prefix costs nothing.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// The most plan bytes one [`super::DataDown::Plan`] page carries: 8 Mi blocks, so a 16 TiB
/// disk at 256 KiB blocks takes 8 pages.
pub const PLAN_PAGE_BYTES: usize = 1 << 20;

/// The frame header: the payload length as a big-endian `u32`.
pub const FRAME_HEADER_LEN: usize = 4;

/// CBT granularity: XAPI's `VDI.list_changed_blocks` sets one bit per 64 KiB, most
/// significant bit first (DESIGN.md §3).
pub const CBT_GRANULE: u64 = 64 << 10;

/// The block size of new backups (DESIGN.md §4: chosen by benchmark). Measured on the
/// bench's 2 GiB mixed image, 2 shared cores, other jobs running (wall seconds):
///
/// | block | full | CBT incremental (1% of granules) | restore | stored |
/// |---|---|---|---|---|
/// | 1 MiB | 4.5 | 0.93 | 5.9 | 901 MB |
/// | 512 KiB | 5.1 | 0.62 | 6.7 | |
/// | 256 KiB | 5.4–6.0 | 0.31–0.41 | 4.1–5.3 | 794 MB |
///
/// Scattered 4 KiB writes into 1% of the 64 KiB granules dirty 15% of 1 MiB blocks but 4%
/// of 256 KiB ones, and smaller blocks dedup better; the full backup pays ~15% more in
/// per-chunk costs (each chunk is fsynced). 256 KiB wins on the incremental, which is what
/// runs every night.
pub const DEFAULT_BLOCK_SIZE: u32 = 256 << 10;

/// The smallest block size a job may use: one sector. Blocks smaller than a CBT granule
/// are read whenever their granule changed; every block costs 33 bytes of manifest, so
/// small blocks serve tests that need millions of blocks from a small disk.
pub const MIN_BLOCK_SIZE: u32 = 512;

/// The largest block size a job may use (bounds chunk frames and agent memory).
pub const MAX_BLOCK_SIZE: u32 = 8 << 20;

/// The largest disk a job may announce: 16 TiB, XCP-ng's largest virtual disk. A peer's
/// announced size is checked against it before anything is planned or allocated.
pub const MAX_DISK_SIZE: u64 = 16 << 40;

/// The most block entries one hash batch may carry (bounds the A3's per-batch work).
pub const MAX_BATCH_ENTRIES: usize = 4096;

/// Length of a block id: BLAKE3-256.
pub const BLOCK_ID_LEN: usize = 32;
