//! Frames on streams (QUIC streams, or TLS/TCP connections of the fallback): the async
//! edge of `a3_shared::proto::frame`.

use a3_shared::proto::frame;
use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::link::{Link, RecvStream, SendStream};

/// Opens data stream `stream` of `streams` for `job`, announcing it with `DataUp::Open`
/// (`size`: the device's, for a backup; 0 for a restore).
pub async fn open_job_stream(
    link: &Link,
    job: u64,
    stream: u32,
    streams: u32,
    size: u64,
) -> anyhow::Result<(SendStream, RecvStream)> {
    let (mut send, recv) = link.open_data().await.context("opening a data stream")?;
    let open = a3_shared::proto::DataUp::Open {
        job,
        stream,
        streams,
        size,
    };
    self::send(&mut send, &open).await?;
    Ok((send, recv))
}

/// Sends one message.
pub async fn send<T: Serialize>(stream: &mut SendStream, msg: &T) -> anyhow::Result<()> {
    stream
        .write_all(&frame::encode(msg))
        .await
        .context("sending to the A3")
}

/// Ends the sending half cleanly (QUIC: FIN; TCP: TLS close_notify and FIN).
pub async fn finish(stream: &mut SendStream) {
    let _ = stream.shutdown().await;
}

/// Receives one message, `None` at a clean end of stream. Frames longer than `max` bytes
/// are refused before any of their payload is buffered.
pub async fn recv<T: DeserializeOwned>(
    stream: &mut RecvStream,
    max: usize,
) -> anyhow::Result<Option<T>> {
    let mut header = [0u8; a3_shared::proto::FRAME_HEADER_LEN];
    // The end of the stream is clean only between frames.
    if stream
        .read(&mut header[..1])
        .await
        .context("receiving from the A3")?
        == 0
    {
        return Ok(None);
    }
    stream
        .read_exact(&mut header[1..])
        .await
        .context("receiving from the A3")?;
    let len = frame::payload_len(header)?;
    anyhow::ensure!(len <= max, "the A3 sent a {len}-byte frame (limit {max})");
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .context("receiving from the A3")?;
    Ok(Some(frame::decode_payload(&payload)?))
}
