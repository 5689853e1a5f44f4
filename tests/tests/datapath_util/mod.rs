//! Shared set-up of the data-path end-to-end tests: an A3 on its own loopback address, an
//! enrolled agent, deterministic disk images, and the CLI.

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use a3_e2e::{ChildGuard, bin, wait_until};

/// A fresh scratch dir for one test, removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("a3-datapath-")
        .tempdir()
        .unwrap()
}

/// A running A3.
pub struct A3 {
    /// Its state dir.
    pub state: PathBuf,
    /// Port 2811's listen address as given.
    pub data_listen: String,
    /// The server process.
    pub child: ChildGuard,
}

impl A3 {
    /// Starts `a3-server serve` (no config file) on `data_listen` (e.g. `127.0.1.201:0`)
    /// and waits until its API answers.
    pub fn start(state: &Path, data_listen: &str) -> A3 {
        A3 {
            state: state.to_owned(),
            data_listen: data_listen.to_owned(),
            child: a3_e2e::start_a3(state, data_listen, None),
        }
    }

    /// Runs `a3-server --state-dir S ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        a3_e2e::a3_cli(&self.state, args)
    }

    /// Runs the CLI and returns stdout, panicking with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        a3_e2e::a3_ok(&self.state, args)
    }

    /// Enrolls `id` and returns the agent config path.
    pub fn enroll(&self, id: &str, dir: &Path) -> PathBuf {
        let cfg = dir.join(format!("{id}.toml"));
        self.ok(&["abd", "enroll", "--id", id, "--out", cfg.to_str().unwrap()]);
        cfg
    }

    /// Whether `id` is connected now.
    pub fn connected(&self, id: &str) -> bool {
        let out = self.ok(&["abd", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id && a["connected_from"].is_string())
    }

    /// Backs up `path` as `disk` through `abd`; returns the version id.
    pub fn backup(&self, abd: &str, path: &Path, disk: &str, cbt: Option<&Path>) -> String {
        let mut args = vec![
            "disk",
            "backup",
            "--abd",
            abd,
            "--path",
            path.to_str().unwrap(),
            "--disk",
            disk,
        ];
        if let Some(c) = cbt {
            args.extend(["--cbt", c.to_str().unwrap()]);
        }
        self.ok(&args).trim().to_owned()
    }

    /// Restores `version` to `out` through `abd`.
    pub fn restore(&self, abd: &str, version: &str, out: &Path) -> Output {
        self.cli(&[
            "disk",
            "restore",
            version,
            "--abd",
            abd,
            "--path",
            out.to_str().unwrap(),
        ])
    }

    /// The versions of `disk`.
    pub fn versions(&self, disk: &str) -> Vec<serde_json::Value> {
        let out = self.ok(&["disk", "versions", "--disk", disk, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

/// Starts `abd-agent run` and waits until the A3 lists it as connected.
pub fn start_agent(a3: &A3, id: &str, cfg: &Path) -> ChildGuard {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.with_extension("agent.log"))
        .unwrap();
    let child = ChildGuard::spawn(
        Command::new(bin("abd-agent"))
            .args(["run", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(log),
    );
    wait_until(Duration::from_secs(60), || a3.connected(id).then_some(())).unwrap_or_else(|| {
        panic!(
            "agent {id} did not connect; see {}",
            cfg.with_extension("agent.log").display()
        )
    });
    child
}

/// Runs `abd-agent probe`.
pub fn probe(cfg: &Path) -> Output {
    Command::new(bin("abd-agent"))
        .args(["probe", "--config"])
        .arg(cfg)
        .output()
        .unwrap()
}

/// A deterministic xorshift generator.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A disk image of `size` bytes: runs of zeros, random data, text-like data and copies of
/// earlier regions, in pieces of 4 KiB to 3 MiB that ignore block boundaries.
pub fn image(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut img = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let len = ((rng.next() % (3 << 20)) as usize + 4096).min(size - at);
        match rng.next() % 5 {
            0 => {} // zeros
            1 => rng.fill(&mut img[at..at + len]),
            2 => {
                let words: [&[u8]; 5] = [b"alpha ", b"backup ", b"xen ", b"disk ", b"pool "];
                let mut i = at;
                while i < at + len {
                    let w = words[(rng.next() % 5) as usize];
                    let n = w.len().min(at + len - i);
                    img[i..i + n].copy_from_slice(&w[..n]);
                    i += n;
                }
            }
            _ if at > (1 << 20) => {
                // A copy of an earlier region, aligned to 1 MiB so blocks repeat exactly.
                let src = ((rng.next() as usize % at) >> 20) << 20;
                let dst = (at >> 20) << 20;
                let n = len.min(at - src).min(size - dst);
                img.copy_within(src..src + n, dst);
            }
            _ => rng.fill(&mut img[at..at + len]),
        }
        at += len;
    }
    img
}

/// XAPI's CBT bitmap (base64, one bit per 64 KiB, MSB first) marking `granules`.
pub fn cbt_bitmap(size: u64, granules: &[u64]) -> String {
    let mut bits = vec![0u8; (size.div_ceil(64 << 10)).div_ceil(8) as usize];
    for &g in granules {
        bits[(g / 8) as usize] |= 0x80 >> (g % 8);
    }
    base64(&bits)
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(T[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Asserts two byte strings are equal, naming the first differing offset.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at offset {at}");
    }
}

/// Starts `a3-server disk backup` in the background (its output piped).
pub fn spawn_backup(a3: &A3, abd: &str, path: &Path, disk: &str) -> ChildGuard {
    ChildGuard::spawn(
        Command::new(bin("a3-server"))
            .arg("--state-dir")
            .arg(&a3.state)
            .args(["disk", "backup", "--abd", abd, "--path"])
            .arg(path)
            .args(["--disk", disk])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// Waits until the A3 reports a running job of `disk` with some, but not all, bytes done.
pub fn wait_mid_job(a3: &A3, disk: &str) {
    wait_until(Duration::from_secs(60), || {
        let out = a3.cli(&["disk", "jobs", "--json"]);
        let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let job = jobs.as_array()?.iter().find(|j| j["disk"] == disk)?.clone();
        assert!(
            job["state"] == "running",
            "the job ended before the test could interrupt it: {job}"
        );
        let (done, total) = (job["done"].as_u64()?, job["total"].as_u64()?);
        (done > 0 && done < total).then_some(())
    })
    .expect("the backup never got under way");
}

/// Waits for a background CLI to exit; returns (success, stderr).
pub fn finish(mut child: ChildGuard) -> (bool, String) {
    use std::io::Read;
    let status = wait_until(Duration::from_secs(60), || {
        child.child.try_wait().ok().flatten()
    })
    .expect("the CLI did not exit");
    let mut err = String::new();
    child
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), err)
}

/// Writes a `size`-byte incompressible image (slow to back up, so a test can interrupt it).
pub fn write_random(path: &Path, seed: u64, size: usize) -> Vec<u8> {
    let mut img = vec![0u8; size];
    Rng(seed | 1).fill(&mut img);
    std::fs::write(path, &img).unwrap();
    img
}

/// Opens the store of a stopped A3 in this process and verifies all of it.
pub fn verify_store(state: &Path) -> a3_server::store::VerifyReport {
    let catalog = a3_server::catalog::Catalog::open(&state.join("catalog.sqlite")).unwrap();
    let store = a3_server::store::Store::open(&state.join("store"), catalog).unwrap();
    store
        .verify(a3_server::store::VerifyScope::All, &mut |_| {})
        .unwrap()
}

/// Where the store keeps the chunk of `block`.
pub fn chunk_path(state: &Path, block: &[u8]) -> PathBuf {
    let hex = a3_shared::chunk::BlockId::of(block).to_hex();
    state
        .join("store")
        .join("chunks")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(hex)
}
