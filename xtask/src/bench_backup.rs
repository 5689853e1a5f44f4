//! `cargo xtask bench backup [--size 4G]`: the data path against restic and borg, side by
//! side, on one deterministic image (issue 3, item 6).
//!
//! The image mixes 1 MiB regions: 25% zeros, 25% incompressible, 20% text-like, 20%
//! binary-like (records with counters and small fields) and 10% copies of earlier regions.
//! Regions are 1 MiB-aligned, so the duplicates line up with fixed-size blocks of 1 MiB or
//! less; restic and borg find them with content-defined chunking anyway.
//!
//! On that image, in one run:
//! - A3 (release builds of `a3-server` and `abd-agent`, over QUIC on loopback, driven
//!   through the scriptable CLI): (a) full backup, (b) re-backup of the unchanged image
//!   without CBT, (c) incremental after 4 KiB writes into 1% of the 64 KiB granules, with
//!   the CBT bitmap those writes give (base64, MSB first, one bit per 64 KiB, as XAPI's
//!   `VDI.list_changed_blocks`), (d) restore of (c) to a new file, checked by BLAKE3;
//! - restic and borg at their default settings into local repositories (borg needs an
//!   encryption mode: `repokey`, the one its docs recommend), full, incremental (they
//!   re-read the whole image) and restore, each restore checked by hash;
//! - `cat image > /dev/null`, `b3sum image` and `cp image new-file`: the physical limits; `b3sum` and `zstd -1`
//!   on one core: the CPU price of the agent's hashing and compression.
//!
//! For each A3 step it also prints the CPU seconds the agent, the A3 and every other
//! process used: a step that leaves the 2 cores idle is bound by latency, not CPU, and a
//! concurrent build on the machine shows up as "other processes".
//!
//! The image stays in the page cache (24 GiB of RAM), so every row measures CPU and memory
//! bandwidth, not the virtual disk. Throughput is MiB/s of image size per second of wall
//! time as the user sees it (the CLI command from start to its answer). The last line is
//! one JSON object for scripts.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;

use crate::setup;

const MIB: u64 = 1 << 20;
/// XAPI's CBT granule.
const GRANULE: u64 = 64 << 10;
const ABD_ID: &str = "bench";
const DISK: &str = "bench-disk";
/// The bench A3's own loopback address, so it can run beside tests.
const DATA_LISTEN: &str = "127.0.1.250:0";
const PASSWORD: &str = "bench-password";

/// A child process killed when the bench ends, even on error.
pub(crate) struct Killed {
    child: Child,
}

impl Killed {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the image and the repositories when the bench ends; keeps the logs of a
/// failed run.
struct Cleanup {
    image: PathBuf,
    work: PathBuf,
    ok: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.image);
        if self.ok {
            let _ = fs::remove_dir_all(&self.work);
            return;
        }
        for big in [
            "a3/store",
            "restic-repo",
            "borg-repo",
            "restic-cache",
            "borg-base",
        ] {
            let _ = fs::remove_dir_all(self.work.join(big));
        }
        eprintln!("bench: logs of the failed run in {}", self.work.display());
    }
}

/// Builds the shipped binaries the benches run (release `a3-server` and `abd-agent`).
pub(crate) fn build_release() -> anyhow::Result<()> {
    setup::cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "a3-server",
        "-p",
        "abd-agent",
        "--bins",
    ])
}

/// Parses `4G`, `512M`, `2GiB`, `1048576`.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        Some((i, 'T' | 't')) => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("--size {s:?}: not a size (e.g. 4G, 512M)"))?;
    let size = n * mult;
    if size < 16 * MIB || !size.is_multiple_of(MIB) {
        bail!("--size {s}: use a whole number of MiB, at least 16M");
    }
    Ok(size)
}

/// One measured step.
#[derive(Clone, Copy, Default)]
pub(crate) struct Timed {
    pub(crate) secs: f64,
}

impl Timed {
    pub(crate) fn mibps(&self, bytes: u64) -> f64 {
        bytes as f64 / MIB as f64 / self.secs
    }
}

pub(crate) fn time<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Timed)> {
    let t = Instant::now();
    let v = f()?;
    Ok((
        v,
        Timed {
            secs: t.elapsed().as_secs_f64(),
        },
    ))
}

