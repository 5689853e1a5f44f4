//! Frames on QUIC streams: the async edge of `a3_shared::proto::frame`.

use a3_shared::proto::frame;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection or stream broke.
    #[error("connection: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// Sending failed.
    #[error("connection: {0}")]
    Write(#[from] quinn::WriteError),
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
            WireError::Read(_) | WireError::Write(_) => {
                format!("ABD '{abd}' disconnected during the job ({self})")
            }
            WireError::Frame(_) | WireError::TooLong { .. } => {
                format!("ABD '{abd}' broke the protocol ({self})")
            }
        }
    }
}

/// Sends one message.
pub async fn send<T: Serialize>(stream: &mut quinn::SendStream, msg: &T) -> Result<(), WireError> {
    stream.write_all(&frame::encode(msg)).await?;
    Ok(())
}

/// Receives one message, `None` at a clean end of stream. Frames longer than `max` are
/// refused from their header, before any payload is buffered.
pub async fn recv<T: DeserializeOwned>(
    stream: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<T>, WireError> {
    let mut header = [0u8; a3_shared::proto::FRAME_HEADER_LEN];
    match stream.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame::payload_len(header)?;
    if len > max {
        return Err(WireError::TooLong { len, max });
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    Ok(Some(frame::decode_payload(&payload)?))
}
