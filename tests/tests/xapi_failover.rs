//! When the pool master moves and the old master goes down, the A3 asks the other known
//! hosts, follows `HOST_IS_SLAVE` to the new master and keeps its inventory current.

mod xapi_support;

use std::time::Duration;

use a3_e2e::wait_until;
use a3_shared::xapi_wire::Value;
use xapi_support::{A3, SimPool, halted_vm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_a3_follows_the_master_when_it_moves_and_the_old_master_goes_down() {
    let sim = SimPool::start(3, 2);
    let a3 = A3::start();
    a3.add_pool(&sim, 0);
    let new_master = sim.hosts[1].address.clone();

    sim.control(1, &format!("master?host={new_master}")).await;
    sim.control(1, &format!("hosts/{}/down", sim.hosts[0].address))
        .await;

    let followed = wait_until(Duration::from_secs(45), || {
        let pools = a3.json(&["pool", "list"]);
        let pool = &pools[0];
        (pool["master_address"] == new_master.as_str() && pool["status"] == "").then_some(())
    });
    assert!(
        followed.is_some(),
        "the A3 did not follow the new master: {}",
        a3.json(&["pool", "list"])
    );
    let hosts = a3.json(&["host", "list"]);
    let master: Vec<_> = hosts
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["is_master"] == true)
        .collect();
    assert_eq!(master.len(), 1);
    assert_eq!(master[0]["address"], new_master.as_str());

    // And it watches the new master's events.
    let session = sim.session(1).await;
    let source = halted_vm(&session).await;
    session
        .call(
            "VM.clone",
            &[Value::from(source), Value::from("after-failover")],
        )
        .await
        .unwrap();
    let seen = wait_until(Duration::from_secs(45), || {
        a3.vm_names()
            .contains(&"after-failover".to_owned())
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "events from the new master never reached the catalog"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_master_dies_first_the_a3_asks_the_other_hosts() {
    let sim = SimPool::start(3, 1);
    let a3 = A3::start();
    a3.add_pool(&sim, 0);

    // The master goes down before any master change: the A3 only knows a dead master.
    sim.control(1, &format!("hosts/{}/down", sim.hosts[0].address))
        .await;
    let lost = wait_until(Duration::from_secs(45), || {
        let status = a3.json(&["pool", "list"])[0]["status"]
            .as_str()
            .unwrap()
            .to_owned();
        status
            .contains("no host could be reached as master")
            .then_some(status)
    })
    .expect("the A3 did not notice that the master is gone");
    assert!(lost.contains(&sim.hosts[0].address), "{lost}");

    // Host 2 takes over. Asked first among the others, host 1 answers HOST_IS_SLAVE
    // [host 2], and the A3 follows.
    let new_master = sim.hosts[2].address.clone();
    sim.control(1, &format!("master?host={new_master}")).await;
    let followed = wait_until(Duration::from_secs(45), || {
        let pool = a3.json(&["pool", "list"])[0].clone();
        (pool["master_address"] == new_master.as_str() && pool["status"] == "").then_some(())
    });
    assert!(
        followed.is_some(),
        "the A3 did not find the new master: {}",
        a3.json(&["pool", "list"])
    );
}
