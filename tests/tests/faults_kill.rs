//! The kill sweep: the A3 dies (abort, as `kill -9` at that instant) at each durable-write
//! boundary of a VM backup, through the crash points of its `failpoints` build
//! (`a3_server::util::crashpoint`). After each, a restart of the shipped build must find:
//! the store verifies; the version is either wholly there or not at all; a version that is
//! there restores bit-exact; the run is marked failed; and the reconciler leaves nothing
//! in the pool. Then the next backup works.
//!
//! `A3_KILL_POINTS=all` (what `cargo xtask faults` sets) runs every point; by default
//! `cargo xtask test` runs two, one on each side of the catalog commit. The last line
//! printed is `KILLS {json}`.

mod pool_support;

use std::time::Duration;

use pool_support::{A3, Sim, alike_sr, disks_of, objects, user_vms};

/// The crash points of a backup, in the order a backup passes them, and whether the
/// version is committed when the A3 dies there.
const POINTS: &[(&str, bool)] = &[
    ("store-object-renamed", false),
    ("commit-manifests-written", false),
    ("commit-record-pending", false),
    ("commit-catalog-committed", true),
    ("backup-committed", true),
    ("catalog-snapshot-filled", true),
];

/// The points `cargo xtask test` runs.
const SLICE: &[&str] = &["commit-record-pending", "backup-committed"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_a3_killed_at_every_durable_write_boundary_loses_nothing() {
    let all = std::env::var("A3_KILL_POINTS").is_ok_and(|v| v == "all");
    let scratch = tempfile::Builder::new()
        .prefix("a3-faults-kill-")
        .tempdir()
        .unwrap();
    let (base, ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "64MiB");
    let state = scratch.path().join("a3");
    let a3 = A3::start(&state, &ip);
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let inv = sim.inventory().await;
    let (uuid, name) = user_vms(&inv)[0].clone();
    let (_, vdi, _) = disks_of(&inv, &uuid)[0].clone();
    // A first version, so that later runs are incrementals with a base to keep.
    a3.backup(&[&name], 1).expect("the first backup");
    drop(a3);

    let mut survived = 0u64;
    let mut committed = 0u64;
    for &(point, commits) in POINTS {
        if !all && !SLICE.contains(&point) {
            continue;
        }
        // New data, so that the run has chunks to write.
        sim.write_vdi(&vdi, 4 << 20, pool_support::noise(survived + 7, 1 << 20))
            .await;
        let before = sim.vdi_data(&vdi).await;
        let mut crashing = A3::start_crashing(&state, &ip, point);
        let versions = crashing.versions(&name).len();
        let out = crashing.cli(&["backup", "run", &name]);
        assert!(
            !out.status.success(),
            "{point}: the backup succeeded; the crash point was never passed"
        );
        let status = a3_e2e::wait_until(Duration::from_secs(60), || {
            crashing.child.child.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| panic!("{point}: the A3 did not die"));
        assert!(!status.success(), "{point}: the A3 exited cleanly");
        let log = std::fs::read_to_string(crashing.log_path()).unwrap();
        assert!(
            log.contains(&format!("aborting at {point}")),
            "{point}: the A3 died elsewhere; see {}",
            crashing.log_path().display()
        );

        let a3 = A3::start(&state, &ip);
        pool_support::wait_nothing_left(&sim, Duration::from_secs(90)).await;
        let now = a3.versions(&name);
        let expected = versions + usize::from(commits);
        assert_eq!(
            now.len(),
            expected,
            "{point}: {} version(s) after the crash, expected {expected}",
            now.len()
        );
        let verify = a3.cli(&["store", "verify"]);
        assert!(
            verify.status.success(),
            "{point}: the store does not verify: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
        if commits {
            committed += 1;
            restores_bit_exact(&sim, &a3, &name, &before, point).await;
        }
        let jobs = a3.json(&["job", "list"]);
        assert!(
            jobs.as_array()
                .unwrap()
                .iter()
                .all(|j| j["run"]["state"] != "running"),
            "{point}: a run is still marked running: {jobs}"
        );
        // The next backup is an incremental from the last *committed* version, never from
        // the snapshot of the run that died (Xen Orchestra #3065): had it been, the blocks
        // written before that run would be missing from it.
        a3.backup(&[&name], 1)
            .unwrap_or_else(|e| panic!("{point}: the next backup: {e}"));
        restores_bit_exact(&sim, &a3, &name, &before, point).await;
        let inv = sim.inventory().await;
        assert!(
            objects(&inv, "VM")
                .iter()
                .all(|v| v["is_a_snapshot"] != true),
            "{point}: a snapshot is left"
        );
        survived += 1;
    }
    println!(
        "KILLS {}",
        serde_json::json!({
            "kills_survived": survived,
            "committed_at_kill": committed,
            "bytes_lost": 0,
        })
    );
}

/// Restores the VM's latest version as a new VM, checks its disk is `want`, and removes it.
async fn restores_bit_exact(sim: &Sim, a3: &A3, name: &str, want: &[u8], point: &str) {
    let version = a3.versions(name).last().unwrap()["id"].to_string();
    a3.ok(&["restore", &version]);
    let restored = sim.restored_vm(name).await.expect("the restored VM");
    let uuid = restored["uuid"].as_str().unwrap().to_owned();
    let inv = sim.inventory().await;
    let (_, vdi, _) = disks_of(&inv, &uuid)[0].clone();
    assert!(
        sim.vdi_data(&vdi).await == want,
        "{point}: version {version} does not restore bit-exact"
    );
    sim.destroy_vm(&uuid).await;
}
