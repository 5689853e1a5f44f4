//! `a3-server store verify|gc|stats` against a running server whose store holds a version,
//! a chunk of an aborted backup, and then a corrupted chunk.

use std::path::Path;
use std::process::Output;

use a3_server::config::Config;
use a3_server::store::{BackupSession, DiskManifest, Store};
use a3_shared::chunk::{BlockId, ChunkEncoder};
use serde_json::{Value, json};

const BS: usize = 64 << 10;

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Uploads `data` as disk `name` (no zero blocks in these images).
fn upload(s: &BackupSession, name: &str, data: &[u8]) {
    let mut enc = ChunkEncoder::new(1).unwrap();
    let blocks: Vec<Option<BlockId>> = data.chunks(BS).map(|b| Some(BlockId::of(b))).collect();
    for b in data.chunks(BS) {
        s.insert_chunk(&BlockId::of(b), &enc.encode(b).unwrap())
            .unwrap();
    }
    s.add_disk(
        name,
        DiskManifest {
            size: data.len() as u64,
            block_size: BS as u32,
            blocks,
        },
    )
    .unwrap();
}

async fn cli(state: &Path, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_a3-server"));
    cmd.arg("--state-dir").arg(state).args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn json_ok(state: &Path, args: &[&str]) -> Value {
    let out = cli(state, args).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_cli_verify_gc_stats() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("a3");
    let config = Config {
        state_dir: state.clone(),
        http_listen: "127.0.5.1:0".parse().unwrap(),
        data_listen: "127.0.5.1:0".parse().unwrap(),
        log_json: false,
        ..Config::default()
    };
    let running = a3_server::server::start(config).await.unwrap();
    let store: Store = running.state.store.clone();
    let (a, b) = (noise(1, 3 * BS), noise(2, 2 * BS));
    let (v, bad) = {
        let store = store.clone();
        let (a, b) = (a.clone(), b.clone());
        tokio::task::spawn_blocking(move || {
            let s = store.begin_backup("web").unwrap();
            upload(&s, "xvda", &a);
            upload(&s, "xvdb", &b);
            let v = s.commit(json!({"vm": "web"})).unwrap();
            // An aborted backup leaves one unused chunk.
            let s = store.begin_backup("web").unwrap();
            upload(&s, "xvda", &noise(3, BS));
            drop(s);
            (v, BlockId::of(&b[BS..]))
        })
        .await
        .unwrap()
    };

    let stats = json_ok(&state, &["store", "stats", "--json"]).await;
    assert_eq!(stats["versions"], 1);
    assert_eq!(stats["chunks"], 6);
    assert_eq!(stats["logical_bytes"], 5 * BS as u64);

    let report = json_ok(&state, &["store", "verify", "--json"]).await;
    assert_eq!(report["chunks"], 6);
    assert_eq!(report["unreferenced"], 1);

    // No backup runs: the aborted one's chunk is garbage at once (a full disk needs its
    // room back now, not minutes later).
    let gc = json_ok(&state, &["store", "gc", "--json"]).await;
    assert_eq!(
        (
            gc["chunks_removed"].as_u64(),
            gc["chunks_kept_recent"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(report["bad_blocks"], json!([]));

    // Damage the second block of xvdb.
    let hex = bad.to_hex();
    let path = state
        .join("store/chunks")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[50] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let version = v.to_string();
    let out = cli(
        &state,
        &["store", "verify", "--version", &version, "--json"],
    )
    .await;
    assert!(!out.status.success(), "verify passed a corrupt chunk");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let named = &report["bad_blocks"][0];
    assert_eq!(
        (
            named["version"].as_i64(),
            named["disk"].as_str(),
            named["offset"].as_u64()
        ),
        (Some(v.0), Some("xvdb"), Some(BS as u64))
    );
    assert_eq!(report["quarantined"].as_array().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 bad block"));

    // Human output names it too (now missing: it was quarantined).
    let out = cli(&state, &["store", "verify", "--version", &version]).await;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "BAD  version {v} (web) disk 'xvdb' block at offset {BS}"
        )),
        "{text}"
    );
    let stats = json_ok(&state, &["store", "stats", "--json"]).await;
    assert_eq!(stats["quarantined_chunks"], 1);

    let out = cli(&state, &["store", "verify", "--version", "999"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("version 999 does not exist"), "{err}");

    running.shutdown().await.unwrap();
}
