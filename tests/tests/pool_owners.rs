//! Recovery and the reconciler touch only their own objects (issue 11). Two A3s manage one
//! pool; the second has a fresh state dir, so its run numbers start again at 1, as a
//! rebuilt A3's would. Each is killed mid-backup in its run 3 and restarted: each removes
//! exactly what its own run left, never the other's leftovers, ABDs or template, nor a VM
//! restored earlier (whose tags went when its restore finished).

mod pool_support;

use std::time::Duration;

use pool_support::{A3, Sim, leftovers, objects, user_vms};
use serde_json::Value as Json;

/// The `a3_run` tags on the pool's VBDs.
fn vbd_tags(inv: &Json) -> Vec<String> {
    objects(inv, "VBD")
        .iter()
        .filter_map(|b| b["other_config"]["a3_run"].as_str().map(str::to_owned))
        .collect()
}

/// Starts a detached backup of `vm` and kills the A3 once the run's disk is plugged into
/// its ABD (a VBD tag that is not in `other_tags`); the run's tag.
async fn kill_mid_backup(a3: &mut A3, sim: &Sim, vm: &str, other_tags: &[String]) -> String {
    a3.ok(&["backup", "run", vm, "--detach"]);
    let tag = pool_support::wait_until_async(Duration::from_secs(90), || async {
        let inv = sim.inventory().await;
        vbd_tags(&inv).into_iter().find(|t| !other_tags.contains(t))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the backup never attached a disk; see {}",
            a3.log_path().display()
        )
    });
    a3.child.kill();
    tag
}

/// Waits until the A3's `run` is marked failed by recovery.
fn wait_failed(a3: &A3, run: i64) {
    let shown = a3_e2e::wait_until(Duration::from_secs(60), || {
        let runs = a3.json(&["job", "list"]);
        runs.as_array()?
            .iter()
            .find(|j| j["run"]["id"] == run)
            .filter(|j| j["run"]["state"] == "failed")
            .cloned()
    });
    assert!(
        shown.is_some(),
        "run {run} was not marked failed; see {}",
        a3.log_path().display()
    );
}

