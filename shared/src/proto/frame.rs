//! Length-prefixed framing of postcard messages.
//!
//! A frame is a big-endian `u32` payload length ([`FRAME_HEADER_LEN`] bytes) followed by the
//! postcard encoding of one message. Decoding is incremental, in the style of mini-redis's
//! `frame.rs`: "need more bytes" is `Ok(None)`, a normal result, never an error. Lengths are
//! checked against [`MAX_FRAME_LEN`] before any byte of the payload is buffered.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::consts::{FRAME_HEADER_LEN, MAX_FRAME_LEN};

/// Why bytes are not a valid frame. Any of these ends the stream: framing cannot resync.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLong {
        /// The announced length.
        len: usize,
    },
    /// The payload is not a valid encoding of the expected message.
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes `msg` as one frame.
///
/// # Panics
/// When the encoding exceeds [`MAX_FRAME_LEN`]: senders build messages within the limits of
/// [`super::consts`], so this is a bug in the caller.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Sized exactly up front: a chunk frame is a megabyte, and doubling growth would
    // briefly hold twice that (the agent counts its megabytes).
    let len = postcard::experimental::serialized_size(msg).expect("serialisable message");
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    let mut out = postcard::to_extend(msg, out).expect("Vec grows");
    let len = out.len() - FRAME_HEADER_LEN;
    assert!(
        len <= MAX_FRAME_LEN,
        "frame of {len} bytes exceeds the limit"
    );
    out[..FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    out
}

/// Reads a frame header: the payload length, checked against the limit.
pub fn payload_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong { len });
    }
    Ok(len)
}

/// Decodes one payload (the bytes after the header). Trailing bytes are an error: a frame
/// holds exactly one message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        ));
    }
    Ok(msg)
}

/// Parses the first frame of `buf`: `Ok(Some((msg, consumed)))`, or `Ok(None)` when `buf`
/// does not hold a whole frame yet.
pub fn parse<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let len = payload_len(*header)?;
    let end = FRAME_HEADER_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((decode_payload(&buf[FRAME_HEADER_LEN..end])?, end)))
}

/// A connection's receive buffer: push bytes as they arrive, pop whole messages.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` when more bytes are needed. A header announcing
    /// too long a frame is reported as soon as its four bytes are in.
    #[must_use = "a decoded message must be handled"]
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some((msg, used)) = parse(&self.buf[self.start..])? else {
            return Ok(None);
        };
        self.start += used;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(msg))
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::messages::{BlockRef, DataUp, HashBatch};

    fn sample() -> Vec<DataUp> {
        vec![
            DataUp::Open {
                job: 7,
                stream: 1,
                streams: 4,
                size: 1 << 40,
            },
            DataUp::Hashes(HashBatch {
                seq: 3,
                first: 10,
                entries: vec![BlockRef::Zero, BlockRef::Hash([9; 32])],
            }),
            DataUp::Chunk {
                id: [1; 32],
                data: vec![5; 3000],
            },
            DataUp::End,
        ]
    }

    #[test]
    fn round_trips_with_every_split() {
        let msgs = sample();
        let wire: Vec<u8> = msgs.iter().flat_map(encode).collect();
        // Feed the stream in pieces of every size from 1 byte: the decoder must yield the
        // same messages whatever the segmentation.
        for piece in [1, 2, 3, 5, 7, 64, 1000, wire.len()] {
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for part in wire.chunks(piece) {
                dec.push(part);
                while let Some(m) = dec.next_message::<DataUp>().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs, "piece size {piece}");
            assert_eq!(dec.buffered(), 0);
        }
    }

    #[test]
    fn wire_bytes_are_pinned() {
        // A change here is a protocol change: bump PROTOCOL_VERSION.
        assert_eq!(encode(&DataUp::End), [0, 0, 0, 1, 3]);
        let hello = crate::proto::AgentMsg::Hello {
            version: 1,
            abd_id: "a".into(),
            agent: "b".into(),
        };
        assert_eq!(encode(&hello), [0, 0, 0, 6, 0, 1, 1, b'a', 1, b'b']);
        let need = crate::proto::DataDown::Need {
            seq: 300,
            bits: vec![5],
        };
        assert_eq!(encode(&need), [0, 0, 0, 5, 0, 0xac, 0x02, 1, 5]);
    }

    #[test]
    fn partial_frame_is_need_more_not_error() {
        let wire = encode(&DataUp::End);
        for cut in 0..wire.len() {
            assert!(
                parse::<DataUp>(&wire[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn oversized_header_is_refused_before_buffering() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            dec.next_message::<DataUp>(),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed() {
        let frame = [0, 0, 0, 2, 0xff, 0xff];
        assert!(matches!(
            parse::<DataUp>(&frame),
            Err(FrameError::Malformed(_))
        ));
        // A valid message followed by a stray byte inside the same frame.
        let mut ok = encode(&DataUp::End);
        ok.push(0);
        ok[3] += 1;
        assert!(matches!(
            parse::<DataUp>(&ok),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn hostile_vec_length_does_not_allocate() {
        // A Chunk claiming a 2^60-byte payload inside a tiny frame: must fail, not abort.
        let mut payload = vec![2u8]; // variant Chunk
        payload.extend_from_slice(&[0u8; 32]);
        payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        assert!(parse::<DataUp>(&frame).is_err());
    }
}
