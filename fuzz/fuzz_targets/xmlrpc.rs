//! Feeds arbitrary bytes to the XAPI XML-RPC and JSON-RPC decoders.
//!
//! Properties: no decoder panics, and whatever decodes re-encodes to bytes that decode
//! to a stable form (ints become bare strings on the first XML-RPC re-encode, so
//! stability is checked from the second encode on, by comparing encodings).
#![no_main]

use a3_shared::xapi_wire::{
    JsonRpcVersion, JsonValue, decode_call, decode_json_call, decode_json_response,
    decode_response, encode_call, encode_json_response, encode_response,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((method, params)) = decode_call(data) {
        let once = encode_call(&method, &params);
        let (m2, p2) = decode_call(once.as_bytes()).expect("re-encoded call decodes");
        assert_eq!(m2, method.trim());
        let twice = encode_call(&m2, &p2);
        let (m3, p3) = decode_call(twice.as_bytes()).expect("re-encoded call decodes");
        assert_eq!(encode_call(&m3, &p3), twice);
    }
    if let Ok(response) = decode_response(data) {
        let once = encode_response(&response);
        let r2 = decode_response(once.as_bytes()).expect("re-encoded response decodes");
        let twice = encode_response(&r2);
        let r3 = decode_response(twice.as_bytes()).expect("re-encoded response decodes");
        assert_eq!(encode_response(&r3), twice);
    }
    if let Ok(call) = decode_json_call(data) {
        let _ = call.params.len();
    }
    if let Ok(response) = decode_json_response(data) {
        let once = encode_json_response(&response, &JsonValue::Null, JsonRpcVersion::V2);
        let r2 = decode_json_response(once.as_bytes()).expect("re-encoded JSON decodes");
        let twice = encode_json_response(&r2, &JsonValue::Null, JsonRpcVersion::V2);
        assert_eq!(
            encode_json_response(
                &decode_json_response(twice.as_bytes()).expect("re-encoded JSON decodes"),
                &JsonValue::Null,
                JsonRpcVersion::V2
            ),
            twice
        );
    }
});
