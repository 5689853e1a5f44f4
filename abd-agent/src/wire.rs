//! Frames on QUIC streams: the async edge of `a3_shared::proto::frame`.

use a3_shared::proto::frame;
use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Sends one message.
pub async fn send<T: Serialize>(stream: &mut quinn::SendStream, msg: &T) -> anyhow::Result<()> {
    stream
        .write_all(&frame::encode(msg))
        .await
        .context("sending to the A3")
}

/// Receives one message, `None` at a clean end of stream. Frames longer than `max` bytes
/// are refused before any of their payload is buffered.
pub async fn recv<T: DeserializeOwned>(
    stream: &mut quinn::RecvStream,
    max: usize,
) -> anyhow::Result<Option<T>> {
    let mut header = [0u8; a3_shared::proto::FRAME_HEADER_LEN];
    match stream.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e).context("receiving from the A3"),
    }
    let len = frame::payload_len(header)?;
    anyhow::ensure!(len <= max, "the A3 sent a {len}-byte frame (limit {max})");
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .context("receiving from the A3")?;
    Ok(Some(frame::decode_payload(&payload)?))
}
