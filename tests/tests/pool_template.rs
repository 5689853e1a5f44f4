//! A newer ABD template: an A3 restarted with an XVA of a newer version imports it into
//! the pool, removes the older template, and replaces the idle ABDs built from the old one
//! at the next job, so every ABD runs what the A3 carries.

mod pool_support;

use std::time::Duration;

use pool_support::{A3, Sim, alike_sr, assert_nothing_left, objects, user_vms};
use serde_json::Value as Json;

/// The pool's ABD templates, by their version tag.
fn templates(inv: &Json) -> Vec<String> {
    objects(inv, "VM")
        .into_iter()
        .filter(|v| v["is_a_template"] == true)
        .filter_map(|v| {
            v["other_config"]["abd_template_version"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_template_replaces_the_old_one_and_its_abds() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-template-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 1, "4MiB");
    let state = scratch.path().join("a3");
    let a3 = A3::start(&state, &a3_ip);
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let name = user_vms(&sim.inventory().await)[0].1.clone();
    a3.backup(&[&name], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    let old = abd_image::recipe::TEMPLATE_VERSION;
    assert_eq!(templates(&sim.inventory().await), vec![old.to_owned()]);
    let abds = a3.abd_vms();
    assert_eq!(abds.len(), 1);
    assert_eq!(abds[0]["template_version"], old);
    let old_abd = abds[0]["id"].as_str().unwrap().to_owned();

    // The A3 comes back carrying a newer template.
    let mut a3 = a3;
    assert!(
        a3.child
            .terminate(Duration::from_secs(90))
            .is_some_and(|s| s.success())
    );
    drop(a3);
    pool_support::template_xva_version(&A3::template_path(&state), "abd-test-newer");
    let a3 = A3::start(&state, &a3_ip);
    let swapped = pool_support::wait_until_async(Duration::from_secs(60), || async {
        let t = templates(&sim.inventory().await);
        (t == ["abd-test-newer"]).then_some(())
    })
    .await;
    assert!(
        swapped.is_some(),
        "the pool holds only the newer template: {:?}; see {}",
        templates(&sim.inventory().await),
        a3.log_path().display()
    );

    // The next job retires the idle ABD of the old template and runs on a new one.
    a3.backup(&[&name], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    let abds = a3.abd_vms();
    assert_eq!(abds.len(), 1, "the old ABD is gone: {abds:?}");
    assert_eq!(abds[0]["template_version"], "abd-test-newer");
    assert_ne!(abds[0]["id"], old_abd.as_str());
    let inv = sim.inventory().await;
    assert!(
        !objects(&inv, "VM")
            .iter()
            .any(|v| v["other_config"]["a3_abd"] == old_abd.as_str()),
        "the old ABD's VM is destroyed"
    );
    assert_eq!(a3.versions(&name).len(), 2);
    assert_nothing_left(&inv);
}
