//! Feeds arbitrary bytes to the version record decoder, as `store rebuild-catalog` and GC
//! read whatever a damaged store holds: it must never panic or allocate unboundedly, and
//! what it accepts must encode back to the same bytes.
#![no_main]

use a3_shared::version_record::VersionRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = VersionRecord::decode(data) {
        assert_eq!(record.encode().as_deref(), Ok(data));
    }
});
