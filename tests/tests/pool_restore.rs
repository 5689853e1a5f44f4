//! VM restores beyond the default: over the original VM (refused while it runs), started
//! afterwards, as a new VM on another SR, and a restore that meets a corrupt chunk, which
//! fails naming it and leaves no half-restored VM or disk in the pool. On the way, the
//! A3's `/metrics` after the backup.

mod pool_support;

use a3_e2e::chunk_files;
use a3_shared::xapi_wire::Value;
use pool_support::{
    A3, Sim, alike_sr, assert_nothing_left, disks_of, noise, objects, user_vms, vm_by_uuid,
};

fn restored_vms(inv: &serde_json::Value, name: &str) -> Vec<serde_json::Value> {
    objects(inv, "VM")
        .into_iter()
        .filter(|v| {
            v["name_label"]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{name} (restored ")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_in_place_to_another_sr_and_never_leave_half_a_vm() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-restore-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 2, 1, "4MiB");
    let a3 = A3::start(&scratch.path().join("a3"), &a3_ip);
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let s = sim.session().await;

    let inv = sim.inventory().await;
    let (uuid, name) = user_vms(&inv)[0].clone();
    let (_, vdi, _) = disks_of(&inv, &uuid)[0].clone();
    let vm_ref = a3_server::xapi::ops::by_uuid(&s, "VM", &uuid)
        .await
        .unwrap();
    if vm_by_uuid(&inv, &uuid)["power_state"] != "Running" {
        s.call(
            "VM.start",
            &[Value::from(vm_ref.as_str()), false.into(), false.into()],
        )
        .await
        .unwrap();
    }
    sim.write_vdi(&vdi, 0, noise(5, 3 << 20)).await;
    let backed_up = sim.vdi_data(&vdi).await;
    a3.backup(&[&name], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    let version = a3.versions(&name)[0]["id"].to_string();
    // The figures for Prometheus, behind the API token.
    assert_eq!(a3.http_get("/metrics", false).await.0, 401);
    let (status, metrics) = a3.http_get("/metrics", true).await;
    assert_eq!(status, 200, "{metrics}");
    for line in [
        "a3_store_versions 1",
        "a3_runs{kind=\"backup\",state=\"succeeded\"} 1",
        "a3_abds_connected{transport=\"QUIC\"} 1",
        "a3_abd_vms{state=\"idle\"} 1",
        "a3_pools 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
    // The guest goes on writing after the backup.
    sim.write_vdi(&vdi, 1 << 20, noise(6, 1 << 20)).await;
    let changed = sim.vdi_data(&vdi).await;
    assert_ne!(changed, backed_up);

    // Over the running original: refused with the fix, nothing written.
    let out = a3.cli(&["restore", &version, "--in-place"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a running VM cannot be overwritten");
    assert!(err.contains("is Running: shut it down"), "{err}");
    assert!(sim.vdi_data(&vdi).await == changed, "the disk is untouched");

    // Halted: written back in place, then started; no VM added.
    s.call("VM.hard_shutdown", &[Value::from(vm_ref.as_str())])
        .await
        .unwrap();
    let vm_count = objects(&sim.inventory().await, "VM").len();
    a3.ok(&["restore", &version, "--in-place", "--start"]);
    let inv = sim.inventory().await;
    assert!(sim.vdi_data(&vdi).await == backed_up, "in place: bit-exact");
    assert_eq!(vm_by_uuid(&inv, &uuid)["power_state"], "Running");
    assert_eq!(objects(&inv, "VM").len(), vm_count, "no VM added");
    assert_nothing_left(&inv);

    // As a new VM on the SR that is not the pool's default.
    let default_sr = objects(&inv, "pool")[0]["default_SR"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = inv["objects"]["SR"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(r, sr)| {
            **r != default_sr
                && sr["name_label"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("Local storage on "))
        })
        .map(|(_, sr)| sr.clone())
        .expect("a second local SR");
    let other_name = other["name_label"].as_str().unwrap();
    a3.ok(&["restore", &version, "--sr", other_name]);
    let inv = sim.inventory().await;
    let new = restored_vms(&inv, &name);
    assert_eq!(new.len(), 1, "one restored VM");
    let new_uuid = new[0]["uuid"].as_str().unwrap();
    let (_, new_vdi, _) = disks_of(&inv, new_uuid)[0].clone();
    let new_vdi_rec = objects(&inv, "VDI")
        .into_iter()
        .find(|v| v["uuid"] == new_vdi)
        .unwrap();
    let sr_of = &inv["objects"]["SR"][new_vdi_rec["SR"].as_str().unwrap()];
    assert_eq!(sr_of["uuid"], other["uuid"], "the disk is on --sr");
    assert!(
        sim.vdi_data(&new_vdi).await == backed_up,
        "new VM: bit-exact"
    );
    let r = a3_server::xapi::ops::by_uuid(&s, "VM", new_uuid)
        .await
        .unwrap();
    a3_server::xapi::ops::destroy_vm(&s, &r, false)
        .await
        .unwrap();

    // A write the pool fails: xapi answers 200 and reports the failure in the import's
    // task; the restore fails with xapi's error and takes its half-made VM away.
    let vdis_before = objects(&sim.inventory().await, "VDI").len();
    let (status, _) = sim
        .control("POST", "import-write-failure?after=1048576", vec![])
        .await;
    assert_eq!(status, 200);
    let out = a3.cli(&["restore", &version]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed write fails the restore");
    assert!(err.contains("VDI_IO_ERROR"), "xapi's error: {err}");
    let inv = sim.inventory().await;
    assert!(restored_vms(&inv, &name).is_empty(), "no half-restored VM");
    assert_eq!(objects(&inv, "VDI").len(), vdis_before, "no disk left");
    assert_nothing_left(&inv);

    // A corrupt chunk: the restore fails, says so, and takes its half-made VM away.
    for chunk in chunk_files(&a3.state) {
        let mut bytes = std::fs::read(&chunk).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&chunk, bytes).unwrap();
    }
    let out = a3.cli(&["restore", &version]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a corrupt chunk fails the restore");
    assert!(
        err.contains("corrupt"),
        "the error names the corruption: {err}"
    );
    let inv = sim.inventory().await;
    assert!(restored_vms(&inv, &name).is_empty(), "no half-restored VM");
    assert_eq!(
        objects(&inv, "VDI").len(),
        vdis_before,
        "no disk of the failed restore is left"
    );
    assert_nothing_left(&inv);
}

/// A version restores into another pool the A3 manages: a new VM there, its disk
/// bit-exact, its network interfaces mapped onto that pool's networks, and started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_into_another_pool() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-restore-pool-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let (other_base, _) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "4MiB");
    let other = Sim::start(&scratch.path().join("other"), &other_base, 1, 1, "4MiB");
    let a3 = A3::start(&scratch.path().join("a3"), &a3_ip);
    a3.add_pool(&sim);
    let other_pool = a3.add_pool(&other);
    alike_sr(&sim).await;

    let inv = sim.inventory().await;
    let (uuid, name) = user_vms(&inv)[0].clone();
    let (_, vdi, _) = disks_of(&inv, &uuid)[0].clone();
    sim.write_vdi(&vdi, 0, noise(7, 2 << 20)).await;
    let backed_up = sim.vdi_data(&vdi).await;
    // Both pools hold a VM of that name: the uuid says which.
    a3.backup(&[&uuid], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    let version = a3.versions(&uuid)[0]["id"].to_string();

    a3.ok(&["restore", &version, "--pool", &other_pool, "--start"]);
    let there = other.inventory().await;
    let new = restored_vms(&there, &name);
    assert_eq!(new.len(), 1, "one restored VM in the other pool");
    assert_eq!(new[0]["power_state"], "Running");
    let (_, new_vdi, _) = disks_of(&there, new[0]["uuid"].as_str().unwrap())[0].clone();
    assert!(
        other.vdi_data(&new_vdi).await == backed_up,
        "bit-exact in the other pool"
    );
    let vifs = |inv: &serde_json::Value, vm: &serde_json::Value| -> Vec<String> {
        vm["VIFs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let vif = &inv["objects"]["VIF"][r.as_str().unwrap()];
                let net = &inv["objects"]["network"][vif["network"].as_str().unwrap()];
                net["name_label"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(
        vifs(&there, &new[0]),
        vifs(&inv, &vm_by_uuid(&inv, &uuid)),
        "each interface on the other pool's network of the same name"
    );
    assert!(
        restored_vms(&sim.inventory().await, &name).is_empty(),
        "nothing restored into the source pool"
    );
    assert_nothing_left(&there);
}
