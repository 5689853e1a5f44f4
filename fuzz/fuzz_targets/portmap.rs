//! Feeds arbitrary bytes to the portmapper's call decoder and answers what it accepts, as the
//! A3's port 111 does for any host (or anyone) that reaches it.
#![no_main]

use a3_shared::portmap::{self, MAX_CALL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As a TCP record: the mark first, then the body it announces.
    if let Some((mark, body)) = data.split_first_chunk::<4>()
        && let Ok(len) = portmap::record_len(*mark)
    {
        assert!(len <= MAX_CALL);
        if let Some(call) = body.get(..len).and_then(portmap::decode_call) {
            let answer = portmap::record(&portmap::reply(&call, &portmap::nfs3_mappings(2049)));
            assert!(answer.len() >= 4 + 24);
        }
    }
    // As a UDP datagram.
    if let Some(call) = portmap::decode_call(data) {
        let answer = portmap::reply(&call, &portmap::nfs3_mappings(2049));
        assert_eq!(answer[..4], call.xid.to_be_bytes());
    }
});
