//! Every XAPI call of a job's steps, failing: the simulator fails one call at a time (its
//! `/sim/faults` knob, as a pool fails when storage or a host misbehaves) through ABD
//! provisioning, a VM backup and a restore. Each time the run fails naming xapi's error,
//! the pool holds nothing the run made (no snapshot, VBD, half-made ABD, VM or disk), and
//! the next run succeeds. A failure in the clean-up after a commit keeps the version, and
//! the next backup removes what it left.

mod pool_support;

use pool_support::{A3, Sim, alike_sr, assert_nothing_left, objects, user_vms};
use serde_json::Value as Json;

/// The error every injected fault returns: a real storage failure code, with a message
/// the test can find in the run's failure.
const CODE: &str = "SR_BACKEND_FAILURE_46";
const MESSAGE: &str = "injected by pool_faults";

/// Arms one failure of `method`'s next call.
async fn arm(sim: &Sim, method: &str) {
    let path = format!("faults?method={method}&code={CODE}&params=,{MESSAGE},");
    let (status, body) = sim.control("POST", &path, vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Disarms every failure still armed.
async fn disarm(sim: &Sim) {
    let (status, body) = sim.control("DELETE", "faults", vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// The uuids of the objects of `class` that pass `keep`.
fn uuids(inv: &Json, class: &str, keep: impl Fn(&Json) -> bool) -> Vec<String> {
    let mut out: Vec<String> = objects(inv, class)
        .into_iter()
        .filter(|o| keep(o))
        .map(|o| o["uuid"].as_str().unwrap_or_default().to_owned())
        .collect();
    out.sort();
    out
}

/// VMs (snapshots too) and disks with data: what a failed run must not add. The ABD
/// template and its disk are left out: the first job imports them into `Alike_SR` and keeps them, as it should.
fn footprint(inv: &Json) -> (Vec<String>, Vec<String>) {
    let templates: Vec<&String> = inv["objects"]["VM"]
        .as_object()
        .map(|vms| {
            vms.iter()
                .filter(|(_, vm)| vm["is_a_template"] == true && vm["is_a_snapshot"] != true)
                .map(|(r, _)| r)
                .collect()
        })
        .unwrap_or_default();
    let template_disks: Vec<Json> = objects(inv, "VBD")
        .into_iter()
        .filter(|b| templates.iter().any(|t| b["VM"] == t.as_str()))
        .map(|b| b["VDI"].clone())
        .collect();
    let template_disk_uuids: Vec<Json> = inv["objects"]["VDI"]
        .as_object()
        .map(|vdis| {
            vdis.iter()
                .filter(|(r, _)| template_disks.iter().any(|d| d == r.as_str()))
                .map(|(_, v)| v["uuid"].clone())
                .collect()
        })
        .unwrap_or_default();
    (
        uuids(inv, "VM", |vm| {
            vm["is_a_template"] != true || vm["is_a_snapshot"] == true
        }),
        uuids(inv, "VDI", |v| {
            v["type"] != "cbt_metadata" && !template_disk_uuids.contains(&v["uuid"])
        }),
    )
}

/// Fails the run's `method` once; asserts the run fails with the injected error and the
/// pool holds what it held before.
async fn fails_cleanly(sim: &Sim, a3: &A3, method: &str, run: &[&str]) {
    let before = footprint(&sim.inventory().await);
    arm(sim, method).await;
    let out = a3.cli(run);
    disarm(sim).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "{run:?} succeeded though {method} failed:\n{stdout}"
    );
    assert!(
        stderr.contains(CODE) && stderr.contains(MESSAGE),
        "{run:?} with {method} failing must say xapi's error:\n{stderr}\nA3 log: {}",
        a3.log_path().display()
    );
    let inv = sim.inventory().await;
    assert_nothing_left(&inv);
    assert_eq!(
        footprint(&inv),
        before,
        "{run:?} with {method} failing left VMs or disks behind; A3 log: {}",
        a3.log_path().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_step_leaves_nothing_behind() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-faults-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "4MiB");
    let a3 = A3::start(&scratch.path().join("a3"), &a3_ip);
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let (_, name) = user_vms(&sim.inventory().await)[0].clone();
    let backup = ["backup", "run", name.as_str()];

    // ABD provisioning: no ABD yet, so each backup below first makes one. (No
    // VM.set_memory_limits: the template already has the ABD's memory.)
    for method in [
        "VM.clone",
        "VM.set_is_a_template",
        "VIF.create",
        "VM.set_xenstore_data",
        // The demo VM's disks are on host-local storage, so the ABD starts on that host.
        "VM.start_on",
    ] {
        fails_cleanly(&sim, &a3, method, &backup).await;
        assert!(a3.abd_vms().is_empty(), "{method}: a half-made ABD is kept");
    }

    // A backup's steps, through the ABD the first good backup leaves idle.
    a3.backup(&[&name], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    for method in [
        "VM.snapshot",
        "VBD.create",
        "VBD.plug",
        "VBD.unplug",
        "VBD.destroy",
    ] {
        fails_cleanly(&sim, &a3, method, &backup).await;
    }
    assert_eq!(a3.versions(&name).len(), 1, "no version from a failed run");

    // After the commit: a failed clean-up is logged, the version stands, and the next
    // backup of the VM removes what was left (the snapshot VM, or its disks' data).
    let clean = sim.inventory().await;
    for method in ["VM.destroy", "VDI.data_destroy"] {
        let versions = a3.versions(&name).len();
        arm(&sim, method).await;
        let out = a3.cli(&backup);
        disarm(&sim).await;
        assert!(
            out.status.success(),
            "a failed {method} after the commit failed the run:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            a3.versions(&name).len(),
            versions + 1,
            "{method}: no version"
        );
        assert_ne!(
            footprint(&sim.inventory().await),
            footprint(&clean),
            "{method} failed, so something of the snapshot must still be there"
        );
        a3.backup(&[&name], 1)
            .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
        let inv = sim.inventory().await;
        assert_nothing_left(&inv);
        assert_eq!(
            footprint(&inv),
            footprint(&clean),
            "the backup after a failed {method} did not remove the leftovers"
        );
    }

    // A restore's steps, as a new VM. (A failed VM.start is left out: the disks are
    // restored by then, so the A3 keeps the VM and says it "is restored but did not start".)
    let version = a3.versions(&name)[0]["id"].to_string();
    let restore = ["restore", version.as_str(), "--start"];
    for method in ["VDI.create", "VM.create", "VBD.create", "VIF.create"] {
        fails_cleanly(&sim, &a3, method, &restore).await;
    }

    // With nothing failing, both work again.
    a3.backup(&[&name], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    a3.ok(&restore);
    assert_nothing_left(&sim.inventory().await);
}
