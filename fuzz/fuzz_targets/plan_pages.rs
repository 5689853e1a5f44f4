//! Feeds arbitrary plan pages to the agent's `PlanReceiver` and arbitrary chunk and
//! zero-run sequences to a restore stream's `Coverage`: the two places where the agent
//! puts together what the A3 sends about a disk in pieces.
//!
//! Properties: nothing panics or allocates beyond the disk's own bitmap; a plan that
//! completes is exactly the disk's length and holds the bits of its pages; a stream that
//! finishes took each of its blocks once, in order.
#![no_main]

use a3_shared::proto::{Coverage, Geometry, PlanReceiver};
use libfuzzer_sys::fuzz_target;

/// Reads `n` bytes from the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = (data.get(..n)?, data.get(n..)?);
    *data = tail;
    Some(head)
}

fn u32_at(data: &mut &[u8]) -> Option<u64> {
    take(data, 4).map(|b| u64::from(u32::from_le_bytes(b.try_into().unwrap())))
}

fn plan_pages(blocks: u64, mut data: &[u8]) {
    let mut r = PlanReceiver::new(blocks);
    let mut next = 0u64;
    let mut sent = Vec::new();
    while let Some(head) = take(&mut data, 3) {
        // Mostly the page that comes next, sometimes any block.
        let first = if head[0] & 1 == 0 {
            next
        } else {
            u32_at(&mut data).unwrap_or(0)
        };
        let last = head[0] & 2 != 0;
        let len = usize::from(u16::from_le_bytes([head[1], head[2]]) % 1024);
        let Some(bits) = take(&mut data, len) else {
            return;
        };
        match r.page(first, bits, last) {
            Ok(None) => {
                sent.push((first, bits.to_vec()));
                next = (first + 8 * bits.len() as u64).min(blocks);
            }
            Ok(Some(plan)) => {
                sent.push((first, bits.to_vec()));
                assert_eq!(plan.len(), blocks);
                for (at, bits) in &sent {
                    for (i, byte) in bits.iter().enumerate() {
                        for bit in 0..8 {
                            let block = at + 8 * i as u64 + bit;
                            if block < blocks {
                                assert_eq!(plan.get(block), byte >> bit & 1 != 0);
                            }
                        }
                    }
                }
                return;
            }
            Err(_) => return,
        }
    }
}

fn coverage(blocks: u64, streams: u32, stream: u32, mut data: &[u8]) {
    let geometry = Geometry {
        size: blocks * 512,
        block_size: 512,
    };
    let mut c = Coverage::new(stream, streams, geometry);
    let mut taken = 0u64;
    while let Some(op) = take(&mut data, 1) {
        let Some(index) = u32_at(&mut data) else {
            break;
        };
        let ok = if op[0] & 1 == 0 {
            c.chunk(index).map(|()| 1)
        } else {
            let count = u32_at(&mut data).unwrap_or(0);
            c.zeros(index, count).map(|ords| ords.end - ords.start)
        };
        match ok {
            Ok(n) => taken += n,
            Err(_) => return,
        }
    }
    if c.finish().is_ok() {
        assert_eq!(taken, c.stripes().count());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    // Up to ~130 K blocks: several pages of bits, no more memory than a test needs.
    let blocks = u64::from(u16::from_le_bytes([head[0], head[1]])) * 2 + u64::from(head[2] % 2);
    if head[3] & 0x80 == 0 {
        plan_pages(blocks, rest);
    } else {
        let streams = u32::from(head[3] % 4) + 1;
        let stream = u32::from(head[3] >> 2 & 0x1f) % streams;
        coverage(blocks, streams, stream, rest);
    }
});
