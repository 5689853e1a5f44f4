//! Feeds arbitrary bytes to the portmapper's call decoder and answers what it accepts, as the
//! A3's port 111 does for any host (or anyone) that reaches it, over TCP and over UDP.
#![no_main]

use a3_shared::portmap::{self, MAX_CALL, Registry, Transport};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let registry = Registry::nfs3([127, 0, 1, 5].into(), 2049);
    // As a TCP record: the mark first, then the body it announces.
    if let Some((mark, body)) = data.split_first_chunk::<4>()
        && let Ok(len) = portmap::record_len(*mark)
    {
        assert!(len <= MAX_CALL);
        if let Some(call) = body.get(..len).and_then(portmap::decode_call) {
            let answer = portmap::record(&portmap::reply(&call, &registry, Transport::Tcp));
            assert!(answer.len() >= 4 + 24);
            assert_eq!(answer.len() % 4, 0);
        }
    }
    // As a UDP datagram.
    if let Some(call) = portmap::decode_call(data) {
        let answer = portmap::reply(&call, &registry, Transport::Udp);
        assert_eq!(answer[..4], call.xid.to_be_bytes());
        assert_eq!(answer.len() % 4, 0);
    }
});
