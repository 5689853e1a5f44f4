//! Host add against a simulated 3-host pool: discovery through a supporter, and the
//! clear refusals (wrong password, unreachable address).

mod xapi_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use a3_e2e::wait_until;
use a3_server::xapi::Fingerprint;
use xapi_support::{A3, SimPool};

#[test]
fn adding_a_supporter_records_the_pool_with_all_hosts_and_their_pins() {
    let sim = SimPool::start(3, 4);
    let a3 = A3::start();

    // Host 1 (the second) is a supporter: the A3 must follow HOST_IS_SLAVE to host 0.
    let added = a3.add_pool(&sim, 1);
    let hosts = added["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{added}");
    for sim_host in &sim.hosts {
        let h = hosts
            .iter()
            .find(|h| h["uuid"] == sim_host.uuid.as_str())
            .unwrap_or_else(|| panic!("host {} not recorded: {added}", sim_host.address));
        assert_eq!(h["address"], sim_host.address.as_str());
        assert_eq!(h["port"], sim.port);
        // Each host's own certificate is pinned, not the one of the host first contacted.
        let pin: Fingerprint = h["cert_sha256"].as_str().unwrap().parse().unwrap();
        assert_eq!(pin, sim_host.fingerprint, "pin of {}", sim_host.address);
        assert_eq!(h["is_master"], sim_host.address == sim.hosts[0].address);
    }
    assert_eq!(
        added["pool"]["master_address"],
        sim.hosts[0].address.as_str()
    );
    assert_eq!(added["pool"]["vms"], 4);

    // The same through the list commands.
    let pools = a3.json(&["pool", "list"]);
    assert_eq!(pools.as_array().unwrap().len(), 1);
    assert_eq!(pools[0]["hosts"], 3);
    assert_eq!(a3.json(&["host", "list"]).as_array().unwrap().len(), 3);
    let vms = a3.json(&["vm", "list"]);
    assert_eq!(vms.as_array().unwrap().len(), 4);
    for vm in vms.as_array().unwrap() {
        let disks = vm["disks"].as_array().unwrap();
        assert!(!disks.is_empty(), "VM without disks: {vm}");
        assert!(disks.iter().all(|d| d["sr_uuid"].is_string()), "{vm}");
    }

    // The password is kept owner-only, outside the catalog.
    let uuid = added["pool"]["uuid"].as_str().unwrap();
    let secret = a3
        .path()
        .join("xapi-credentials")
        .join(format!("{uuid}.password"));
    let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), sim.password);

    // The human table names every host.
    let table = a3.cli(&["host", "list"]);
    let table = String::from_utf8(table.stdout).unwrap();
    for h in &sim.hosts {
        assert!(table.contains(&h.address), "{table}");
    }
    assert!(
        table.contains("master") && table.contains("supporter"),
        "{table}"
    );

    // "Synchronise now" re-reads everything.
    let report = a3.json(&["pool", "sync", uuid]);
    assert_eq!(report["pool_uuid"], uuid);
    assert!(report["vdis"].as_u64().unwrap() >= 8, "{report}");

    // Removing any host of the pool forgets the pool, its inventory and its password.
    let removed = a3.json(&["host", "remove", &sim.endpoint(2)]);
    assert_eq!(removed["pool_uuid"], uuid);
    assert_eq!(removed["hosts"], 3);
    assert_eq!(a3.json(&["pool", "list"]), serde_json::json!([]));
    assert_eq!(a3.json(&["vm", "list"]), serde_json::json!([]));
    assert!(!secret.exists());
    let out = a3.cli(&["host", "remove", &sim.endpoint(2)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is recorded; `a3-server host list`"), "{err}");
}

#[test]
fn a_wrong_password_is_refused_and_nothing_is_recorded() {
    let sim = SimPool::start(3, 1);
    let a3 = A3::start();

    let out = a3.add_host(&sim.endpoint(2), &sim.username, "not-the-password");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wrong user name or password for user 'root'"),
        "{err}"
    );
    assert!(err.contains("SESSION_AUTHENTICATION_FAILED"), "{err}");
    assert!(err.contains("--password-file"), "{err}");

    assert_eq!(a3.json(&["pool", "list"]), serde_json::json!([]));
    assert_eq!(a3.json(&["host", "list"]), serde_json::json!([]));
    let secrets = a3.path().join("xapi-credentials");
    let stored = std::fs::read_dir(&secrets).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored, 0, "a password was stored for a failed add");
}

#[test]
fn an_unreachable_address_fails_with_a_clear_error() {
    let a3 = A3::start();
    let file = a3.password_file("whatever");
    // Nothing listens on 127.0.9.9:1.
    let mut child = a3
        .command(&[
            "host",
            "add",
            "127.0.9.9:1",
            "--password-file",
            file.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until(Duration::from_secs(10), || child.try_wait().unwrap());
    let Some(status) = status else {
        let _ = child.kill();
        panic!("host add of an unreachable address did not finish within 10 s");
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("host 127.0.9.9:1: cannot connect"), "{err}");
    assert!(err.contains("check the address"), "{err}");
    assert_eq!(a3.json(&["pool", "list"]), serde_json::json!([]));
}
