//! Feeds arbitrary bytes to the VHD reader and reads the whole disk it describes.
#![no_main]

use std::io::Cursor;

use a3_shared::vhd::VhdReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = VhdReader::open(Cursor::new(data)) else {
        return;
    };
    // Read at most 64 MiB of the virtual disk, in odd-sized pieces.
    let size = reader.size().min(64 << 20);
    let mut buf = vec![0u8; 100_003];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        if reader.read_at(off, &mut buf[..n]).is_err() {
            return;
        }
        off += n as u64;
    }
});
