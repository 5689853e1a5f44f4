//! In-place restores made safe (issue 11). While the disks are written the VM is blocked:
//! xapi refuses `VM.start` with `OPERATION_BLOCKED` (the simulator holds the write
//! part-way until the test lets it go on). A write that fails part-way has the disks
//! written back from the safety snapshot, bit for bit; if that fails too the VM stays
//! blocked, naming the snapshot, until a restore succeeds. A restore cut by a crash keeps
//! its snapshot and its block. A restore that ends well leaves neither.

mod pool_support;

use std::time::Duration;

use a3_server::xapi::{Session, XapiError, ops};
use a3_shared::xapi_wire::Value;
use pool_support::{
    A3, Sim, alike_sr, assert_nothing_left, disks_of, noise, objects, user_vms, vm_by_uuid,
    wait_until_async,
};
use serde_json::Value as Json;

/// A pool with one halted VM, and an A3 managing it.
struct Setup {
    _scratch: tempfile::TempDir,
    sim: Sim,
    a3: A3,
    a3_ip: String,
    s: Session,
    /// The VM's uuid, name and ref.
    uuid: String,
    name: String,
    vm: String,
}

async fn setup(prefix: &str) -> Setup {
    let scratch = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "4MiB");
    let a3 = A3::start(&scratch.path().join("a3"), &a3_ip);
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let s = sim.session().await;
    let (uuid, name) = user_vms(&sim.inventory().await)[0].clone();
    let vm = ops::by_uuid(&s, "VM", &uuid).await.unwrap();
    if vm_by_uuid(&sim.inventory().await, &uuid)["power_state"] != "Halted" {
        ops::vm_hard_shutdown(&s, &vm).await.unwrap();
    }
    Setup {
        _scratch: scratch,
        sim,
        a3,
        a3_ip,
        s,
        uuid,
        name,
        vm,
    }
}

impl Setup {
    /// The VM's disks, by userdevice: (VDI uuid, size).
    async fn disks(&self) -> Vec<(String, u64)> {
        let inv = self.sim.inventory().await;
        disks_of(&inv, &self.uuid)
            .into_iter()
            .map(|(_, vdi, size)| (vdi, size))
            .collect()
    }

    /// Fills every disk with noise from `seed`; their contents.
    async fn fill(&self, seed: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (i, (vdi, size)) in self.disks().await.iter().enumerate() {
            let bytes = noise(seed + i as u64, *size as usize);
            self.sim.write_vdi(vdi, 0, bytes).await;
            out.push(self.sim.vdi_data(vdi).await);
        }
        out
    }

    /// Every disk's content.
    async fn contents(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (vdi, _) in self.disks().await {
            out.push(self.sim.vdi_data(&vdi).await);
        }
        out
    }

    /// Backs the VM up; the version's id.
    fn backup(&self) -> String {
        self.a3
            .backup(&[&self.name], 1)
            .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", self.a3.log_path().display()));
        self.a3.versions(&self.name)[0]["id"].to_string()
    }

