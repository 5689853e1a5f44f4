//! Every XAPI call of a job's steps, failing: the simulator fails one call at a time (its
//! injected faults, as a pool fails when storage or a host misbehaves) through ABD
//! provisioning, a VM backup and a restore. Each time the run fails naming xapi's error,
//! the pool holds nothing the run made (no snapshot, VBD, half-made ABD, VM or disk), and
//! the next run succeeds. A failure in the clean-up after a commit keeps the version, and
//! the next backup removes what it left.
//!
//! In-process: the test starts xapi-sim and the A3 server in its own runtime, arms the
//! faults in the simulator's state (what `/sim/faults` sets) and runs the jobs through the
//! A3's job engine. Only the ABDs are processes (`abd-agent`, run by the simulator).

mod pool_support;

use std::path::Path;

use a3_server::catalog::jobs::RunRow;
use a3_server::config::Config;
use a3_server::jobs::BackupSpec;
use a3_server::jobs::restore::RestoreSpec;
use a3_server::server::Running;
use a3_server::xapi::Credentials;
use pool_support::{PASSWORD, assert_nothing_left, leftovers, objects, user_vms};
use serde_json::Value as Json;
use xapi_sim::faults::Fault;
use xapi_sim::{AbdBackend, Sim, SimConfig};

/// The error every injected fault returns: a real storage failure code, with a message
/// the test can find in the run's failure.
const CODE: &str = "SR_BACKEND_FAILURE_46";
const MESSAGE: &str = "injected by pool_faults";

/// A job the test runs.
enum Job {
    /// A backup of the VM of this uuid.
    Backup(String),
    /// A restore of this version as a new VM, started.
    Restore(i64),
}

/// A simulated pool of one host and one VM, and an A3 managing it, both in this process.
struct World {
    sim: Sim,
    a3: Running,
}

impl World {
    async fn start(dir: &Path) -> World {
        let (base, a3_ip) = pool_support::addresses();
        let sim = Sim::start(SimConfig {
            state_dir: dir.join("sim"),
            hosts: 1,
            vms: 1,
            address: base.parse().unwrap(),
            port: 0,
            password: Some(PASSWORD.into()),
            disk_size: 4 << 20,
            abd_agent: Some(a3_e2e::bin("abd-agent")),
            abd_backend: AbdBackend::Process,
        })
        .await
        .unwrap();
        let state_dir = dir.join("a3");
        std::fs::create_dir_all(&state_dir).unwrap();
        let xva = state_dir.join("abd.xva");
        pool_support::template_xva(&xva);
        let a3 = a3_server::server::start(Config {
            state_dir,
            http_listen: format!("{a3_ip}:0").parse().unwrap(),
            data_listen: format!("{a3_ip}:0").parse().unwrap(),
            abd_template: Some(xva),
            dns: vec![format!("{a3_ip}:53"), "127.0.0.53".into()],
            abd_boot_timeout_secs: 60,
            ..Config::default()
        })
        .await
        .unwrap();
        let credentials = Credentials {
            username: "root".into(),
            password: PASSWORD.into(),
        };
        let endpoint = format!("{}:{}", sim.master_address(), sim.port);
        // Adds the pool and gives it its `Alike_SR` before it returns.
        a3_server::jobs::pools::add_host(&a3.state.inventory, &a3.state.sr, endpoint, credentials)
            .await
            .unwrap();
        let world = World { sim, a3 };
        let inv = world.inventory();
        assert!(
            objects(&inv, "SR")
                .iter()
                .any(|sr| sr["name_label"] == "Alike_SR" && sr["type"] == "nfs"),
            "the A3 made no NFS Alike_SR in the pool"
        );
        world
    }

    /// Stops the A3 (which unplugs its SR from the pool), then the simulator.
    async fn shutdown(self) {
        self.a3.shutdown().await.unwrap();
        self.sim.shutdown().await.unwrap();
    }

    /// What `GET /sim/inventory` answers.
    fn inventory(&self) -> Json {
        xapi_sim::control::inventory_json(self.sim.shared())
    }

    /// Fails the next call of `method` (what `POST /sim/faults` arms).
    fn arm(&self, method: &str) {
        let fault = Fault::new(method, 0, CODE, &format!(",{MESSAGE},"));
        self.sim.shared().lock().faults.push(fault);
    }

    /// Disarms every failure still armed.
    fn disarm(&self) {
        self.sim.shared().lock().faults.clear();
    }

    /// Runs `job` to its end; its run.
    async fn run(&self, job: &Job) -> RunRow {
        let engine = &self.a3.state.engine;
        let started = match job {
            Job::Backup(vm) => engine.start_backup(BackupSpec {
                vms: vec![vm.clone()],
                concurrency: 1,
            }),
            Job::Restore(version) => engine.start_restore(RestoreSpec {
                version: *version,
                pool: None,
                sr: None,
                start: true,
                in_place: false,
                no_safety_snapshot: false,
            }),
        }
        .unwrap();
        // The run's task ends after it recorded the run's end.
        engine.wait_idle().await;
        let run = self.a3.state.catalog.run_get(started.run).unwrap().unwrap();
        assert_ne!(run.state, "running", "the run's task ended before the run");
        run
    }

