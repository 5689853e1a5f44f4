//! The full-disk sweep (issue 11): the A3's state dir (catalog and store) on a small tmpfs,
//! filled before each backup so that "No space left on device" strikes at a random point of
//! its writes (chunks, manifests, the version record, the catalog, its snapshot). Each run
//! must fail cleanly, naming the full disk; no version may be half-visible; the store must
//! verify; GC must run while the disk is still full; and once space is back, the A3 backs
//! up again and every earlier version restores bit-exact.
//!
//! `A3_ENOSPC_RUNS` sets how many runs (default 6; `cargo xtask faults` runs 200). The test
//! prints an `ENOSPC {json}` line. It mounts a tmpfs, so it runs as root, as the pool
//! tests do (the A3 SR's portmapper binds port 111).

mod datapath_util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use datapath_util::{A3, Rng, assert_same, scratch, start_agent, write_random};

const MIB: u64 = 1 << 20;
/// The tmpfs holding the state dir.
const FS_SIZE: u64 = 256 * MIB;
/// The last writes of a run, where every other run fills the disk.
const LATE: u64 = 192 << 10;
/// What a failed run may keep: catalog rows and the job's log.
const SLACK: u64 = 512 << 10;
/// Each run backs up this much new, incompressible data.
const IMAGE: usize = 4 << 20;

#[test]
fn a_full_disk_fails_the_backup_cleanly_and_loses_nothing() {
    let runs: u64 = std::env::var("A3_ENOSPC_RUNS")
        .map(|v| v.parse().expect("A3_ENOSPC_RUNS is a number"))
        .unwrap_or(6);
    let dir = scratch();
    let state = dir.path().join("a3");
    let _fs = Tmpfs::mount(&state, FS_SIZE);
    let a3 = A3::start(&state, "127.0.1.216:0");
    let cfg = a3.enroll("enospc-1", dir.path());
    let _agent = start_agent(&a3, "enospc-1", &cfg);

    // A version to keep safe through the sweep.
    let first = dir.path().join("first.img");
    let first_img = write_random(&first, 1, IMAGE);
    let before = available(&state);
    let v0 = a3.backup("enospc-1", &first, "kept", None);
    // What one run takes: chunks, manifest, record, catalog rows and its snapshot.
    let need = before - available(&state);

    let mut rng = Rng(0xd15c_f011);
    let (mut failed_cleanly, mut committed) = (0u64, Vec::new());
    let mut failed_writing = std::collections::BTreeMap::<String, u64>::new();
    let (mut verified, mut gc_ran) = (0u64, 0u64);
    let src = dir.path().join("disk.img");
    let filler = state.join("filler");
    for run in 0..runs {
        // New incompressible data each run (odd seeds: `write_random` sets the low bit).
        let img = write_random(&src, 2 * (100 + run) + 1, IMAGE);
        let versions_before = a3.versions("sweep").len();
        let space_before = available(&state);
        // Every other run, leave anywhere from nothing to all but the last byte the run
        // needs; in between, about what it needs, so that the disk also fills at its last
        // writes (the last chunk, the manifest, the version record, the catalog, its
        // snapshot), or just does not.
        let leave = if run % 2 == 0 {
            rng.next() % need
        } else {
            need - LATE + rng.next() % (LATE + LATE / 3)
        };
        fill(&filler, available(&state).saturating_sub(leave));
        let out = a3.cli(&[
            "disk",
            "backup",
            "--abd",
            "enospc-1",
            "--path",
            src.to_str().unwrap(),
            "--disk",
            "sweep",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            // Room enough after all (the data compressed, or the last write fit): the
            // version must be whole.
            committed.push((String::from_utf8_lossy(&out.stdout).trim().to_owned(), img));
        } else {
            assert!(
                err.contains("disk full"),
                "run {run} ({leave} bytes left) failed without naming the full disk: {err}"
            );
            assert_eq!(
                a3.versions("sweep").len(),
                versions_before,
                "run {run}: a failed backup left a version"
            );
            failed_cleanly += 1;
            *failed_writing.entry(what_failed(&err)).or_default() += 1;
        }
        // Still full: verify and GC work.
        let verify = a3.cli(&["store", "verify"]);
        assert!(
            verify.status.success(),
            "run {run}: the store does not verify after ENOSPC: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        verified += 1;
        let gc = a3.cli(&["store", "gc", "--json"]);
        assert!(
            gc.status.success(),
            "run {run}: GC failed on the full disk: {}",
            String::from_utf8_lossy(&gc.stderr)
        );
        gc_ran += 1;
        std::fs::remove_file(&filler).unwrap();
        // GC gave back what the failed run wrote (the catalog grows a little per run).
        if !out.status.success() {
            let now = available(&state);
            assert!(
                now + SLACK >= space_before,
                "run {run}: GC left {} KiB of the failed run behind",
                (space_before - now) >> 10
            );
        }
    }

    // Space is back: a backup commits, and nothing committed before was lost.
    let last = a3.backup("enospc-1", &src, "sweep", None);
    committed.push((last, std::fs::read(&src).unwrap()));
    committed.push((v0, first_img));
    let restored = dir.path().join("restored.img");
    for (v, want) in &committed {
        let _ = std::fs::remove_file(&restored);
        let r = a3.restore("enospc-1", v, &restored);
        assert!(
            r.status.success(),
            "restore {v}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_same(
            &format!("version {v}"),
            &std::fs::read(&restored).unwrap(),
            want,
        );
    }
    let figures = serde_json::json!({
        "runs": runs,
        "failed_cleanly": failed_cleanly,
        "committed_anyway": committed.len() - 2,
        "failed_writing": failed_writing,
        "verified": verified,
        "gc_ran": gc_ran,
        // Every committed version restored bit-exact above.
        "bytes_lost": 0,
    });
    println!("ENOSPC {figures}");
}

/// What the A3 was writing when the disk filled, from its error: "store …: disk full while
/// writing chunk …" (or "the manifest …"), "catalog …: disk full: …".
fn what_failed(err: &str) -> String {
    if let Some((_, rest)) = err.split_once("disk full while writing ") {
        let rest = rest.strip_prefix("the ").unwrap_or(rest);
        return rest.split([' ', ':']).next().unwrap_or(rest).to_owned();
    }
    if err.contains("catalog ") {
        return "catalog".into();
    }
    eprintln!("disk full elsewhere: {err}");
    "other".into()
}

/// Bytes an unprivileged writer may still use on `path`'s file system.
fn available(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `s` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    s.f_bavail as u64 * s.f_frsize as u64
}

/// Writes `len` bytes of data (not a hole: tmpfs would not count it) to `path`.
fn fill(path: &Path, len: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0xA5u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
}

/// A tmpfs mounted for the test, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("tmpfs")
            .arg(at)
            .output()
            .expect("mount (util-linux)");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
