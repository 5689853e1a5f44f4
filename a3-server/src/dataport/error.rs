//! The data port's errors, one per kind of failure:
//! - [`DispatchError`]: a job that cannot start, or that its agent failed (the jobs see it);
//! - [`StreamError`]: a job's data stream or commit that failed; its text is what the ABD
//!   and the job's status are told;
//! - [`ConnError`]: why a connection ended (logged only: one connection's end harms no other);
//! - [`StartError`]: port 2811 could not open (the A3 does not start).

use std::net::SocketAddr;

use a3_shared::proto::assemble::AssembleError;

use super::storage::StorageError;
use super::wire::WireError;

/// Why a job cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// No agent of that id is connected.
    #[error(
        "ABD '{0}' is not connected to this A3; start `abd-agent run --config FILE` (its config comes from `a3-server abd enroll --id {0}`) and check `a3-server abd list`"
    )]
    NotConnected(String),
    /// The request is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StorageError),
    /// The agent ran the job and it failed.
    #[error("{0}")]
    Failed(String),
}

/// Why a job's data stream or its commit failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The ABD broke the job's rules (a chunk not asked for, a second Open, …).
    #[error("{0}")]
    Protocol(String),
    /// The agent's device is not the size of the disk it was to read.
    #[error(
        "disk {disk}: the ABD found {found} bytes on its device, but the disk has {want}: it \
         opened another device, so nothing of it is stored; run the backup again"
    )]
    WrongDevice {
        /// The disk.
        disk: String,
        /// The device's size.
        found: u64,
        /// The disk's `virtual_size`.
        want: u64,
    },
    /// The stream broke; the text says how, for this ABD.
    #[error("{0}")]
    Link(String),
    /// The store.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The agent's blocks do not add up to the disk.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    /// A chunk insert task panicked or was cancelled.
    #[error("chunk insert task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// What failed, then why.
    #[error("{what}: {source}")]
    Step {
        /// What the stream was doing.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<StreamError>,
    },
}

impl StreamError {
    /// This error, as part of `what`.
    pub fn during(self, what: impl Into<String>) -> StreamError {
        StreamError::Step {
            what: what.into(),
            source: Box::new(self),
        }
    }
}

/// Why a connection to port 2811 ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The QUIC handshake or a stream of the connection failed.
    #[error("{remote}: {what}: {source}")]
    Quic {
        /// The peer.
        remote: SocketAddr,
        /// What the port was waiting for.
        what: &'static str,
        /// Why it failed.
        source: quinn::ConnectionError,
    },
    /// The TLS/TCP fallback's opening (handshake, stream kind) failed.
    #[error("{remote}: {what}: {source}")]
    Opening {
        /// The peer.
        remote: SocketAddr,
        /// What the port was waiting for.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The peer was refused, was silent too long, or its session ended; the text says
    /// which.
    #[error("{0}")]
    Ended(String),
    /// A frame could not be sent or read.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A job's data stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Why port 2811 could not open.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error("port 2811: cannot listen on {what}: {source}")]
    Bind {
        /// The socket and its address.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server certificate.
    #[error("port 2811: {0}")]
    Pki(#[from] crate::pki::PkiError),
    /// QUIC refused the TLS configuration.
    #[error("port 2811: the TLS configuration does not suit QUIC: {0}")]
    Tls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The bound address could not be recorded.
    #[error("port 2811: {0}")]
    Write(#[from] a3_shared::durable::WriteError),
}

impl StartError {
    /// A bind failure of `what`.
    pub fn bind(what: impl Into<String>, source: std::io::Error) -> StartError {
        StartError::Bind {
            what: what.into(),
            source,
        }
    }
}
