//! A disk with more block entries than one control frame could ever carry (issue 11): with
//! `A3_BIG_DISK=full` (`cargo xtask faults`), 2.3 M non-zero blocks of 512 bytes
//! (`backup_block_size = 512`), so that its manifest (33 bytes a block, 86 MB) is far past
//! the 64 MiB frame that used to carry the base list and the restore list whole; without
//! it (`cargo xtask test`), an eighth of that, still many plan pages. Its full backup, CBT
//! incremental and restore through an agent are bit-exact, the agent's peak memory stays
//! under 48 MiB, and the A3's is printed on a `BIGDISK {json}` line.

mod datapath_util;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use datapath_util::{A3, Rng, cbt_bitmap, scratch, start_agent};

const BLOCK: u64 = 512;
const GRANULE: u64 = 64 << 10;
/// The full size, 1.25 GiB: 2.6 M blocks.
const FULL_SIZE: u64 = 1280 << 20;
/// Every eighth 64 KiB granule stays a hole: 2,293,760 non-zero blocks.
const HOLE_EVERY: u64 = 8;
/// The agent's memory budget in a 128 MB ABD (DESIGN.md §5).
const AGENT_HWM_LIMIT: u64 = 48 << 20;
/// The A3 must not hold a whole list: its peak stays under the 64 MiB one frame used to
/// carry (the full run's manifest is 86 MB).
const A3_HWM_LIMIT: u64 = 64 << 20;

#[test]
fn millions_of_blocks_back_up_incrementally_and_restore_bit_exact() {
    let size = match std::env::var("A3_BIG_DISK").as_deref() {
        Ok("full") => FULL_SIZE,
        Ok(other) => panic!("A3_BIG_DISK={other}: only \"full\" is known"),
        Err(_) => FULL_SIZE / 8,
    };
    let dir = scratch();
    let state = dir.path().join("a3");
    std::fs::create_dir_all(&state).unwrap();
    let config = dir.path().join("a3.toml");
    std::fs::write(&config, "backup_block_size = 512\n").unwrap();
    let a3 = A3 {
        state: state.clone(),
        data_listen: "127.0.1.215:0".into(),
        child: a3_e2e::start_a3(&state, "127.0.1.215:0", Some(&config)),
    };
    let cfg = a3.enroll("big-1", dir.path());
    let agent = start_agent(&a3, "big-1", &cfg);

    let src = dir.path().join("disk.img");
    let nonzero = write_pattern(&src, size);
    if size == FULL_SIZE {
        assert!(nonzero > 2_100_000, "{nonzero} non-zero blocks");
    }
    let v1 = a3.backup("big-1", &src, "big", None);

    // Scattered guest writes into 300 granules (some of them holes until now), each marked.
    let mut rng = Rng(0xb16_d15c);
    let granules: Vec<u64> = (0..300).map(|_| rng.next() % (size / GRANULE)).collect();
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    for &g in &granules {
        let mut w = vec![0u8; 3000];
        rng.fill(&mut w);
        f.write_all_at(&w, g * GRANULE + rng.next() % (GRANULE - 3000))
            .unwrap();
    }
    drop(f);
    let bitmap = dir.path().join("cbt.b64");
    std::fs::write(&bitmap, cbt_bitmap(size, &granules)).unwrap();
    let v2 = a3.backup("big-1", &src, "big", Some(&bitmap));
    let log = a3.ok(&["disk", "jobs"]);
    assert_eq!(a3.versions("big").len(), 2, "{log}");

    let out = dir.path().join("restored.img");
    for (v, check) in [(&v2, Want::File(&src)), (&v1, Want::Pattern(size))] {
        let _ = std::fs::remove_file(&out);
        let r = a3.restore("big-1", v, &out);
        assert!(
            r.status.success(),
            "restore {v}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        compare(&out, check, &format!("version {v}"));
    }

    let agent_hwm = peak_rss(agent.id());
    let a3_hwm = peak_rss(a3.child.id());
    let figures = serde_json::json!({
        "blocks": size / BLOCK,
        "nonzero_blocks": nonzero,
        "block_size": BLOCK,
        "agent_hwm_kib": agent_hwm >> 10,
        "a3_hwm_kib": a3_hwm >> 10,
    });
    println!("BIGDISK {figures}");
    assert!(
        agent_hwm <= AGENT_HWM_LIMIT,
        "the agent peaked at {} KiB, over its 48 MiB budget",
        agent_hwm >> 10
    );
    assert!(
        a3_hwm <= A3_HWM_LIMIT,
        "the A3 peaked at {} KiB: does it hold a whole manifest?",
        a3_hwm >> 10
    );
}

/// Block `b`'s content: one of 251 byte values, so that the store keeps few chunks while
/// every block is listed.
fn pattern_byte(b: u64) -> u8 {
    (b % 251) as u8 + 1
}

fn in_hole(offset: u64) -> bool {
    (offset / GRANULE) % HOLE_EVERY == HOLE_EVERY - 1
}

/// Writes the sparse image of `size` bytes; returns how many blocks are non-zero.
fn write_pattern(path: &Path, size: u64) -> u64 {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut buf = vec![0u8; GRANULE as usize];
    let mut nonzero = 0;
    for g in 0..size / GRANULE {
        if in_hole(g * GRANULE) {
            continue;
        }
        fill_pattern(g * GRANULE, &mut buf);
        f.write_all_at(&buf, g * GRANULE).unwrap();
        nonzero += GRANULE / BLOCK;
    }
    nonzero
}

fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let at = offset + i as u64;
        *b = if in_hole(at) {
            0
        } else {
            pattern_byte(at / BLOCK)
        };
    }
}

enum Want<'a> {
    File(&'a Path),
    /// The pattern image of this size.
    Pattern(u64),
}

/// Compares `got` with what it should hold, 8 MiB at a time, naming the first difference.
fn compare(got: &Path, want: Want, what: &str) {
    let (mut w, size) = match want {
        Want::File(p) => (
            Some(File::open(p).unwrap()),
            std::fs::metadata(p).unwrap().len(),
        ),
        Want::Pattern(size) => (None, size),
    };
    let len = std::fs::metadata(got).unwrap().len();
    assert_eq!(len, size, "{what}: restored size");
    let mut g = File::open(got).unwrap();
    let (mut a, mut b) = (vec![0u8; 8 << 20], vec![0u8; 8 << 20]);
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(a.len());
        g.read_exact(&mut a[..n]).unwrap();
        match &mut w {
            Some(f) => f.read_exact(&mut b[..n]).unwrap(),
            None => fill_pattern(at, &mut b[..n]),
        }
        if let Some(i) = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y) {
            panic!("{what}: first difference at offset {}", at + i as u64);
        }
        at += n as u64;
    }
}

/// A process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"));
    kib << 10
}
