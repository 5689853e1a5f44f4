//! Feeds arbitrary bytes to both xenstore decoders (the agent's reply decoder and the
//! simulator's request decoder).
//!
//! Properties: neither panics nor buffers past one message; a request that decodes
//! re-encodes to bytes that decode to the same request; segmentation does not matter.
#![no_main]

use a3_shared::xenstore::{Decoder, Incoming, MsgType, RequestDecoder, encode_request};
use libfuzzer_sys::fuzz_target;

fn requests(data: &[u8], piece: usize) -> Vec<Incoming> {
    let mut dec = RequestDecoder::default();
    let mut out = Vec::new();
    'feed: for part in data.chunks(piece) {
        dec.feed(part);
        loop {
            match dec.next_request() {
                Ok(Some(r)) => out.push(r),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let piece = data.first().map_or(1, |&b| usize::from(b % 17) + 1);
    let whole = requests(data, data.len().max(1));
    assert_eq!(whole, requests(data, piece));
    for r in whole {
        if let Incoming::Request(r) = r {
            if r.tx_id != 0 {
                continue; // the client never opens transactions
            }
            let value = (r.kind == MsgType::Write).then(|| r.value.clone().unwrap_or_default());
            if let Ok(bytes) = encode_request(r.kind, r.req_id, &r.path, value.as_deref()) {
                let again = requests(&bytes, bytes.len());
                assert_eq!(again, vec![Incoming::Request(r)]);
            }
        }
    }
    let mut dec = Decoder::default();
    for part in data.chunks(piece) {
        dec.feed(part);
        while let Ok(Some(reply)) = dec.next_reply() {
            let _ = reply.clone().into_children();
            let _ = reply.into_value(MsgType::Read);
        }
    }
});
