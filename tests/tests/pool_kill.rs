//! Kill tests of the pool workflow (issue 4): `kill -9` of the A3 in the middle of a backup,
//! then a restart, leaves no snapshot, no VBD on any ABD and no version, and marks the run
//! failed with its reason.

mod pool_support;

use std::time::Duration;

use pool_support::{A3, Sim, alike_sr, assert_nothing_left, objects, user_vms};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_killed_mid_backup_recovers_on_restart() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-kill-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "96MiB");
    let state = scratch.path().join("a3");
    let mut a3 = A3::start(&state, &a3_ip);
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let inv = sim.inventory().await;
    let (_, name) = user_vms(&inv)[0].clone();
    let started: serde_json::Value =
        serde_json::from_str(&a3.ok(&["backup", "run", &name, "--detach"])).unwrap();

    // Mid-job: the snapshot disk is plugged into the ABD.
    let attached = pool_support::wait_until_async(Duration::from_secs(90), || async {
        let inv = sim.inventory().await;
        objects(&inv, "VBD")
            .into_iter()
            .any(|b| b["other_config"]["a3_run"].is_string())
            .then_some(())
    })
    .await;
    assert!(
        attached.is_some(),
        "the backup never attached a disk; see {}",
        a3.log_path().display()
    );
    a3.child.kill();

    let a3 = A3::start(&state, &a3_ip);
    let job = started["job"].to_string();
    let failed = a3_e2e::wait_until(Duration::from_secs(60), || {
        let shown = a3.json(&["job", "show", &job]);
        (shown["run"]["state"] == "failed").then_some(shown)
    })
    .unwrap_or_else(|| {
        panic!(
            "the run was not marked failed; see {}",
            a3.log_path().display()
        )
    });
    let reason = failed["run"]["reason"].as_str().unwrap();
    assert!(reason.contains("interrupted"), "{reason}");
    assert!(a3.versions(&name).is_empty(), "no partial version");
    pool_support::wait_nothing_left(&sim, Duration::from_secs(60)).await;
    let inv = sim.inventory().await;
    let snapshots = objects(&inv, "VM")
        .into_iter()
        .filter(|v| v["is_a_snapshot"] == true)
        .count();
    assert_eq!(snapshots, 0);
}

/// `kill -9` of an ABD's agent mid-job: the job fails clearly, the ABD is recovered or
/// replaced, and the retry succeeds, leaving nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_mid_backup_fails_clearly_and_the_retry_succeeds() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-agent-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "96MiB");
    let a3 = A3::start(&scratch.path().join("a3"), &a3_ip);
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let inv = sim.inventory().await;
    let (_, name) = user_vms(&inv)[0].clone();
    let started: serde_json::Value =
        serde_json::from_str(&a3.ok(&["backup", "run", &name, "--detach"])).unwrap();
    let abd_vm = pool_support::wait_until_async(Duration::from_secs(90), || async {
        let inv = sim.inventory().await;
        let vbd = objects(&inv, "VBD")
            .into_iter()
            .find(|b| b["other_config"]["a3_run"].is_string())?;
        let vm = &inv["objects"]["VM"][vbd["VM"].as_str()?];
        vm["uuid"].as_str().map(str::to_owned)
    })
    .await
    .expect("the backup never attached a disk");
    sim.kill_agent(&abd_vm).await;
    let job = started["job"].to_string();
    let failed = a3_e2e::wait_until(Duration::from_secs(60), || {
        let shown = a3.json(&["job", "show", &job]);
        (shown["run"]["state"] != "running").then_some(shown)
    })
    .expect("the run did not end");
    assert_eq!(failed["run"]["state"], "failed", "{failed}");
    a3.backup(&[&name], 1).expect("the retry succeeds");
    assert_eq!(a3.versions(&name).len(), 1);
    assert_nothing_left(&sim.inventory().await);
}