/// What one tool did.
#[derive(Default)]
struct Peer {
    full: Timed,
    rebackup: Option<Timed>,
    /// A CBT incremental with an empty bitmap.
    floor: Option<Timed>,
    incr: Timed,
    restore: Timed,
    /// None when it could not be measured (the reason is printed).
    stored: Option<u64>,
}

/// Runs the bench and prints the table and the JSON line.
pub fn run(size: u64) -> anyhow::Result<()> {
    setup::ensure_debian_tools(&[
        ("zstd", "zstd"),
        ("restic", "restic"),
        ("borg", "borgbackup"),
        ("b3sum", "b3sum"),
    ])?;
    build_release()?;
    let target = setup::target_dir();
    let bins = target.join("release");
    let root = target.join("bench-backup");
    fs::create_dir_all(&root)?;
    // Per-run names: two benches at once must not share a state dir or an image.
    let run_id = std::process::id();
    let image = root.join(format!("image-{}M-{run_id}.raw", size / MIB));
    let work = root.join(format!("run-{run_id}"));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("{}: cannot clear", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    let mut cleanup = Cleanup {
        image: image.clone(),
        work: work.clone(),
        ok: false,
    };

    // A fresh image each run: the incremental step writes into it.
    eprintln!(
        "bench: generating a {} MiB image at {}",
        size / MIB,
        image.display()
    );
    let (_, gen_time) = time(|| generate(&image, size))?;
    eprintln!("bench: generated in {:.1} s", gen_time.secs);

    let (_, cat) = time(|| {
        run_quiet(
            Command::new("sh")
                .arg("-c")
                .arg(format!("cat '{}' > /dev/null", image.display())),
        )
    })?;
    let (_, b3) = time(|| run_quiet(Command::new("b3sum").arg(&image)))?;
    // Writing a new file of the image's size: what any restore to a new file pays.
    let copy = work.join("copy.raw");
    let (_, cp) = time(|| run_quiet(Command::new("cp").arg(&image).arg(&copy)))?;
    fs::remove_file(&copy)?;
    // One core's worth of the agent's two heavy steps, for the CPU budget of a backup.
    let (_, b3_one) = time(|| {
        run_quiet(
            Command::new("b3sum")
                .args(["--num-threads", "1"])
                .arg(&image),
        )
    })?;
    let (_, zstd_one) = time(|| {
        run_quiet(
            Command::new("sh")
                .arg("-c")
                .arg(format!("zstd -1 -T1 -c '{}' > /dev/null", image.display())),
        )
    })?;

    // --- A3 ---
    let a3_dir = work.join("a3");
    let a3 = A3::start(&bins, &a3_dir, &work)?;
    let mut cpu = Vec::new();
    let (_, a3_full) = a3.measured(&mut cpu, "(a) full", || a3.backup(&image, None))?;
    let (_, a3_rebackup) = a3.measured(&mut cpu, "(b) re-backup", || a3.backup(&image, None))?;
    // A CBT incremental with nothing changed: the fixed price of a job (CLI, API, dispatch,
    // manifest, commit), the floor under (c).
    let empty_cbt = work.join("cbt-empty.b64");
    fs::write(
        &empty_cbt,
        base64::engine::general_purpose::STANDARD.encode(vec![0u8; (size / GRANULE / 8) as usize]),
    )?;
    let (_, a3_floor) = a3.measured(&mut cpu, "CBT, no change", || {
        a3.backup(&image, Some(&empty_cbt))
    })?;

    // --- peers, full ---
    let restic = Restic::new(&work)?;
    let (_, restic_full) = time(|| restic.backup(&image))?;
    let borg = Borg::new(&work)?;
    let (_, borg_full) = time(|| borg.backup(&image, "v1"))?;

    // --- the guest writes 1% of the granules ---
    let bitmap = scatter_writes(&image, size)?;
    let cbt_file = work.join("cbt.b64");
    fs::write(&cbt_file, &bitmap)?;
    let want = blake3_file(&image)?;

    let (_, a3_incr) = a3.measured(&mut cpu, "(c) incremental", || {
        a3.backup(&image, Some(&cbt_file))
    })?;
    let (_, restic_incr) = time(|| restic.backup(&image))?;
    let (_, borg_incr) = time(|| borg.backup(&image, "v2"))?;

    // --- restores of the second version ---
    let a3_out = work.join("a3-restored.raw");
    let version = a3.latest_version()?;
    let (_, a3_restore) = a3.measured(&mut cpu, "(d) restore", || a3.restore(&version, &a3_out))?;
    check_same(&a3_out, &want, "A3")?;
    fs::remove_file(&a3_out)?;
    let restic_out = work.join("restic-restored");
    let (_, restic_restore) = time(|| restic.restore(&restic_out))?;
    check_same(&find_file(&restic_out, &image)?, &want, "restic")?;
    fs::remove_dir_all(&restic_out)?;
    let borg_out = work.join("borg-restored");
    let (_, borg_restore) = time(|| borg.restore(&borg_out, "v2"))?;
    check_same(&find_file(&borg_out, &image)?, &want, "borg")?;
    fs::remove_dir_all(&borg_out)?;

    let (a3_stored, stored_how) = match a3.stored_bytes() {
        Ok((n, how)) => (Some(n), how),
        Err(e) => (None, format!("not measured: {e:#}")),
    };
    let agent_rss = peak_rss_mib(a3.agent.pid())?;
    let server_rss = peak_rss_mib(a3.server.pid())?;
    let a3_verify = a3.verify();
    drop(a3);

    let ours = Peer {
        full: a3_full,
        rebackup: Some(a3_rebackup),
        floor: Some(a3_floor),
        incr: a3_incr,
        restore: a3_restore,
        stored: a3_stored,
    };
    let restic = Peer {
        full: restic_full,
        rebackup: None,
        floor: None,
        incr: restic_incr,
        restore: restic_restore,
        stored: Some(dir_bytes(&restic.repo)?),
    };
    let borg = Peer {
        full: borg_full,
        rebackup: None,
        floor: None,
        incr: borg_incr,
        restore: borg_restore,
        stored: Some(dir_bytes(&borg.repo)?),
    };
    report(
        size,
        &ours,
        &restic,
        &borg,
        cat,
        b3,
        cp,
        [b3_one, zstd_one],
        agent_rss,
        server_rss,
        &stored_how,
        &a3_verify,
        &cpu,
    );
    cleanup.ok = true;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    size: u64,
    a3: &Peer,
    restic: &Peer,
    borg: &Peer,
    cat: Timed,
    b3: Timed,
    cp: Timed,
    [b3_one, zstd_one]: [Timed; 2],
    agent_rss: f64,
    server_rss: f64,
    stored_how: &str,
    verify: &anyhow::Result<String>,
    cpu: &[CpuRow],
) {
    let gib = size as f64 / (1u64 << 30) as f64;
    println!();
    println!(
        "backup bench: {gib:.1} GiB image (25% zeros, 25% incompressible, 40% compressible, 10% duplicates), warm page cache, 2 cores"
    );
    println!("throughput in MiB/s of image size; times are wall clock of the user's command");
    println!();
    let rate = |t: Timed| format!("{:.0} MiB/s ({:.2} s)", t.mibps(size), t.secs);
    let secs = |t: Timed| format!("{:.2} s", t.secs);
    println!(
        "| step | A3 | restic | borg | A3 vs restic | A3 vs borg |\n|---|---|---|---|---|---|"
    );
    println!(
        "| (a) full backup | {} | {} | {} | {:.2}x | {:.2}x |",
        rate(a3.full),
        rate(restic.full),
        rate(borg.full),
        restic.full.secs / a3.full.secs,
        borg.full.secs / a3.full.secs
    );
    if let Some(r) = a3.rebackup {
        println!("| (b) re-backup, unchanged, no CBT | {} | | | | |", rate(r));
    }
    if let Some(f) = a3.floor {
        println!(
            "| CBT incremental with nothing changed (the fixed price of a job) | {} | | | | |",
            secs(f)
        );
    }
    println!(
        "| (c) incremental, 1% of 64 KiB granules written (A3 with CBT; peers re-read all) | {} | {} | {} | {:.1}x | {:.1}x |",
        secs(a3.incr),
        secs(restic.incr),
        secs(borg.incr),
        restic.incr.secs / a3.incr.secs,
        borg.incr.secs / a3.incr.secs
    );
    println!(
        "| (d) restore to a new file (hash checked) | {} | {} | {} | {:.2}x | {:.2}x |",
        rate(a3.restore),
        rate(restic.restore),
        rate(borg.restore),
        restic.restore.secs / a3.restore.secs,
        borg.restore.secs / a3.restore.secs
    );
    let mb = |b: Option<u64>| b.map_or("n/a".into(), |b| format!("{:.0} MB", b as f64 / 1e6));
    let ratio = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", a as f64 / b as f64),
        _ => "n/a".into(),
    };
    println!(
        "| stored bytes after 2 versions | {} | {} | {} | {} | {} |",
        mb(a3.stored),
        mb(restic.stored),
        mb(borg.stored),
        ratio(a3.stored, restic.stored),
        ratio(a3.stored, borg.stored)
    );
    println!("| peak RSS (VmHWM) | agent {agent_rss:.1} MiB, A3 {server_rss:.1} MiB | | | | |");
    println!("| `cat image > /dev/null` | {} | | | | |", rate(cat));
    println!("| `b3sum image` | {} | | | | |", rate(b3));
    println!(
        "| `cp image new-file` (page cache) | {} | | | | |",
        rate(cp)
    );
    println!(
        "| `b3sum --num-threads 1 image` (one core) | {} | | | | |",
        rate(b3_one)
    );
    println!(
        "| `zstd -1 -T1 image` (one core) | {} | | | | |",
        rate(zstd_one)
    );
    println!();
    println!(
        "CPU seconds spent per A3 step (2 cores: at most 2 s of CPU per second of wall time):"
    );
    for row in cpu {
        println!(
            "  {:<16} wall {:.2} s: agent {:.2} s, A3 {:.2} s, both {:.0}% of 2 cores; \
             other processes {:.2} s",
            row.step,
            row.wall,
            row.agent,
            row.server,
            (row.agent + row.server) / (2.0 * row.wall) * 100.0,
            row.others
        );
    }
    println!("A3 stored bytes: {stored_how}");
    match verify {
        Ok(text) => println!("A3 store verify after the run: {text}"),
        Err(e) => println!("A3 store verify after the run FAILED: {e:#}"),
    }
    println!();
    let goal = |ok: bool| if ok { "met" } else { "MISSED" };
    let full_r = restic.full.secs / a3.full.secs;
    let full_b = borg.full.secs / a3.full.secs;
    println!(
        "goal full >= 3x restic and >= 2x borg: {} ({full_r:.2}x, {full_b:.2}x)",
        goal(full_r >= 3.0 && full_b >= 2.0)
    );
    if let Some(r) = a3.rebackup {
        let gbps = size as f64 / r.secs / 1e9;
        println!(
            "goal unchanged re-backup >= 1.5 GB/s: {} ({gbps:.2} GB/s)",
            goal(gbps >= 1.5)
        );
    }
    let incr_r = restic.incr.secs / a3.incr.secs;
    println!(
        "goal CBT incremental >= 30x faster than restic's: {} ({incr_r:.1}x)",
        goal(incr_r >= 30.0)
    );
    let restore_r = restic.restore.secs / a3.restore.secs;
    println!(
        "goal restore >= 2x restic: {} ({restore_r:.2}x)",
        goal(restore_r >= 2.0)
    );
    let stored_goal = match (a3.stored, restic.stored) {
        (Some(a), Some(r)) => goal(a <= r),
        _ => "NOT MEASURED",
    };
    println!(
        "goal stored bytes <= restic's: {stored_goal} ({} vs {})",
        mb(a3.stored),
        mb(restic.stored)
    );
    println!(
        "goal agent peak RSS <= 48 MiB: {} ({agent_rss:.1} MiB)",
        goal(agent_rss <= 48.0)
    );
    let json = serde_json::json!({
        "size_bytes": size,
        "full_mbps": round1(a3.full.mibps(size)),
        "rebackup_mbps": a3.rebackup.map(|r| round1(r.mibps(size))),
        "incr_s": round3(a3.incr.secs),
        "cbt_nochange_s": a3.floor.map(|f| round3(f.secs)),
        "restore_mbps": round1(a3.restore.mibps(size)),
        "restic_full_mbps": round1(restic.full.mibps(size)),
        "restic_incr_s": round3(restic.incr.secs),
        "restic_restore_mbps": round1(restic.restore.mibps(size)),
        "borg_full_mbps": round1(borg.full.mibps(size)),
        "borg_incr_s": round3(borg.incr.secs),
        "borg_restore_mbps": round1(borg.restore.mibps(size)),
        "stored_bytes": a3.stored,
        "restic_stored_bytes": restic.stored,
        "borg_stored_bytes": borg.stored,
        "agent_peak_rss_mib": round1(agent_rss),
        "a3_peak_rss_mib": round1(server_rss),
        "cat_mbps": round1(cat.mibps(size)),
        "cp_mbps": round1(cp.mibps(size)),
        "b3sum_mbps": round1(b3.mibps(size)),
    });
    println!("{json}");
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------
// The image

/// xorshift64*: fast, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next().to_le_bytes());
        }
        let tail = words.into_remainder();
        let last = self.next().to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Region {
    Zero,
    Random,
    Text,
    Binary,
    Duplicate,
}

