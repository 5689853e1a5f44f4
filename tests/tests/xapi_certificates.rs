//! Trust on first use: a host whose certificate changes is refused, with a message naming
//! the host, both fingerprints and how to re-trust; `host trust` re-trusts it.

mod xapi_support;

use std::time::Duration;

use a3_e2e::wait_until;
use a3_server::xapi::Fingerprint;
use xapi_support::{A3, SimPool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_certificate_is_refused_until_re_trusted() {
    let sim = SimPool::start(3, 1);
    let a3 = A3::start();
    a3.add_pool(&sim, 0);
    let old = sim.hosts[0].fingerprint;

    // The master gets a new certificate and restarts its listener.
    let reply = sim
        .control(
            1,
            &format!("hosts/{}/new-certificate", sim.hosts[0].address),
        )
        .await;
    let new: Fingerprint = reply["fingerprint"].as_str().unwrap().parse().unwrap();
    assert_ne!(old, new);

    // The pool's watcher cannot reconnect: every path leads to the changed master.
    let refused = wait_until(Duration::from_secs(45), || {
        let status = a3.json(&["pool", "list"])[0]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        status.contains("TLS certificate changed").then_some(status)
    })
    .expect("the watcher accepted a changed certificate");
    assert!(refused.contains(&old.to_string()), "{refused}");
    assert!(refused.contains(&new.to_string()), "{refused}");

    // Adding the host again is refused with the whole story.
    let out = a3.add_host(&sim.endpoint(0), &sim.username, &sim.password);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let master = sim.endpoint(0);
    assert!(
        err.contains(&format!("host {master}: TLS certificate changed")),
        "{err}"
    );
    assert!(err.contains(&format!("pinned SHA-256 {old}")), "{err}");
    assert!(err.contains(&format!("presented {new}")), "{err}");
    assert!(
        err.contains(&format!("a3-server host trust {master}")),
        "{err}"
    );

    // The command the message names re-trusts it, and the A3 reconnects.
    let trusted = a3.json(&["host", "trust", &master]);
    assert_eq!(trusted["previous"], old.to_string());
    assert_eq!(trusted["current"], new.to_string());
    let healthy = wait_until(Duration::from_secs(45), || {
        (a3.json(&["pool", "list"])[0]["status"] == "").then_some(())
    });
    assert!(healthy.is_some(), "{}", a3.json(&["pool", "list"]));
    let hosts = a3.json(&["host", "list"]);
    let pinned = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["address"] == sim.hosts[0].address.as_str())
        .unwrap()["cert_sha256"]
        .clone();
    assert_eq!(pinned, new.to_string());
}