    /// The VM's blocked operations.
    async fn blocked(&self) -> serde_json::Map<String, Json> {
        let inv = self.sim.inventory().await;
        let vm = vm_by_uuid(&inv, &self.uuid);
        vm["blocked_operations"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    /// The snapshots of the VM.
    async fn snapshots(&self) -> Vec<Json> {
        let inv = self.sim.inventory().await;
        objects(&inv, "VM")
            .into_iter()
            .filter(|v| v["is_a_snapshot"] == true && v["snapshot_of"] == self.vm.as_str())
            .collect()
    }

    /// `VM.start`'s refusal: `(code, params)`; panics if the VM starts.
    async fn start_refused(&self) -> (String, Vec<String>) {
        let args = [Value::from(self.vm.as_str()), false.into(), false.into()];
        match self.s.call("VM.start", &args).await {
            Err(XapiError::Api { code, params, .. }) => (code, params),
            other => panic!("VM.start of a VM under restore: {other:?}"),
        }
    }

    /// `job show JOB` once its run has ended.
    fn ended(&self, job: &str) -> Json {
        a3_e2e::wait_until(Duration::from_secs(120), || {
            let shown = self.a3.json(&["job", "show", job]);
            (shown["run"]["state"] != "running").then_some(shown)
        })
        .unwrap_or_else(|| {
            panic!(
                "run of job {job} did not end; see {}",
                self.a3.log_path().display()
            )
        })
    }

    /// `GET /sim/import-hold`.
    async fn hold_state(&self) -> Json {
        let (status, body) = self.sim.control("GET", "import-hold", vec![]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Waits until the import the simulator holds has written its first bytes and waits.
    async fn wait_held(&self) {
        let held = wait_until_async(Duration::from_secs(60), || async {
            (self.hold_state().await["holding"] == true).then_some(())
        })
        .await;
        assert!(
            held.is_some(),
            "no disk write reached the hold; see {}",
            self.a3.log_path().display()
        );
    }

    async fn control_ok(&self, method: &str, path: &str) {
        let (status, body) = self.sim.control(method, path, vec![]).await;
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_during_an_in_place_restore_is_refused_and_success_leaves_nothing() {
    let t = setup("a3-inplace-start-").await;
    let version_content = t.fill(1).await;
    let version = t.backup();
    t.fill(11).await;

    // The restore writes 1 MiB of the disk, then the pool holds its write.
    t.control_ok("POST", "import-hold?after=1048576").await;
    let started: Json =
        serde_json::from_str(&t.a3.ok(&["restore", &version, "--in-place", "--detach"])).unwrap();
    t.wait_held().await;

    let blocked = t.blocked().await;
    let reason = blocked["start"]
        .as_str()
        .expect("start is blocked")
        .to_owned();
    assert!(
        reason.starts_with("A3 restore ") && reason.contains("writing this VM's disks"),
        "{reason}"
    );
    for op in ["start_on", "resume", "destroy", "clone", "copy", "snapshot"] {
        assert_eq!(blocked[op], reason.as_str(), "{op} blocked with the reason");
    }
    let snaps = t.snapshots().await;
    assert_eq!(snaps.len(), 1, "one safety snapshot");
    assert!(
        snaps[0]["name_label"]
            .as_str()
            .unwrap()
            .contains("(before A3 restore "),
        "{}",
        snaps[0]["name_label"]
    );
    assert!(snaps[0]["other_config"]["a3_restore_safety"].is_string());

    // xapi's refusal, with the VM and the reason.
    assert_eq!(
        t.start_refused().await,
        (
            "OPERATION_BLOCKED".to_owned(),
            vec![t.vm.clone(), reason.clone()]
        )
    );
    let host = objects(&t.sim.inventory().await, "host")[0]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();
    let host = ops::by_uuid(&t.s, "host", &host).await.unwrap();
    match ops::vm_start_on(&t.s, &t.vm, &host).await {
        Err(XapiError::Api { code, .. }) => assert_eq!(code, "OPERATION_BLOCKED"),
        other => panic!("VM.start_on of a VM under restore: {other:?}"),
    }
    let inv = t.sim.inventory().await;
    assert_eq!(vm_by_uuid(&inv, &t.uuid)["power_state"], "Halted");

    t.control_ok("DELETE", "import-hold").await;
    let shown = t.ended(&started["job"].to_string());
    assert_eq!(shown["run"]["state"], "succeeded", "{shown}");
    assert!(t.contents().await == version_content, "in place: bit-exact");
    assert!(t.blocked().await.is_empty(), "no block left");
    assert!(t.snapshots().await.is_empty(), "no safety snapshot left");
    assert_nothing_left(&t.sim.inventory().await);
    let log = t.a3.ok(&["job", "log", &started["job"].to_string()]);
    for step in [
        "blocked from starting",
        "safety snapshot",
        "unblocked",
        "removed",
    ] {
        assert!(log.contains(step), "no {step:?} in the run log:\n{log}");
    }
    ops::vm_start(&t.s, &t.vm).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_written_back_from_the_safety_snapshot() {
    let t = setup("a3-inplace-fail-").await;
    // The demo VM has two disks, each over 1 MiB.
    let version_content = t.fill(1).await;
    assert_eq!(version_content.len(), 2);
    assert!(version_content.iter().all(|d| d.len() > 1 << 20));
    let version = t.backup();
    let before = t.fill(21).await;
    let vdis = objects(&t.sim.inventory().await, "VDI").len();

    // The first disk (over 1 MiB) is written whole, the second fails after 1 MiB.
    t.control_ok("POST", "import-write-failure?after=1048576&skip=1")
        .await;
    let out = t.a3.cli(&["restore", &version, "--in-place"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failed write fails the restore");
    assert!(err.contains("VDI_IO_ERROR"), "xapi's error: {err}");
    assert!(
        err.contains("written back from the safety snapshot"),
        "says what became of the disks: {err}"
    );
    assert!(
        t.contents().await == before,
        "both disks as before the restore, bit for bit"
    );
    assert!(t.blocked().await.is_empty(), "no block left");
    assert!(t.snapshots().await.is_empty(), "no safety snapshot left");
    let inv = t.sim.inventory().await;
    assert_eq!(objects(&inv, "VDI").len(), vdis, "no disk left");
    assert_nothing_left(&inv);
    let last_job =
        t.a3.json(&["job", "list"])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|j| j["job"]["id"].as_i64())
            .max()
            .unwrap()
            .to_string();
    let log = t.a3.ok(&["job", "log", &last_job]);
    let names: Vec<String> = disks_of(&inv, &t.uuid)
        .iter()
        .map(|(dev, _, _)| ops::device_name(dev).unwrap())
        .collect();
    for disk in names {
        assert!(
            log.contains(&format!("disk {disk} written back")),
            "no write-back of {disk} in the run log:\n{log}"
        );
    }

    // The write-back fails too (the pool refuses the first write-back's task): the VM
    // stays blocked, the error naming the snapshot to revert to.
    t.control_ok("POST", "import-write-failure?after=1048576&skip=1")
        .await;
    t.control_ok(
        "POST",
        "faults?method=task.create&code=SR_BACKEND_FAILURE_47&params=,The%20SR%20is%20not%20available,&skip=2",
    )
    .await;
    let out = t.a3.cli(&["restore", &version, "--in-place"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let snaps = t.snapshots().await;
    assert_eq!(snaps.len(), 1, "the safety snapshot is kept");
    let snap_name = snaps[0]["name_label"].as_str().unwrap().to_owned();
    for part in [
        "failed too",
        "stays blocked from starting",
        snap_name.as_str(),
        "xe vm-param-clear",
    ] {
        assert!(err.contains(part), "no {part:?} in: {err}");
    }
    let reason = t.blocked().await["start"]
        .as_str()
        .expect("start stays blocked")
        .to_owned();
    assert!(reason.contains(&snap_name), "{reason}");
    assert_eq!(t.start_refused().await.0, "OPERATION_BLOCKED");
    let now = t.contents().await;
    assert!(
        now[0] == version_content[0],
        "the first disk holds the version"
    );
    assert!(now[1] == before[1], "the second was written back");

    // Restoring again is the fix: the disks hold the version, the block goes; the earlier
    // safety snapshot stays, for the administrator to delete.
    t.a3.ok(&["restore", &version, "--in-place"]);
    assert!(t.contents().await == version_content, "bit-exact");
    assert!(t.blocked().await.is_empty(), "unblocked");
    let snaps = t.snapshots().await;
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["name_label"], snap_name.as_str());
    t.sim.destroy_vm(snaps[0]["uuid"].as_str().unwrap()).await;
    assert_nothing_left(&t.sim.inventory().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_in_place_restore_keeps_its_snapshot_and_block() {
    let mut t = setup("a3-inplace-kill-").await;
    let version_content = t.fill(1).await;
    let version = t.backup();
    t.fill(31).await;

    t.control_ok("POST", "import-hold?after=1048576").await;
    let started: Json =
        serde_json::from_str(&t.a3.ok(&["restore", &version, "--in-place", "--detach"])).unwrap();
    t.wait_held().await;
    t.a3.child.kill();
    t.control_ok("DELETE", "import-hold").await;
    let state = t.a3.state.clone();
    t.a3 = A3::start(&state, &t.a3_ip);

    let shown = t.ended(&started["job"].to_string());
    assert_eq!(shown["run"]["state"], "failed");
    // The reconciler, after recovery: the snapshot is kept, the block says what happened.
    let snaps = t.snapshots().await;
    assert_eq!(snaps.len(), 1, "the safety snapshot is kept");
    let snap_name = snaps[0]["name_label"].as_str().unwrap().to_owned();
    let reason = wait_until_async(Duration::from_secs(60), || async {
        let reason = t.blocked().await["start"].as_str()?.to_owned();
        reason.contains("was interrupted").then_some(reason)
    })
    .await
    .expect("the reconciler did not say on the block that the restore was interrupted");
    assert!(reason.contains(&snap_name), "{reason}");
    assert_eq!(t.start_refused().await.0, "OPERATION_BLOCKED");
    let log = t.a3.ok(&["job", "log", &started["job"].to_string()]);
    assert!(
        log.contains("stays blocked from starting") && log.contains(&snap_name),
        "the run log says so:\n{log}"
    );
    // Restoring again is the fix; the interrupted run's snapshot stays, for the
    // administrator to delete.
    t.a3.ok(&["restore", &version, "--in-place"]);
    assert!(t.contents().await == version_content, "bit-exact");
    assert!(t.blocked().await.is_empty(), "unblocked");
    let snaps = t.snapshots().await;
    assert_eq!(snaps.len(), 1, "the interrupted run's snapshot stays");
    assert_eq!(snaps[0]["name_label"], snap_name.as_str());
}
