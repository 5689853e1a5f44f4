//! Feeds arbitrary bytes to the port-2811 frame and message decoders.
//!
//! Properties: no decoder panics or allocates without bound (the frame limit and postcard's
//! cautious preallocation hold), a message that decodes re-encodes to a frame that decodes
//! to the same message, and the incremental decoder agrees with the one-shot parser
//! whatever the segmentation.
#![no_main]

use a3_shared::proto::frame::{self, FrameDecoder};
use a3_shared::proto::{A3Msg, AgentMsg, DataDown, DataUp};
use libfuzzer_sys::fuzz_target;

/// The checks for one message type (a macro: the fuzz crate depends on `a3-shared` only).
macro_rules! check {
    ($ty:ty, $data:expr) => {{
        let data: &[u8] = $data;
        // One-shot parse of the first frame.
        if let Ok(Some((msg, _))) = frame::parse::<$ty>(data) {
            let again = frame::encode(&msg);
            let (back, used) = frame::parse::<$ty>(&again)
                .expect("re-encoded frame decodes")
                .expect("re-encoded frame is whole");
            assert_eq!(used, again.len());
            assert_eq!(back, msg);
        }
        // Raw payload decode.
        let _ = frame::decode_payload::<$ty>(data);
        // Incremental decode, in pieces whose size the input picks.
        let piece = data.first().map_or(1, |&b| usize::from(b % 17) + 1);
        let mut dec = FrameDecoder::new();
        for part in data.chunks(piece) {
            dec.push(part);
            while let Ok(Some(_)) = dec.next_message::<$ty>() {}
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    check!(AgentMsg, data);
    check!(A3Msg, data);
    check!(DataUp, data);
    check!(DataDown, data);
});