fn region_kind(rng: &mut Rng) -> Region {
    match rng.below(100) {
        0..25 => Region::Zero,
        25..50 => Region::Random,
        50..70 => Region::Text,
        70..90 => Region::Binary,
        _ => Region::Duplicate,
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "kernel",
    "backup",
    "snapshot",
    "volume",
    "server",
    "network",
    "address",
    "config",
    "service",
    "error",
    "warning",
    "info",
    "debug",
    "request",
    "response",
    "timeout",
    "connection",
    "database",
    "table",
    "index",
    "query",
    "update",
    "insert",
    "delete",
    "select",
    "where",
    "user",
    "password",
    "session",
    "token",
    "cache",
    "memory",
    "process",
    "thread",
    "socket",
    "file",
    "directory",
    "mount",
    "device",
    "block",
    "sector",
    "partition",
    "journal",
    "inode",
    "started",
    "stopped",
    "failed",
    "succeeded",
    "retrying",
    "listening",
    "accepted",
];

/// Log- or prose-like text: words, numbers and line breaks (zstd shrinks it 3-4x).
fn text_region(rng: &mut Rng, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let r = rng.next();
        let piece: &[u8] = if r.is_multiple_of(11) {
            b"\n"
        } else {
            WORDS[(r >> 8) as usize % WORDS.len()].as_bytes()
        };
        let mut num = [0u8; 24];
        let piece = if r.is_multiple_of(7) {
            let n = (r >> 20) % 1_000_000;
            let s = format!("{n} ");
            num[..s.len()].copy_from_slice(s.as_bytes());
            &num[..s.len()]
        } else {
            piece
        };
        for &b in piece.iter().chain(b" ".iter()) {
            if i == buf.len() {
                break;
            }
            buf[i] = b;
            i += 1;
        }
    }
}

