//! `cargo xtask bench sparse [--size 2T]`: a full backup of a mostly empty disk (issue 11),
//! where reading zeros is the whole cost.
//!
//! The device is a sparse file of `--size` bytes holding 64 MiB of data: 16 MiB at each
//! end (a partition table, a boot area, a file system's backup structures) and 1 MiB every
//! 64 GiB (file-system metadata). The A3 and its agent (release builds, as the bench of
//! `backup`) back it up whole, with no CBT: the agent reads every byte, as it must on a real
//! pool, where the ABD's `/dev/xvd*` is a block device with no holes to seek past.
//!
//! The peer, measured in the same run, is a plain sequential read of the device (4 MiB
//! reads of its first 16 GiB): the most any reader of the device could do. The backup's
//! throughput against it is the ratio printed; the CPU seconds per GiB show what the agent
//! and the A3 spend on each GiB of zeros. On this machine the device is a file in the
//! page cache's holes, so the read is the kernel copying zero pages; on a pool it is
//! blkfront reading tapdisk's unallocated blocks, which return zeros without disk I/O.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::Context;

use crate::bench_backup::{A3, peak_rss_mib, time};
use crate::setup;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Data at each end of the device.
const END_DATA: u64 = 16 * MIB;
/// Metadata every this many bytes.
const META_EVERY: u64 = 64 * GIB;
/// The peer reads this much of the device.
const PEER_READ: u64 = 16 * GIB;

pub fn run(size: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        size >= 2 * END_DATA,
        "--size must be at least {} MiB",
        2 * END_DATA / MIB
    );
    crate::bench_backup::build_release()?;
    let target = setup::target_dir();
    let bins = target.join("release");
    let work = target
        .join("bench-sparse")
        .join(format!("run-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    let result = measure(&bins, &work, size);
    let _ = fs::remove_dir_all(&work);
    result
}

fn measure(bins: &Path, work: &Path, size: u64) -> anyhow::Result<()> {
    let device = work.join("device.raw");
    let data = write_device(&device, size)?;
    eprintln!(
        "bench: a {} GiB device with {} MiB of data",
        size / GIB,
        data / MIB
    );

    let peer_bytes = PEER_READ.min(size);
    let (_, peer) = time(|| read_all(&device, peer_bytes))?;

    let a3 = A3::start(bins, &work.join("a3"), work)?;
    let mut cpu = Vec::new();
    let (version, full) = a3.measured(&mut cpu, "full", || a3.backup(&device, None))?;
    let agent_rss = peak_rss_mib(a3.agent.pid())?;
    let server_rss = peak_rss_mib(a3.server.pid())?;
    let verify = a3.verify()?;
    drop(a3);

    let row = &cpu[0];
    let gib = size as f64 / GIB as f64;
    let backup_mibps = full.mibps(size);
    let peer_mibps = peer.mibps(peer_bytes);
    println!("| step | wall | MiB/s | agent CPU-s/GiB | A3 CPU-s/GiB | other CPU-s |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| full backup of {} GiB ({} MiB data), version {version} | {:.0} s ({:.1} min) | {:.0} | {:.3} | {:.3} | {:.1} |",
        size / GIB,
        data / MIB,
        full.secs,
        full.secs / 60.0,
        backup_mibps,
        row.agent / gib,
        row.server / gib,
        row.others
    );
    println!(
        "| peer: sequential read of {} GiB, 4 MiB reads | {:.1} s | {:.0} | | | |",
        peer_bytes / GIB,
        peer.secs,
        peer_mibps
    );
    println!(
        "\nbackup / plain read: {:.2}x the throughput; agent peak RSS {agent_rss:.1} MiB, A3 \
         peak RSS {server_rss:.1} MiB; verify: {verify}",
        backup_mibps / peer_mibps
    );
    let summary = serde_json::json!({
        "size_bytes": size,
        "data_bytes": data,
        "full_secs": full.secs,
        "full_mibps": backup_mibps,
        "peer_read_mibps": peer_mibps,
        "ratio_to_read": backup_mibps / peer_mibps,
        "agent_cpu_s_per_gib": row.agent / gib,
        "a3_cpu_s_per_gib": row.server / gib,
        "agent_peak_rss_mib": agent_rss,
        "a3_peak_rss_mib": server_rss,
    });
    println!("{summary}");
    Ok(())
}

/// Writes the sparse device; returns how many bytes of data it holds.
fn write_device(path: &Path, size: u64) -> anyhow::Result<u64> {
    let f = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    f.set_len(size)?;
    let mut written = 0;
    let mut put = |at: u64, len: u64| -> anyhow::Result<()> {
        let buf: Vec<u8> = (0..len).map(|i| ((at + i) % 251) as u8 + 1).collect();
        f.write_all_at(&buf, at)?;
        written += len;
        Ok(())
    };
    put(0, END_DATA)?;
    let mut at = META_EVERY;
    while at + MIB < size - END_DATA {
        put(at, MIB)?;
        at += META_EVERY;
    }
    put(size - END_DATA, END_DATA)?;
    Ok(written)
}

/// Reads the first `len` bytes of `path` in 4 MiB reads.
fn read_all(path: &Path, len: u64) -> anyhow::Result<()> {
    let mut f = File::open(path)?.take(len);
    let mut buf = vec![0u8; 4 * MIB as usize];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}
