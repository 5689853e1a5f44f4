//! Magic numbers and format versions of what the A3 writes, in one place (as
//! proxmox-backup's `file_formats.rs`). Bump a version when its format changes; readers
//! refuse versions they don't know.

/// Opens every chunk, on the wire and in the store.
pub const CHUNK_MAGIC: &[u8; 2] = b"A3";
/// The chunk header's layout: magic, version, codec, plaintext length.
pub const CHUNK_FORMAT_VERSION: u8 = 1;
/// Bytes before a chunk's payload.
pub const CHUNK_HEADER_LEN: usize = 8;
/// The largest block a chunk may carry: bounds what a decoder allocates for hostile input.
pub const MAX_BLOCK_SIZE: usize = 16 * 1024 * 1024;

/// Opens every disk manifest in the A3's store (`a3-server` `store::manifest`). Distinct
/// from [`CHUNK_MAGIC`] so a manifest can never be taken for a chunk or the reverse.
pub const MANIFEST_MAGIC: &[u8; 4] = b"A3MF";
/// The manifest layout: header, one entry per block, BLAKE3 of everything before it.
pub const MANIFEST_FORMAT_VERSION: u8 = 1;

/// Opens every version record in the A3's store (`a3-server` `store::records`): the
/// self-description of one committed version, from which the catalog can be rebuilt.
pub const VERSION_RECORD_MAGIC: &[u8; 4] = b"A3VR";
/// The version record layout: header, subject, metadata, disks, BLAKE3 of everything
/// before it (`version_record`).
pub const VERSION_RECORD_FORMAT_VERSION: u8 = 1;
/// The largest version record: bounds what its decoder reads and a commit writes (the
/// metadata is one VM's record, a few KiB).
pub const MAX_VERSION_RECORD_LEN: usize = 16 * 1024 * 1024;
