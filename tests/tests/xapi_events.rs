//! The A3 keeps its catalog current with `event.from`: VMs created or destroyed after the
//! add show up without another sync.

mod xapi_support;

use std::time::Duration;

use a3_e2e::wait_until;
use a3_shared::xapi_wire::Value;
use xapi_support::{A3, SimPool, halted_vm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_created_after_the_add_appears_through_events() {
    let sim = SimPool::start(3, 2);
    let a3 = A3::start();
    a3.add_pool(&sim, 0);
    assert!(!a3.vm_names().contains(&"made-after-add".to_owned()));

    let session = sim.session(0).await;
    let source = halted_vm(&session).await;
    let new_vm = session
        .call(
            "VM.clone",
            &[Value::from(source), Value::from("made-after-add")],
        )
        .await
        .unwrap();

    let seen = wait_until(Duration::from_secs(20), || {
        let vms = a3.json(&["vm", "list"]);
        vms.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "made-after-add")
            .cloned()
    })
    .expect("the new VM never appeared in the catalog");
    // Its disks (new VBDs and VDIs) came through events too.
    assert_eq!(seen["disks"].as_array().unwrap().len(), 2, "{seen}");
    assert!(seen["disks"][0]["vdi_uuid"].is_string(), "{seen}");

    session.call("VM.destroy", &[new_vm]).await.unwrap();
    let gone = wait_until(Duration::from_secs(20), || {
        (!a3.vm_names().contains(&"made-after-add".to_owned())).then_some(())
    });
    assert!(gone.is_some(), "the destroyed VM stayed in the catalog");
}