    /// Runs `job`, which must succeed.
    async fn ok(&self, job: &Job) {
        let run = self.run(job).await;
        assert_eq!(run.state, "succeeded", "{}", self.log(&run));
    }

    /// A run's log, for failure messages.
    fn log(&self, run: &RunRow) -> String {
        let lines = self.a3.state.catalog.run_log_lines(run.id).unwrap();
        let lines: Vec<String> = lines
            .into_iter()
            .map(|l| format!("{} {}", l.level, l.message))
            .collect();
        format!("run {} log:\n{}", run.id, lines.join("\n"))
    }

    /// The ids of a VM's versions, oldest first.
    fn versions(&self, vm: &str) -> Vec<i64> {
        let rows = self.a3.state.catalog.version_list(Some(vm)).unwrap();
        rows.into_iter().map(|v| v.id).collect()
    }

    /// Whether the A3 has any ABD VM.
    fn has_abds(&self) -> bool {
        !self.a3.state.catalog.abd_vm_list(None).unwrap().is_empty()
    }

    /// Fails `job`'s `method` once; asserts the run fails with the injected error and the
    /// pool holds what it held before.
    async fn fails_cleanly(&self, method: &str, job: &Job) {
        let before = footprint(&self.inventory());
        self.arm(method);
        let run = self.run(job).await;
        self.disarm();
        let log = self.log(&run);
        assert_eq!(
            run.state, "failed",
            "succeeded though {method} failed; {log}"
        );
        let reason = run.reason.unwrap_or_default();
        assert!(
            reason.contains(CODE) && reason.contains(MESSAGE),
            "with {method} failing, the run must say xapi's error, not {reason:?}; {log}"
        );
        let inv = self.inventory();
        assert_nothing_left(&inv);
        assert_eq!(
            footprint(&inv),
            before,
            "with {method} failing, the run left VMs or disks behind; {log}"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_at_any_step_leaves_nothing_behind() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-faults-")
        .tempdir()
        .unwrap();
    let w = World::start(scratch.path()).await;
    let (vm, _) = user_vms(&w.inventory())[0].clone();
    let backup = Job::Backup(vm.clone());

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
        w.fails_cleanly(method, &backup).await;
        assert!(!w.has_abds(), "{method}: a half-made ABD is kept");
    }

    // A backup's steps, through the ABD the first good backup leaves idle.
    w.ok(&backup).await;
    for method in [
        "VM.snapshot",
        "VBD.create",
        "VBD.plug",
        "VBD.unplug",
        "VBD.destroy",
    ] {
        w.fails_cleanly(method, &backup).await;
    }
    assert_eq!(w.versions(&vm).len(), 1, "no version from a failed run");

    // After the commit: a failed clean-up is logged, the version stands, and the next
    // backup of the VM removes what was left (the snapshot VM, or its disks' data).
    let clean = footprint(&w.inventory());
    for method in ["VM.destroy", "VDI.data_destroy"] {
        let versions = w.versions(&vm).len();
        w.arm(method);
        let run = w.run(&backup).await;
        w.disarm();
        assert_eq!(
            run.state,
            "succeeded",
            "a failed {method} after the commit failed the run; {}",
            w.log(&run)
        );
        assert_eq!(w.versions(&vm).len(), versions + 1, "{method}: no version");
        assert_ne!(
            footprint(&w.inventory()),
            clean,
            "{method} failed, so something of the snapshot must still be there"
        );
        w.ok(&backup).await;
        let inv = w.inventory();
        assert_nothing_left(&inv);
        assert_eq!(
            footprint(&inv),
            clean,
            "the backup after a failed {method} did not remove the leftovers"
        );
    }

    // The commit supersedes the previous version's CBT metadata: a failed removal is
    // logged, the version stands, and the next backup removes it.
    w.arm("VDI.destroy");
    let run = w.run(&backup).await;
    w.disarm();
    assert_eq!(run.state, "succeeded", "{}", w.log(&run));
    let left = leftovers(&w.inventory());
    assert!(
        left.iter().any(|l| l.contains("CBT metadata")),
        "the superseded CBT metadata is gone though its removal failed: {left:?}"
    );
    assert!(
        w.log(&run)
            .contains("removing the CBT metadata of older versions")
    );
    w.ok(&backup).await;
    assert_nothing_left(&w.inventory());

    // A restore's steps, as a new VM. (A failed VM.start is left out: the disks are
    // restored by then, so the A3 keeps the VM and says it "is restored but did not start".)
    let restore = Job::Restore(w.versions(&vm)[0]);
    for method in ["VDI.create", "VM.create", "VBD.create", "VIF.create"] {
        w.fails_cleanly(method, &restore).await;
    }

    // With nothing failing, both work again.
    w.ok(&backup).await;
    w.ok(&restore).await;
    assert_nothing_left(&w.inventory());
    w.shutdown().await;
}
