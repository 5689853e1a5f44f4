//! Demo disk content: deterministic, realistic-looking data generated on the fly.
//!
//! A demo disk is never written out until something writes to it, so an inventory of
//! thousands of VMs starts instantly. Its layout, in 64 KiB blocks, mixes what a backup
//! product meets on real disks:
//! - blocks 0–15: compressible text unique to the disk (a "boot and log" region);
//! - blocks 16–47: incompressible data identical on every demo disk (a shared OS image,
//!   which deduplicates across VMs);
//! - blocks 48–63: incompressible data unique to the disk;
//! - the last 16 blocks: compressible text unique to the disk;
//! - everything else: zeros.

use serde::{Deserialize, Serialize};

use crate::model::storage::CBT_BLOCK_SIZE;

/// Identifies one demo disk's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoSeed {
    /// The demo VM's index.
    pub vm: u64,
    /// The disk's index within the VM.
    pub disk: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zero,
    Text,
    Shared,
    Random,
}

const TAIL_BLOCKS: u64 = 16;

fn kind(block: u64, blocks: u64) -> Kind {
    match block {
        0..16 => Kind::Text,
        16..48 => Kind::Shared,
        48..64 => Kind::Random,
        b if blocks >= 64 + TAIL_BLOCKS && b >= blocks - TAIL_BLOCKS => Kind::Text,
        _ => Kind::Zero,
    }
}

/// The byte ranges of a disk of `size` bytes that hold non-zero demo data.
pub fn data_extents(size: u64) -> Vec<(u64, u64)> {
    let blocks = size.div_ceil(CBT_BLOCK_SIZE);
    let mut out = vec![(0, (64 * CBT_BLOCK_SIZE).min(size))];
    if blocks >= 64 + TAIL_BLOCKS {
        out.push(((blocks - TAIL_BLOCKS) * CBT_BLOCK_SIZE, size));
    }
    out
}

/// Fills `buf` with the content of the demo disk `seed` of `size` bytes at `offset`.
pub fn fill(seed: DemoSeed, size: u64, offset: u64, buf: &mut [u8]) {
    let blocks = size.div_ceil(CBT_BLOCK_SIZE);
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        let block = pos / CBT_BLOCK_SIZE;
        let in_block = (pos % CBT_BLOCK_SIZE) as usize;
        let n = (CBT_BLOCK_SIZE as usize - in_block).min(buf.len() - done);
        let out = &mut buf[done..done + n];
        match kind(block, blocks) {
            Kind::Zero => out.fill(0),
            Kind::Text => text(seed, block, in_block, out),
            Kind::Shared => random(0x5eed_0f05_1a6e, block, in_block, out),
            Kind::Random => random(mix(seed.vm, u64::from(seed.disk)), block, in_block, out),
        }
        done += n;
    }
}

fn text(seed: DemoSeed, block: u64, in_block: usize, out: &mut [u8]) {
    let line = format!(
        "vm {} disk {} block {block}: Nov 25 06:00:00 demo systemd[1]: Started the quick brown fox service.\n",
        seed.vm, seed.disk
    );
    let line = line.as_bytes();
    for (i, b) in out.iter_mut().enumerate() {
        *b = line[(in_block + i) % line.len()];
    }
}

fn random(salt: u64, block: u64, in_block: usize, out: &mut [u8]) {
    // A counter-mode generator, so that any byte can be produced without its
    // predecessors.
    for (i, b) in out.iter_mut().enumerate() {
        let pos = (in_block + i) as u64;
        let word = mix(mix(salt, block), pos / 8);
        *b = (word >> ((pos % 8) * 8)) as u8;
    }
}

/// SplitMix64 finaliser over two inputs.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn read(seed: DemoSeed, size: u64, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        fill(seed, size, offset, &mut buf);
        buf
    }

    #[test]
    fn random_access_matches_sequential() {
        let seed = DemoSeed { vm: 3, disk: 1 };
        let whole = read(seed, 64 * MIB, 0, 5 * MIB as usize);
        let part = read(seed, 64 * MIB, 3 * MIB + 17, 1000);
        assert_eq!(&whole[3 * MIB as usize + 17..][..1000], &part[..]);
    }

    #[test]
    fn regions_have_their_character() {
        let a = DemoSeed { vm: 1, disk: 0 };
        let b = DemoSeed { vm: 2, disk: 0 };
        let size = 64 * MIB;
        // Shared region identical across VMs, unique regions differ.
        assert_eq!(read(a, size, MIB, 4096), read(b, size, MIB, 4096));
        assert_ne!(read(a, size, 3 * MIB, 4096), read(b, size, 3 * MIB, 4096));
        assert_ne!(read(a, size, 0, 4096), read(b, size, 0, 4096));
        // Zeros in the middle, text at the end.
        assert!(read(a, size, 10 * MIB, 4096).iter().all(|&x| x == 0));
        let tail = read(a, size, size - 4096, 4096);
        assert!(
            tail.iter()
                .all(|c| c.is_ascii_graphic() || *c == b' ' || *c == b'\n')
        );
        assert_eq!(data_extents(size), vec![(0, 4 * MIB), (size - MIB, size)]);
        assert_eq!(data_extents(MIB), vec![(0, MIB)]);
    }
}
