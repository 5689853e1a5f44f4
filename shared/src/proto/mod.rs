//! The port-2811 protocol between the A3 and its ABD agents, sans-IO.
//!
//! Who does what:
//! - [`consts`]: versions, ALPN, limits and magic numbers, each with its origin;
//! - [`frame`]: length-prefixed postcard framing, incremental ("need more bytes" is normal);
//! - [`messages`]: what travels on the control stream and the data streams;
//! - [`plan`]: which blocks a backup reads (CBT bitmap, base geometry), and its pages;
//! - [`bitmap`]: one bit per block, for plans and bookkeeping;
//! - [`assemble`]: the A3's "need" bookkeeping and the block list being built;
//! - [`slots`]: where that block list lives (a temp file on the A3), fixed width;
//! - [`idcache`]: the bounded memory of ids already settled;
//! - [`stripes`]: a restore's blocks per data stream, and the agent's in-order check;
//! - [`transport`]: the QUIC transport settings of each end.
//!
//! The runtimes (the A3's `dataport`, the agent) own the sockets and the clock; everything
//! here is deterministic and tested in memory (see the two-peer harness in `harness`).
pub mod assemble;
pub mod bitmap;
pub mod consts;
pub mod frame;
pub mod idcache;
pub mod messages;
pub mod plan;
pub mod slots;
pub mod stripes;
pub mod transport;

#[cfg(test)]
mod harness;

pub use assemble::{AssembleError, Assembler, Pending};
pub use bitmap::BlockBitmap;
pub use consts::*;
pub use frame::{FrameDecoder, FrameError};
pub use idcache::IdCache;
pub use messages::*;
pub use plan::{CbtBitmap, CbtError, Plan, PlanReceiver, plan};
pub use slots::{SLOT_LEN, Slots};
pub use stripes::{
    CoverError, Coverage, RESTORE_STRIPE, RestoreItem, Stripes, restore_items, restore_stream_of,
};