/// Database- or executable-like records: a counter, small fields, a few random bytes.
fn binary_region(rng: &mut Rng, base: u64, buf: &mut [u8]) {
    for (k, rec) in buf.chunks_mut(64).enumerate() {
        let mut r = [0u8; 64];
        r[0..8].copy_from_slice(&(base + k as u64).to_le_bytes());
        r[8..12].copy_from_slice(&((rng.below(16)) as u32).to_le_bytes());
        r[16..20].copy_from_slice(&((rng.below(1000)) as u32).to_le_bytes());
        let rand = rng.next().to_le_bytes();
        r[24..30].copy_from_slice(&rand[..6]);
        r[32..48].copy_from_slice(b"record-v2\0\0\0\0\0\0\0");
        rec.copy_from_slice(&r[..rec.len()]);
    }
}

/// Writes the image: deterministic for a given size.
fn generate(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut out = BufWriter::with_capacity(
        4 << 20,
        File::create(path).with_context(|| format!("{}: cannot create", path.display()))?,
    );
    let regions = size / MIB;
    let mut kinds = Rng::new(0xA3);
    let mut written: Vec<u64> = Vec::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut src = File::open(path)?;
    for index in 0..regions {
        let mut rng = Rng::new(index + 1);
        match region_kind(&mut kinds) {
            Region::Zero => buf.fill(0),
            Region::Random => rng.fill(&mut buf),
            Region::Text => text_region(&mut rng, &mut buf),
            Region::Binary => binary_region(&mut rng, index << 16, &mut buf),
            Region::Duplicate if !written.is_empty() => {
                out.flush()?;
                let from = written[kinds.below(written.len() as u64) as usize];
                src.seek(SeekFrom::Start(from * MIB))?;
                src.read_exact(&mut buf)?;
            }
            Region::Duplicate => rng.fill(&mut buf),
        }
        if buf.iter().any(|b| *b != 0) {
            written.push(index);
        }
        out.write_all(&buf)?;
    }
    out.flush()?;
    out.get_ref().sync_all()?;
    Ok(())
}