/// The uuids of the pool's VMs and VDIs.
fn uuids(inv: &Json, class: &str) -> Vec<String> {
    objects(inv, class)
        .iter()
        .filter_map(|o| o["uuid"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_a3s_on_one_pool_each_clean_only_their_own_leftovers() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-owners-")
        .tempdir()
        .unwrap();
    let (base, one_ip) = pool_support::addresses();
    let (_, two_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 2, "96MiB");
    let one_state = scratch.path().join("one");
    let mut one = A3::start(&one_state, &one_ip);
    one.add_pool(&sim);
    let vms = user_vms(&sim.inventory().await);
    let (name_a, name_b) = (vms[0].1.clone(), vms[1].1.clone());

    // Runs 1 and 2 of A3 one: a backup, and its restore as a new VM.
    one.backup(&[&name_a], 1).expect("the first backup");
    let version = one.versions(&name_a)[0]["id"].to_string();
    one.ok(&["restore", &version]);
    let restored: Vec<Json> = objects(&sim.inventory().await, "VM")
        .into_iter()
        .filter(|v| {
            v["name_label"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{name_a} (restored ")))
        })
        .collect();
    assert_eq!(restored.len(), 1, "one restored VM");
    assert!(
        restored[0]["other_config"]["a3_run"].is_null(),
        "a finished restore leaves no owner tag on its VM: {}",
        restored[0]["other_config"]
    );
    // Run 3 of A3 one, killed mid-backup.
    let one_tag = kill_mid_backup(&mut one, &sim, &name_a, &[]).await;
    assert!(
        one_tag.ends_with("/3"),
        "A3 one's run 3 is tagged {one_tag}"
    );
    let one_left = leftovers(&sim.inventory().await);
    assert!(
        !one_left.is_empty(),
        "A3 one's killed run left nothing to clean"
    );

    // A3 two, fresh: runs 1 and 2 back up the other VM, run 3 is killed mid-backup.
    let two_state = scratch.path().join("two");
    let mut two = A3::start(&two_state, &two_ip);
    two.add_pool(&sim);
    two.backup(&[&name_b], 1).expect("A3 two's first backup");
    two.backup(&[&name_b], 1).expect("A3 two's second backup");
    let two_tag = kill_mid_backup(&mut two, &sim, &name_b, std::slice::from_ref(&one_tag)).await;
    assert!(
        two_tag.ends_with("/3"),
        "A3 two's run 3 is tagged {two_tag}"
    );
    assert_ne!(one_tag, two_tag, "each A3 tags with its own instance id");
    let before = sim.inventory().await;

    // A3 two restarts: its own leftovers go; A3 one's stay, and so does everything else.
    let two = A3::start(&two_state, &two_ip);
    wait_failed(&two, 3);
    let cleaned = pool_support::wait_until_async(Duration::from_secs(60), || async {
        let inv = sim.inventory().await;
        (!vbd_tags(&inv).contains(&two_tag)).then_some(inv)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "A3 two did not clean its run 3; see {}",
            two.log_path().display()
        )
    });
    assert_eq!(
        vbd_tags(&cleaned),
        vec![one_tag.clone()],
        "A3 two touched A3 one's VBD"
    );
    let snapshots: Vec<String> = objects(&cleaned, "VM")
        .iter()
        .filter(|v| v["is_a_snapshot"] == true)
        .map(|v| v["name_label"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        snapshots.len(),
        1,
        "only A3 one's snapshot stays: {snapshots:?}"
    );
    assert!(snapshots[0].starts_with(&name_a), "{snapshots:?}");
    let gone_vms: Vec<String> = uuids(&before, "VM")
        .into_iter()
        .filter(|u| !uuids(&cleaned, "VM").contains(u))
        .collect();
    assert_eq!(
        gone_vms.len(),
        1,
        "A3 two removed its snapshot only: {gone_vms:?}"
    );

    // A3 one restarts: its own leftovers go; A3 two's ABD and the restored VM stay.
    let one = A3::start(&one_state, &one_ip);
    wait_failed(&one, 3);
    pool_support::wait_nothing_left(&sim, Duration::from_secs(60)).await;
    let after = sim.inventory().await;
    for vm in uuids(&cleaned, "VM") {
        let snapshot = objects(&cleaned, "VM")
            .iter()
            .any(|v| v["uuid"] == vm.as_str() && v["is_a_snapshot"] == true);
        assert!(
            snapshot || uuids(&after, "VM").contains(&vm),
            "A3 one removed VM {vm}, which was not its leftover"
        );
    }
    let restored_uuid = restored[0]["uuid"].as_str().unwrap();
    assert!(uuids(&after, "VM").contains(&restored_uuid.to_owned()));
    assert_eq!(two.abd_vms().len(), 1, "A3 two's ABD is still listed");
    assert_eq!(one.abd_vms().len(), 1, "A3 one's ABD is still listed");
    // Both work on.
    one.backup(&[&name_a], 1).expect("A3 one backs up again");
    two.backup(&[&name_b], 1).expect("A3 two backs up again");
    pool_support::assert_nothing_left(&sim.inventory().await);
}

/// A pool unreachable when the A3 restarts after a crash keeps the interrupted run's
/// leftovers until it is back; then the reconciler removes them as soon as the pool's
/// connection is back (not at its periodic pass, an hour away here) and says so in the
/// run's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_unreachable_at_start_is_cleaned_once_it_is_back() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-reconcile-")
        .tempdir()
        .unwrap();
    let (base, ip) = pool_support::addresses();
    let mut sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "96MiB");
    let state = scratch.path().join("a3");
    let config = "reconcile_interval_secs = 3600\n";
    let mut a3 = A3::start_configured(&state, &ip, config);
    a3.add_pool(&sim);
    let name = user_vms(&sim.inventory().await)[0].1.clone();
    kill_mid_backup(&mut a3, &sim, &name, &[]).await;
    assert!(
        !leftovers(&sim.inventory().await).is_empty(),
        "the killed run left nothing to clean"
    );
    sim.stop();

    let a3 = A3::start_configured(&state, &ip, config);
    wait_failed(&a3, 1);
    let log = a3.ok(&["job", "log", "1"]);
    assert!(
        !log.contains("reconciler: removed"),
        "the pool is down:\n{log}"
    );
    sim.restart(&base, 1, 1, "96MiB");
    pool_support::wait_nothing_left(&sim, Duration::from_secs(60)).await;
    let log = a3.ok(&["job", "log", "1"]);
    assert!(
        log.contains("reconciler: removed its snapshot"),
        "the run's log names what the reconciler removed:\n{log}"
    );
    a3.backup(&[&name], 1).expect("the next backup");
}

/// An ABD's VM destroyed without its disk (an administrator's "delete VM, keep disks", or
/// a destroy cut short): the disk on Alike_SR is no VM's any more, and the reconciler
/// removes it, naming it in the log of the run that provisioned the ABD. The next backup
/// provisions a new ABD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abd_disk_left_without_its_vm_is_removed() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-abd-disk-")
        .tempdir()
        .unwrap();
    let (base, ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "8MiB");
    let a3 = A3::start_configured(
        &scratch.path().join("a3"),
        &ip,
        "reconcile_interval_secs = 1\n",
    );
    a3.add_pool(&sim);
    let name = user_vms(&sim.inventory().await)[0].1.clone();
    a3.backup(&[&name], 1).expect("the first backup");
    let abds = a3.abd_vms();
    assert_eq!(abds.len(), 1, "{abds:?}");
    let abd_uuid = abds[0]["vm_uuid"].as_str().unwrap().to_owned();
    let inv = sim.inventory().await;
    let disk = pool_support::disks_of(&inv, &abd_uuid)[0].1.clone();

    let s = sim.session().await;
    let vm = a3_server::xapi::ops::by_uuid(&s, "VM", &abd_uuid)
        .await
        .unwrap();
    a3_server::xapi::ops::destroy_vm(&s, &vm, true)
        .await
        .unwrap();
    pool_support::wait_nothing_left(&sim, Duration::from_secs(60)).await;
    assert!(
        !uuids(&sim.inventory().await, "VDI").contains(&disk),
        "the ABD's disk {disk} is still there"
    );
    let log = a3.ok(&["job", "log", "1"]);
    assert!(
        log.contains("reconciler: removed the disk"),
        "the provisioning run's log names the removal:\n{log}"
    );
    a3.backup(&[&name], 1)
        .expect("the next backup, through a new ABD");
}
