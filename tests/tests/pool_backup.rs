//! The pool workflow end to end (issue 4): the A3 imports its ABD template into the pool,
//! backs VMs up through persistent ABDs (one per VM at once, reused, static address then
//! DHCP, the A3's DNS), incrementally through CBT, restores full and incremental versions
//! bit-exact as new VMs, and leaves nothing behind but the ABDs and the CBT metadata.

mod pool_support;

use std::time::Duration;

use pool_support::{
    A3, Sim, alike_sr, assert_nothing_left, disks_of, noise, num, objects, user_vms, vm_by_uuid,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abds_are_persistent_and_restores_are_bit_exact() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    let sim = Sim::start(&scratch.path().join("sim"), &base, 1, 3, "4MiB");
    let a3 = A3::start(&scratch.path().join("a3"), &a3_ip);
    let pool = a3.add_pool(&sim);
    alike_sr(&sim).await;

    // The template lands in the pool, hidden and tagged.
    let template = pool_support::wait_until_async(Duration::from_secs(60), || async {
        let inv = sim.inventory().await;
        objects(&inv, "VM").into_iter().find(|v| {
            v["is_a_template"] == true && v["other_config"]["abd_template_version"].is_string()
        })
    })
    .await
    .unwrap_or_else(|| panic!("no ABD template imported; see {}", a3.log_path().display()));
    assert_eq!(template["other_config"]["HideFromXenCenter"], "true");

    // The template's disk is a VHD on the A3's own export, as a client nobody here wrote
    // (libnfs's nfs-ls, through the portmapper on 111) sees it.
    let inv = sim.inventory().await;
    let sr_uuid = objects(&inv, "SR")
        .into_iter()
        .find(|sr| sr["name_label"] == "Alike_SR")
        .and_then(|sr| sr["uuid"].as_str().map(str::to_owned))
        .expect("Alike_SR in the inventory");
    let (_, template_vdi, _) = disks_of(&inv, template["uuid"].as_str().unwrap())[0].clone();
    let url = format!("nfs://{a3_ip}/alike/{sr_uuid}/");
    let out = std::process::Command::new("nfs-ls")
        .arg(&url)
        .output()
        .expect("nfs-ls (Debian libnfs-utils; cargo xtask test installs it)");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listing.contains(&format!("{template_vdi}.vhd")),
        "nfs-ls {url} should list {template_vdi}.vhd: {listing}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One static address: the first ABD takes it, the second uses DHCP.
    let static_ip = format!("127.0.3.{}", a3_ip.rsplit('.').next().unwrap());
    a3.ok(&[
        "abd",
        "ips",
        "set",
        "--pool",
        &pool,
        &format!("{static_ip}/8"),
    ]);

    let inv = sim.inventory().await;
    let vms = user_vms(&inv);
    assert_eq!(vms.len(), 3, "{vms:?}");
    for (i, (uuid, _)) in vms.iter().enumerate() {
        let (_, vdi, _) = disks_of(&inv, uuid)[0].clone();
        sim.write_vdi(&vdi, 0, noise(i as u64 + 1, 3 << 20)).await;
    }
    let names: Vec<&str> = vms.iter().map(|(_, n)| n.as_str()).collect();
    a3.backup(&names, 2)
        .unwrap_or_else(|e| panic!("backup failed: {e}\nA3 log: {}", a3.log_path().display()));

    let abds = a3.abd_vms();
    assert_eq!(
        abds.len(),
        2,
        "3 VMs at concurrency 2 make exactly 2 ABDs: {abds:?}"
    );
    for abd in &abds {
        assert_eq!(abd["state"], "idle", "{abd}");
    }
    let ips: Vec<&str> = abds.iter().map(|a| a["ip"].as_str().unwrap()).collect();
    assert!(ips.contains(&format!("{static_ip}/8").as_str()), "{ips:?}");
    assert!(ips.contains(&"dhcp"), "{ips:?}");
    let inv = sim.inventory().await;
    for abd in &abds {
        let vm = vm_by_uuid(&inv, abd["vm_uuid"].as_str().unwrap());
        assert_eq!(vm["power_state"], "Running", "ABDs stay up");
        let dns = vm["xenstore_data"]["vm-data/abd/dns"].as_str().unwrap();
        assert!(dns.contains(&format!("{a3_ip}:53")), "the A3's DNS: {dns}");
        assert_eq!(num(&vm["memory_static_max"]), 128 << 20);
        // The A3 reaches each ABD back on 22 (static and DHCP address alike), pinning the
        // host key the agent published.
        // Enrolled: the token is gone from what any XAPI session can read.
        assert!(
            vm["xenstore_data"].get("vm-data/abd/token").is_none(),
            "the token stays readable: {}",
            vm["xenstore_data"]
        );
        let hostkey = vm["xenstore_data"]["vm-data/abd/ssh-hostkey"].as_str();
        assert!(hostkey.is_some_and(|k| k.starts_with("SHA256:")), "{vm}");
        let id = abd["id"].as_str().unwrap();
        let status = a3.ok(&["abd", "ssh", id, "status"]);
        assert!(
            status.contains(&format!("ABD {id}")) && status.contains("(connected over QUIC)"),
            "{status}"
        );
    }
    assert_nothing_left(&inv);

    // A guest writes; the next run is incremental, reuses both ABDs, creates no VM.
    let (uuid0, name0) = vms[0].clone();
    let (_, vdi0, size0) = disks_of(&inv, &uuid0)[0].clone();
    let full_bytes = sim.vdi_data(&vdi0).await;
    sim.write_vdi(&vdi0, 1 << 20, noise(99, 100_000)).await;
    let vm_count = objects(&inv, "VM").len();
    a3.backup(&names, 2).unwrap();
    let inv = sim.inventory().await;
    assert_eq!(a3.abd_vms().len(), 2, "reused, none added");
    assert_eq!(objects(&inv, "VM").len(), vm_count, "no new VM");
    assert_nothing_left(&inv);
    let job_log = a3.ok(&[
        "job",
        "log",
        &a3.json(&["job", "list"])[0]["job"]["id"].to_string(),
    ]);
    assert!(job_log.contains("incremental against version"), "{job_log}");
    let incr_bytes = sim.vdi_data(&vdi0).await;

    let versions = a3.versions(&name0);
    assert_eq!(versions.len(), 2, "{versions:?}");
    for (version, want) in [(&versions[0], &full_bytes), (&versions[1], &incr_bytes)] {
        let id = version["id"].to_string();
        a3.ok(&["restore", &id])
            .contains("succeeded")
            .then_some(())
            .expect("restore reports success");
        let restored = sim.restored_vm(&name0).await.unwrap();
        let inv = sim.inventory().await;
        let orig = vm_by_uuid(&inv, &uuid0);
        assert_eq!(num(&restored["VCPUs_max"]), num(&orig["VCPUs_max"]));
        assert_eq!(
            num(&restored["memory_static_max"]),
            num(&orig["memory_static_max"])
        );
        assert_eq!(
            restored["VIFs"].as_array().unwrap().len(),
            orig["VIFs"].as_array().unwrap().len()
        );
        let rdisks = disks_of(&inv, restored["uuid"].as_str().unwrap());
        let odisks = disks_of(&inv, &uuid0);
        assert_eq!(rdisks.len(), odisks.len(), "same disks");
        for (r, o) in rdisks.iter().zip(&odisks) {
            assert_eq!((&r.0, r.2), (&o.0, o.2), "same device and size");
        }
        assert_eq!(rdisks[0].2, size0);
        let got = sim.vdi_data(&rdisks[0].1).await;
        assert!(got == *want, "version {id} restores bit-exact");
        // Remove the restored VM so the next restore is found by name.
        sim.destroy_vm(restored["uuid"].as_str().unwrap()).await;
    }
    assert_nothing_left(&sim.inventory().await);
    // Backups, restores, ABDs and the SR's template later, nothing the A3 wrote (catalog,
    // store, keys, tokens, SR files) is open to its group or others.
    let open: Vec<String> = a3_e2e::not_owner_only(&a3.state)
        .iter()
        .map(|(path, mode)| format!("{} {mode:o}", path.display()))
        .collect();
    assert!(open.is_empty(), "not owner-only: {open:?}");
}

