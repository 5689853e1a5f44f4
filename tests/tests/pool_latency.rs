//! A slow pool (the simulator's `/sim/latency` knob). The A3 runs every slow operation as
//! an `Async.` task and waits for its end however long it takes (within the task bound),
//! so operations slower than its sync-call bound still succeed; a sync call slower than
//! the bound fails the run with an error naming the call and the bound, and nothing is
//! left behind.

mod pool_support;

use pool_support::{A3, Sim, alike_sr, assert_nothing_left, user_vms};

/// The A3's bound on a synchronous call in this test, in seconds.
const CALL_BOUND_SECS: u64 = 2;
/// The added latency: past the bound.
const SLOW_MS: u64 = 3_000;

/// Makes `method` (every method with `None`) slow, or fast again with `ms = 0`.
async fn latency(sim: &Sim, method: Option<&str>, ms: u64) {
    let mut path = format!("latency?ms={ms}");
    if let Some(m) = method {
        path.push_str(&format!("&method={m}"));
    }
    let (status, body) = sim.control("POST", &path, vec![]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tasks_are_awaited_and_a_slow_sync_call_fails_cleanly() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-latency-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "4MiB");
    let a3 = A3::start_configured(
        &scratch.path().join("a3"),
        &a3_ip,
        &format!("xapi_call_timeout_secs = {CALL_BOUND_SECS}\n"),
    );
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let (_, name) = user_vms(&sim.inventory().await)[0].clone();

    // Each slow operation of ABD provisioning, a backup and its clean-up, one at a time:
    // their tasks stay pending past the sync bound and the runs still succeed.
    for method in [
        "VM.start_on",
        "VM.snapshot",
        "VBD.plug",
        "VBD.unplug",
        "VM.destroy",
        "VDI.data_destroy",
    ] {
        latency(&sim, Some(method), SLOW_MS).await;
        let run = a3.backup(&[&name], 1);
        latency(&sim, None, 0).await;
        run.unwrap_or_else(|e| {
            panic!(
                "backup with a slow {method}: {e}\nA3 log: {}",
                a3.log_path().display()
            )
        });
        assert_nothing_left(&sim.inventory().await);
    }
    let versions = a3.versions(&name).len();

    // A record read is a sync call: slower than the bound, the run fails and says so.
    latency(&sim, Some("VM.get_record"), SLOW_MS).await;
    let out = a3.cli(&["backup", "run", &name]);
    latency(&sim, None, 0).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a backup with a slow VM.get_record succeeded"
    );
    assert!(
        stderr.contains("no answer to VM.get_record within 2s")
            && stderr.contains("xapi_call_timeout_secs"),
        "the failure must name the call, the bound and the setting:\n{stderr}"
    );
    assert_eq!(
        a3.versions(&name).len(),
        versions,
        "no version from a failed run"
    );
    assert_nothing_left(&sim.inventory().await);

    // The pool fast again, backups work.
    a3.backup(&[&name], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    assert_nothing_left(&sim.inventory().await);
}