/// Writes 4 KiB of new data into 1% of the 64 KiB granules, scattered; returns the CBT
/// bitmap of those granules (base64, MSB first, as XAPI gives it).
fn scatter_writes(path: &Path, size: u64) -> anyhow::Result<String> {
    let granules = size / GRANULE;
    let mut bits = vec![0u8; granules.div_ceil(8) as usize];
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    let mut rng = Rng::new(0xC0FFEE);
    let mut chosen = 0;
    let mut page = vec![0u8; 4096];
    while chosen < granules / 100 {
        let g = rng.below(granules);
        if bits[(g / 8) as usize] & (0x80 >> (g % 8)) != 0 {
            continue;
        }
        bits[(g / 8) as usize] |= 0x80 >> (g % 8);
        chosen += 1;
        rng.fill(&mut page);
        let offset = g * GRANULE + rng.below(GRANULE / 4096) * 4096;
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(&page)?;
    }
    f.sync_all()?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bits))
}

fn blake3_file(path: &Path) -> anyhow::Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(path)
        .with_context(|| format!("{}: cannot hash", path.display()))?;
    Ok(h.finalize())
}

fn check_same(restored: &Path, want: &blake3::Hash, who: &str) -> anyhow::Result<()> {
    let got = blake3_file(restored)?;
    if got != *want {
        bail!(
            "{who}: the restored image {} differs from the original (BLAKE3 {got} vs {want})",
            restored.display()
        );
    }
    Ok(())
}