/// A VM on a host-local SR is backed up through an ABD on that host, started there with
/// `VM.start_on`: xapi attaches a host-local VDI only to a VM on its host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_on_host_local_storage_uses_an_abd_on_its_host() {
    let scratch = tempfile::Builder::new()
        .prefix("a3-pool-local-")
        .tempdir()
        .unwrap();
    let (base, a3_ip) = pool_support::addresses();
    // demo-vm-001's disks are on the second host's local SR.
    let sim = Sim::start(&scratch.path().join("sim"), &base, 2, 2, "4MiB");
    let a3 = A3::start(&scratch.path().join("a3"), &a3_ip);
    a3.add_pool(&sim);
    alike_sr(&sim).await;
    let inv = sim.inventory().await;
    let (uuid, name) = user_vms(&inv)
        .into_iter()
        .find(|(_, n)| n == "demo-vm-001")
        .expect("demo-vm-001");
    let (_, vdi, _) = disks_of(&inv, &uuid)[0].clone();
    let vdi_rec = objects(&inv, "VDI")
        .into_iter()
        .find(|v| v["uuid"] == vdi)
        .unwrap();
    let sr = &inv["objects"]["SR"][vdi_rec["SR"].as_str().unwrap()];
    assert_eq!(sr["shared"], false, "{sr}");
    let pbd = &inv["objects"]["PBD"][sr["PBDs"][0].as_str().unwrap()];
    let disk_host = pbd["host"].as_str().unwrap().to_owned();
    assert_ne!(disk_host, inv["master"], "the disk is on the second host");

    // Its last disk is scratch space, reset at every boot: xapi refuses to snapshot it,
    // so the backup leaves it out and says so.
    let disks = disks_of(&inv, &uuid);
    assert!(disks.len() >= 2, "{disks:?}");
    let (scratch_dev, scratch_vdi, _) = disks.last().unwrap().clone();
    let s = sim.session().await;
    let scratch_ref = a3_server::xapi::ops::by_uuid(&s, "VDI", &scratch_vdi)
        .await
        .unwrap();
    s.call(
        "VDI.set_on_boot",
        &[scratch_ref.as_str().into(), "reset".into()],
    )
    .await
    .unwrap();

    a3.backup(&[&name], 1)
        .unwrap_or_else(|e| panic!("backup: {e}\nA3 log: {}", a3.log_path().display()));
    let versions = a3.versions(&name);
    let stored: Vec<&str> = versions[0]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d[0].as_str())
        .collect();
    assert_eq!(stored.len(), disks.len() - 1, "{versions:?}");
    let scratch_name = format!("xvd{}", (b'a' + scratch_dev.parse::<u8>().unwrap()) as char);
    assert!(
        !stored.contains(&scratch_name.as_str()),
        "the scratch disk {scratch_name} is left out: {stored:?}"
    );
    let job_log = a3.ok(&[
        "job",
        "log",
        &a3.json(&["job", "list"])[0]["job"]["id"].to_string(),
    ]);
    assert!(job_log.contains("reset at every boot"), "{job_log}");
    let abds = a3.abd_vms();
    assert_eq!(abds.len(), 1, "{abds:?}");
    let inv = sim.inventory().await;
    let abd_vm = vm_by_uuid(&inv, abds[0]["vm_uuid"].as_str().unwrap());
    assert_eq!(
        abd_vm["resident_on"],
        disk_host.as_str(),
        "the ABD runs on the disk's host"
    );
    assert_nothing_left(&inv);
}
