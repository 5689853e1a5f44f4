//! What the A3 and its peers speak and share, with no network I/O.
//!
//! Who does what:
//! - `xapi_wire`: XAPI's XML-RPC and JSON-RPC encodings, spoken by the A3's XAPI client and
//!   by the pool simulator.
//! - `vhd` and `xva`: the disk and VM formats XAPI imports and exports (the ABD template,
//!   disk exports), with bounded, verifying readers; `ova_fields`: the `ova.xml` fields
//!   xapi's import requires.
//! - `xenstore`: the xenstore wire protocol the ABD speaks over `/dev/xen/xenbus`.
//! - the port-2811 protocol (messages, framing, state machines), block hashing and chunk
//!   encoding, spoken by the A3 and the ABD agent.
//! - `version_record`: the store's record of one committed version (the catalog can be
//!   rebuilt from these), with a bounded, checksummed decoder.
//! - `tls`: the handshake-signature checks of every certificate verifier (ring).
//! - `durable`: the crash-safe private file write both binaries use; the one module here
//!   that touches the file system (its header says why).
//!
//! Everything else here is sans-IO: pure types, codecs and state machines, with time and
//! randomness passed in, so that it is unit-testable and fuzzable without sockets.
#![warn(missing_docs)]
pub mod chunk;
pub mod dhcp;
pub mod durable;
pub mod formats;
pub mod ova_fields;
pub mod portmap;
pub mod proto;
pub mod tls;
pub mod version_record;
pub mod vhd;
pub mod xapi_wire;
pub mod xenstore;
pub mod xva;