/// The restored copy of `image` somewhere under `dir` (restic and borg recreate the path).
fn find_file(dir: &Path, image: &Path) -> anyhow::Result<PathBuf> {
    let name = image.file_name().context("image name")?;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else if e.file_name() == name {
                return Ok(e.path());
            }
        }
    }
    bail!(
        "no restored {} under {}",
        name.to_string_lossy(),
        dir.display()
    )
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("{}: cannot list", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                total += e.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// Peak resident set (VmHWM) of a live process, in MiB.
pub(crate) fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone: cannot read its peak RSS"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

pub(crate) fn run_quiet(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The product, through its scriptable CLI

/// CPU time the agent and the A3 spent in one step.
pub(crate) struct CpuRow {
    step: &'static str,
    wall: f64,
    pub(crate) agent: f64,
    pub(crate) server: f64,
    /// Every other process on the machine (a concurrent build skews the figures).
    pub(crate) others: f64,
}

/// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
fn machine_busy_secs() -> anyhow::Result<f64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    // cpu user nice system idle iowait irq softirq steal ...: busy = all but idle, iowait.
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| x)
        .sum();
    Ok(busy / 100.0)
}

/// User + system CPU seconds a live process has used.
fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone: cannot read its CPU time"))?;
    // The fields after the command name, which may hold spaces, start after ')'.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("/proc/PID/stat is short")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 of the whole line; clock ticks of 1/100 s
    // (CLK_TCK on Linux).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

pub(crate) struct A3 {
    bins: PathBuf,
    state: PathBuf,
    // Field order: the agent stops before the server.
    pub(crate) agent: Killed,
    pub(crate) server: Killed,
}

