//! The port-2811 protocol between the A3 and its ABD agents, sans-IO.
//!
//! Who does what:
//! - [`consts`]: versions, ALPN, limits and magic numbers, each with its origin;
//! - [`frame`]: length-prefixed postcard framing, incremental ("need more bytes" is normal);
//! - [`messages`]: what travels on the control stream and the data streams;
//! - [`plan`]: which blocks a backup reads (CBT bitmap, base manifest);
//! - [`assemble`]: the A3's "need" bookkeeping and the manifest being built;
//! - [`transport`]: the QUIC transport settings of each end.
//!
//! The runtimes (the A3's `dataport`, the agent) own the sockets and the clock; everything
//! here is deterministic and tested in memory (see the two-peer harness in `harness`).
pub mod assemble;
pub mod consts;
pub mod frame;
pub mod messages;
pub mod plan;
pub mod transport;

#[cfg(test)]
mod harness;

pub use assemble::{AssembleError, Assembler, Pending};
pub use consts::*;
pub use frame::{FrameDecoder, FrameError};
pub use messages::*;
pub use plan::{CbtBitmap, CbtError, Plan, plan};
