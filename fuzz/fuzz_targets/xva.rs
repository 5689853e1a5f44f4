//! Feeds arbitrary bytes to the XVA reader: it must never panic or allocate unboundedly.
#![no_main]

use a3_shared::xapi_wire::Value;
use a3_shared::xva::{XvaSink, read_xva};
use libfuzzer_sys::fuzz_target;

struct Discard;

impl XvaSink for Discard {
    fn metadata(&mut self, _: &Value) -> Result<(), String> {
        Ok(())
    }
    fn chunk(&mut self, _: &str, _: u64, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = read_xva(data, &mut Discard);
});
