//! Frames on streams (QUIC streams, or TLS/TCP connections of the fallback): the async
//! edge of `a3_shared::proto::frame`.

use a3_shared::proto::frame;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The sending half of a stream, whichever transport carries it.
pub type SendStream = Box<dyn AsyncWrite + Send + Unpin>;
/// The receiving half of a stream, whichever transport carries it.
pub type RecvStream = Box<dyn AsyncRead + Send + Unpin>;

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection or stream broke.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent an invalid frame.
    #[error("protocol: {0}")]
    Frame(#[from] frame::FrameError),
    /// The frame is longer than this stream allows.
    #[error("protocol: {len}-byte frame exceeds this stream's {max}-byte limit")]
    TooLong {
        /// Announced.
        len: usize,
        /// Allowed.
        max: usize,
    },
}

impl WireError {
    /// Says what happened on `abd`'s stream in a user's terms.
    pub fn describe(&self, abd: &str) -> String {
        match self {
            WireError::Io(_) => {
                format!("ABD '{abd}' disconnected during the job ({self})")
            }
            WireError::Frame(_) | WireError::TooLong { .. } => {
                format!("ABD '{abd}' broke the protocol ({self})")
            }
        }
    }
}

/// Sends one message.
pub async fn send<T: Serialize>(stream: &mut SendStream, msg: &T) -> Result<(), WireError> {
    stream.write_all(&frame::encode(msg)).await?;
    Ok(())
}

/// Ends the sending half cleanly (QUIC: FIN; TCP: TLS close_notify and FIN).
pub async fn finish(stream: &mut SendStream) {
    let _ = stream.shutdown().await;
}

/// Reads what the peer still sends, up to its end of stream or 5 s, before the stream is
/// dropped: closing a TCP socket with unread bytes (the fallback's TLS close_notify) sends
/// a reset, and a reset makes the peer's kernel discard data it has not read yet.
pub async fn drain(stream: &mut RecvStream) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Receives one message, `None` at a clean end of stream. Frames longer than `max` are
/// refused from their header, before any payload is buffered.
pub async fn recv<T: DeserializeOwned>(
    stream: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, WireError> {
    let mut header = [0u8; a3_shared::proto::FRAME_HEADER_LEN];
    // The end of the stream is clean only between frames.
    if stream.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut header[1..]).await?;
    let len = frame::payload_len(header)?;
    if len > max {
        return Err(WireError::TooLong { len, max });
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(Some(frame::decode_payload(&payload)?))
}
