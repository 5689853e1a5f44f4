//! The catalog is lost (issue 11): after a full and an incremental backup of a VM, the
//! A3 stops and its catalog file is deleted. The A3 refuses to start, naming the count of
//! versions and the command; `store rebuild-catalog` puts every version back under its
//! id, with the job history from the store's catalog snapshot; the A3 starts, lists both
//! versions, restores each bit-exact, and nothing in the store was deleted meanwhile.

mod pool_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use a3_e2e::{ChildGuard, a3_cli, a3_ok, bin, chunk_files, wait_until};
use pool_support::{A3, Sim, alike_sr, assert_nothing_left, disks_of, noise, user_vms};

/// `a3-server serve` on `state`, which must exit by itself (a refusal); its output.
fn serve_refused(state: &Path, ip: &str) -> Output {
    let mut child = ChildGuard::spawn(
        Command::new(bin("a3-server"))
            .args(["serve", "--state-dir"])
            .arg(state)
            .args(["--http-listen", "127.0.0.1:0", "--data-listen"])
            .arg(format!("{ip}:0"))
            .env_remove("A3_CONFIG")
            .env_remove("A3_API")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let status = wait_until(Duration::from_secs(30), || {
        child.child.try_wait().ok().flatten()
    })
    .expect("`a3-server serve` on a lost catalog kept running: it must refuse to start");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_catalog_is_rebuilt_from_the_store_and_nothing_is_lost() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-rebuild-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "4MiB");
    let state = scratch.path().join("a3");
    let mut a3 = A3::start(&state, &a3_ip);
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let inv = sim.inventory().await;
    let (uuid, name) = user_vms(&inv)[0].clone();
    let (_, vdi, _) = disks_of(&inv, &uuid)[0].clone();

    // A full backup, then an incremental one.
    sim.write_vdi(&vdi, 0, noise(41, 3 << 20)).await;
    let full = sim.vdi_data(&vdi).await;
    a3.backup(&[&name], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    sim.write_vdi(&vdi, 1 << 20, noise(42, 100_000)).await;
    let incremental = sim.vdi_data(&vdi).await;
    a3.backup(&[&name], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    let last_job = a3.json(&["job", "list"])[0]["job"]["id"].to_string();
    let log = a3.ok(&["job", "log", &last_job]);
    assert!(log.contains("incremental against version"), "{log}");
    let ids: Vec<String> = a3
        .versions(&name)
        .iter()
        .map(|v| v["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let stats = a3.json(&["store", "stats"]);
    let chunks = chunk_files(&state).len();
    assert_eq!(stats["chunks"], chunks as u64);

    // Not beside a running A3: it holds the store's lock.
    let out = a3.cli(&["store", "rebuild-catalog"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rebuild-catalog ran beside the A3");
    assert!(err.contains("in use by another process"), "{err}");

    // The A3 stops, and its catalog is lost. Each run's end left a snapshot in the store.
    assert!(
        a3.child.terminate(Duration::from_secs(60)).is_some(),
        "the A3 did not stop on SIGTERM"
    );
    for file in ["catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"] {
        let _ = std::fs::remove_file(state.join(file));
    }
    assert!(state.join("store/catalog.sqlite").is_file());

    // It refuses to start, and says what to run.
    let out = serve_refused(&state, &a3_ip);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the A3 started on a lost catalog");
    assert!(err.contains("2 committed version(s)"), "{err}");
    let command = format!(
        "a3-server store rebuild-catalog --state-dir {}",
        state.display()
    );
    assert!(err.contains(&command), "{err}");

    // The rebuild names every version it puts back; a second one changes nothing.
    let rebuilt = a3_ok(&state, &["store", "rebuild-catalog"]);
    for id in &ids {
        assert!(
            rebuilt.contains(&format!("rebuilt version {id} of '{uuid}'")),
            "{rebuilt}"
        );
    }
    assert!(rebuilt.contains("job history from"), "{rebuilt}");
    let again: serde_json::Value =
        serde_json::from_str(&a3_ok(&state, &["store", "rebuild-catalog", "--json"])).unwrap();
    assert_eq!(again["added"], serde_json::json!([]), "{again}");
    assert_eq!(again["present"], 2, "{again}");
    assert!(
        a3_cli(&state, &["store", "rebuild-catalog"])
            .status
            .success()
    );

    // The A3 starts. The pool is added again (the catalog snapshot gives back job history,
    // not the inventory); every version is listed under its id, and the jobs are there.
    let a3 = A3::start(&state, &a3_ip);
    a3.add_pool(&sim);
    let listed: Vec<String> = a3
        .versions(&name)
        .iter()
        .map(|v| v["id"].to_string())
        .collect();
    assert_eq!(listed, ids);
    let jobs = a3.json(&["job", "list"]);
    assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");
    assert!(
        a3.ok(&["job", "log", &last_job])
            .contains("incremental against version")
    );

    // Each version restores bit-exact.
    for (id, want) in ids.iter().zip([&full, &incremental]) {
        a3.ok(&["restore", id]);
        let restored = sim
            .restored_vm(&name)
            .await
            .unwrap_or_else(|| panic!("version {id}: no restored VM"));
        let restored_uuid = restored["uuid"].as_str().unwrap();
        let (_, restored_vdi, _) = disks_of(&sim.inventory().await, restored_uuid)[0].clone();
        assert!(
            sim.vdi_data(&restored_vdi).await == *want,
            "version {id} restores bit-exact"
        );
        sim.destroy_vm(restored_uuid).await;
    }
    assert_nothing_left(&sim.inventory().await);

    // Nothing was deleted meanwhile, and GC still deletes nothing: every chunk is used.
    assert_eq!(chunk_files(&state).len(), chunks);
    let gc = a3.json(&["store", "gc"]);
    assert_eq!(gc["chunks_removed"], 0, "{gc}");
    assert_eq!(gc["versions"], 2, "{gc}");
    assert_eq!(a3.json(&["store", "stats"])["chunks"], stats["chunks"]);
}