impl A3 {
    pub(crate) fn start(bins: &Path, state: &Path, work: &Path) -> anyhow::Result<A3> {
        let log = |name: &str| File::create(work.join(name));
        let server = Killed {
            child: Command::new(bins.join("a3-server"))
                .arg("--state-dir")
                .arg(state)
                .args([
                    "serve",
                    "--http-listen",
                    "127.0.0.1:0",
                    "--data-listen",
                    DATA_LISTEN,
                ])
                .env("RUST_LOG", "warn")
                .env_remove("A3_CONFIG")
                .env_remove("A3_API")
                .stdout(Stdio::null())
                .stderr(log("a3.log")?)
                .spawn()
                .context("cannot start a3-server")?,
        };
        wait_for(
            "a3-server's api.url and data.addr",
            Duration::from_secs(30),
            || state.join("api.url").exists() && state.join("data.addr").exists(),
        )?;
        let cfg = work.join("agent.toml");
        a3_cli(
            bins,
            state,
            &["abd", "enroll", "--id", ABD_ID, "--out", path_str(&cfg)?],
        )?;
        let agent = Killed {
            child: Command::new(bins.join("abd-agent"))
                .args(["run", "--config"])
                .arg(&cfg)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log("agent.log")?)
                .spawn()
                .context("cannot start abd-agent")?,
        };
        let a3 = A3 {
            bins: bins.to_owned(),
            state: state.to_owned(),
            agent,
            server,
        };
        wait_for("the agent to connect", Duration::from_secs(30), || {
            a3.cli(&["abd", "list", "--json"])
                .ok()
                .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
                .and_then(|v| {
                    v.as_array()?
                        .iter()
                        .find(|a| a["id"] == ABD_ID)
                        .map(|a| a["connected"] == true)
                })
                .unwrap_or(false)
        })?;
        Ok(a3)
    }

    /// Times `f` and records the CPU both processes spent in it.
    pub(crate) fn measured<T>(
        &self,
        rows: &mut Vec<CpuRow>,
        step: &'static str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Timed)> {
        let (agent, server) = (cpu_secs(self.agent.pid())?, cpu_secs(self.server.pid())?);
        let busy = machine_busy_secs()?;
        let (v, t) = time(f)?;
        let agent = cpu_secs(self.agent.pid())? - agent;
        let server = cpu_secs(self.server.pid())? - server;
        rows.push(CpuRow {
            step,
            wall: t.secs,
            agent,
            server,
            others: (machine_busy_secs()? - busy - agent - server).max(0.0),
        });
        Ok((v, t))
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        a3_cli(&self.bins, &self.state, args)
    }

    pub(crate) fn backup(&self, image: &Path, cbt: Option<&Path>) -> anyhow::Result<String> {
        let mut args = vec![
            "disk",
            "backup",
            "--abd",
            ABD_ID,
            "--path",
            path_str(image)?,
        ];
        args.extend(["--disk", DISK]);
        if let Some(c) = cbt {
            args.extend(["--cbt", path_str(c)?]);
        }
        Ok(self.cli(&args)?.trim().to_owned())
    }

    fn latest_version(&self) -> anyhow::Result<String> {
        let out = self.cli(&["disk", "versions", "--disk", DISK, "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("disk versions --json")?;
        let last = v
            .as_array()
            .and_then(|a| a.last())
            .context("disk versions: no version")?;
        let id = last
            .get("version")
            .or_else(|| last.get("id"))
            .context("version id")?;
        Ok(match id {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    fn restore(&self, version: &str, out: &Path) -> anyhow::Result<()> {
        self.cli(&[
            "disk",
            "restore",
            version,
            "--abd",
            ABD_ID,
            "--path",
            path_str(out)?,
        ])?;
        Ok(())
    }

    /// The store's own figure when `store stats --json` gives one, else the bytes under
    /// the state dir's `store/`.
    fn stored_bytes(&self) -> anyhow::Result<(u64, String)> {
        let stats = self
            .cli(&["store", "stats", "--json"])
            .ok()
            .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok());
        if let Some(chunks) = stats.as_ref().and_then(|v| v["stored_bytes"].as_u64()) {
            let manifests = stats
                .as_ref()
                .and_then(|v| v["manifest_bytes"].as_u64())
                .unwrap_or(0);
            return Ok((
                chunks + manifests,
                format!(
                    "`a3-server store stats --json`: chunks {chunks} B + manifests {manifests} B \
                     (restic and borg: every file of the repository)"
                ),
            ));
        }
        let dir = self.state.join("store");
        Ok((
            dir_bytes(&dir)?,
            format!("bytes of the files under {}", dir.display()),
        ))
    }

    /// `store verify` of the whole store: a one-line summary.
    pub(crate) fn verify(&self) -> anyhow::Result<String> {
        let out = self.cli(&["store", "verify", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("store verify --json")?;
        let count = |k: &str| v[k].as_array().map_or(0, Vec::len);
        Ok(format!(
            "{} versions, {} chunks, {} MB read; bad blocks {}, bad manifests {}, bad records {}, bad unreferenced chunks {}",
            v["versions"],
            v["chunks"],
            v["bytes"].as_u64().unwrap_or(0) / 1_000_000,
            count("bad_blocks"),
            count("bad_manifests"),
            count("bad_records"),
            count("bad_unreferenced")
        ))
    }
}

fn a3_cli(bins: &Path, state: &Path, args: &[&str]) -> anyhow::Result<String> {
    run_quiet(
        Command::new(bins.join("a3-server"))
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .env_remove("A3_CONFIG")
            .env_remove("A3_API"),
    )
    .with_context(|| format!("a3-server {}", args.join(" ")))
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

// ---------------------------------------------------------------------------------------
// The peers

struct Restic {
    repo: PathBuf,
    cache: PathBuf,
}

impl Restic {
    fn new(work: &Path) -> anyhow::Result<Restic> {
        let r = Restic {
            repo: work.join("restic-repo"),
            cache: work.join("restic-cache"),
        };
        run_quiet(r.cmd().arg("init"))?;
        Ok(r)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("restic");
        c.arg("--repo")
            .arg(&self.repo)
            .arg("--cache-dir")
            .arg(&self.cache)
            .env("RESTIC_PASSWORD", PASSWORD);
        c
    }

    fn backup(&self, image: &Path) -> anyhow::Result<()> {
        run_quiet(self.cmd().args(["backup", "--quiet"]).arg(image))?;
        Ok(())
    }

    fn restore(&self, out: &Path) -> anyhow::Result<()> {
        run_quiet(self.cmd().args(["restore", "latest", "--target"]).arg(out))?;
        Ok(())
    }
}

struct Borg {
    repo: PathBuf,
    base: PathBuf,
}

impl Borg {
    fn new(work: &Path) -> anyhow::Result<Borg> {
        let b = Borg {
            repo: work.join("borg-repo"),
            base: work.join("borg-base"),
        };
        run_quiet(b.cmd().args(["init", "--encryption=repokey"]).arg(&b.repo))?;
        Ok(b)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("borg");
        c.env("BORG_PASSPHRASE", PASSWORD)
            .env("BORG_BASE_DIR", &self.base)
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
        c
    }

    fn backup(&self, image: &Path, name: &str) -> anyhow::Result<()> {
        let archive = format!("{}::{name}", self.repo.display());
        run_quiet(self.cmd().arg("create").arg(archive).arg(image))?;
        Ok(())
    }

    fn restore(&self, out: &Path, name: &str) -> anyhow::Result<()> {
        fs::create_dir_all(out)?;
        let archive = format!("{}::{name}", self.repo.display());
        run_quiet(self.cmd().arg("extract").arg(archive).current_dir(out))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert!(parse_size("1K").is_err());
        assert!(parse_size("abc").is_err());
    }

    #[test]
    fn cbt_bitmap_marks_one_percent_msb_first() {
        let dir = std::env::temp_dir().join(format!("a3-bench-cbt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let img = dir.join("img");
        let size = 64 * MIB;
        File::create(&img).unwrap().set_len(size).unwrap();
        let b64 = scatter_writes(&img, size).unwrap();
        let bits = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let set: u32 = bits.iter().map(|b| b.count_ones()).sum();
        assert_eq!(set as u64, size / GRANULE / 100);
        // Every marked granule holds the written page; every other one is still zero.
        let data = fs::read(&img).unwrap();
        for g in 0..size / GRANULE {
            let marked = bits[(g / 8) as usize] & (0x80 >> (g % 8)) != 0;
            let range = (g * GRANULE) as usize..((g + 1) * GRANULE) as usize;
            assert_eq!(marked, data[range].iter().any(|b| *b != 0), "granule {g}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
