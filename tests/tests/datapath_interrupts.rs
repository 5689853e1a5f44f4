//! Interrupted backups commit nothing, and the retry succeeds.

mod datapath_util;

use std::time::Duration;

use datapath_util::{
    A3, assert_same, finish, scratch, spawn_backup, start_agent, verify_store, wait_mid_job,
    write_random,
};

const MIB: usize = 1 << 20;

/// `kill -9` of the agent during a backup: the job fails naming the disconnect, no version
/// is committed, and once the agent is back the rerun succeeds and restores bit-exact.
#[test]
fn killed_agent_commits_no_version_and_rerun_succeeds() {
    let dir = scratch();
    let state = dir.path().join("a3");
    // A fixed port: the A3 is restarted below (to verify its store) and the agent must find
    // it again.
    let listen = "127.0.1.205:28205";
    let mut a3 = A3::start(&state, listen);
    let cfg = a3.enroll("kill-1", dir.path());
    let mut agent = start_agent(&a3, "kill-1", &cfg);
    let src = dir.path().join("big.img");
    let img = write_random(&src, 11, 512 * MIB);

    let cli = spawn_backup(&a3, "kill-1", &src, "big");
    wait_mid_job(&a3, "big");
    agent.kill();
    let (ok, err) = finish(cli);
    assert!(!ok, "the backup succeeded without its agent");
    assert!(
        err.contains("disconnected") && err.contains("no version was committed"),
        "{err}"
    );
    assert!(a3.versions("big").is_empty(), "a version was committed");

    // The store is whole: stop the A3 (it owns the store) and verify all of it.
    a3.child
        .terminate(Duration::from_secs(30))
        .expect("the A3 did not stop");
    let report = verify_store(&state);
    assert!(report.is_ok(), "verify found damage: {report:?}");
    a3 = A3::start(&state, listen);

    let _agent = start_agent(&a3, "kill-1", &cfg);
    let v = a3.backup("kill-1", &src, "big", None);
    let out = dir.path().join("big.out");
    let r = a3.restore("kill-1", &v, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_same("restored", &std::fs::read(&out).unwrap(), &img);
}

/// Restarting the A3 during a backup fails the job with a clear reason and commits
/// nothing; the agent reconnects by itself and the retry succeeds.
#[test]
fn restarted_a3_fails_the_job_and_retry_succeeds() {
    let dir = scratch();
    let state = dir.path().join("a3");
    // A fixed port: the agent's config names it, and the restarted A3 must be found again.
    let listen = "127.0.1.206:28206";
    let mut a3 = A3::start(&state, listen);
    let cfg = a3.enroll("restart-1", dir.path());
    let _agent = start_agent(&a3, "restart-1", &cfg);
    let src = dir.path().join("big.img");
    write_random(&src, 12, 512 * MIB);

    let cli = spawn_backup(&a3, "restart-1", &src, "big");
    wait_mid_job(&a3, "big");
    a3.child
        .terminate(Duration::from_secs(30))
        .expect("the A3 did not stop on SIGTERM");
    let (ok, err) = finish(cli);
    assert!(!ok, "the backup succeeded across an A3 restart");
    assert!(
        err.contains("shutting down") || err.contains("restarted"),
        "unclear reason: {err}"
    );

    a3 = A3::start(&state, listen);
    a3_e2e::wait_until(Duration::from_secs(60), || {
        a3.connected("restart-1").then_some(())
    })
    .expect("the agent did not reconnect to the restarted A3");
    assert!(a3.versions("big").is_empty(), "a version was committed");
    let v = a3.backup("restart-1", &src, "big", None);
    assert_eq!(a3.versions("big").len(), 1, "{v}");
}
