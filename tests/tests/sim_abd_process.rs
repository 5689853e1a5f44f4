//! The simulator's process backend for ABD VMs (CONTRACTS.md C2), end to end: `xapi-sim
//! serve --abd-agent` runs each started ABD VM as an `abd-agent` process that reads its
//! boot config from the VM's `xenstore_data` over the per-VM xenstore socket, connects to a
//! real A3 from the address it was given, reports it back into the VM record, reads a
//! hot-plugged snapshot disk by device id for a backup, and stops with its VM, its
//! simulator, or a `/sim/` kill, leaving no process behind.

mod datapath_util;
mod pool_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use a3_server::xapi::Session;
use a3_shared::xapi_wire::Value;
use datapath_util::A3;
use pool_support::{Sim, wait_until_async};
use serde_json::Value as Json;

/// The enrollment file `a3-server abd enroll` writes, as `key = "value"` pairs.
fn enroll(a3: &A3, id: &str, dir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(a3.enroll(id, dir)).unwrap();
    text.lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// Where the A3 sees `id` connected from, if it is.
fn connected_from(a3: &A3, id: &str) -> Option<String> {
    let list: Json = serde_json::from_str(&a3.ok(&["abd", "list", "--json"])).unwrap();
    list.as_array()?
        .iter()
        .find(|a| a["id"] == id)
        .and_then(|a| a["connected_from"].as_str().map(str::to_owned))
}

/// Creates and starts an ABD VM whose boot config comes from `enrolled`, with `ip`.
async fn start_abd(
    s: &Session,
    name: &str,
    enrolled: &BTreeMap<String, String>,
    ip: &str,
) -> String {
    let mut data = BTreeMap::new();
    for (key, field) in [
        ("a3", "a3_address"),
        ("name", "server_name"),
        ("id", "id"),
        ("token", "token"),
        ("ca", "ca_pin"),
    ] {
        data.insert(
            format!("vm-data/abd/{key}"),
            Value::from(enrolled[field].as_str()),
        );
    }
    data.insert("vm-data/abd/ip".into(), Value::from(ip));
    data.insert("vm-data/abd/dns".into(), Value::from("127.0.0.53"));
    let mut rec = BTreeMap::new();
    rec.insert("name_label".to_owned(), Value::from(name));
    rec.insert("xenstore_data".to_owned(), Value::Struct(data));
    let vm = s.call("VM.create", &[Value::Struct(rec)]).await.unwrap();
    let vm = vm.as_str().unwrap().to_owned();
    s.call(
        "VM.start",
        &[vm.as_str().into(), false.into(), false.into()],
    )
    .await
    .unwrap();
    vm
}

async fn str_call(s: &Session, method: &str, args: &[Value]) -> String {
    let v = s.call(method, args).await.unwrap();
    v.as_str()
        .unwrap_or_else(|| panic!("{method}: {v:?}"))
        .to_owned()
}

async fn xenstore_key(s: &Session, vm: &str, key: &str) -> Option<String> {
    let data = s.call("VM.get_xenstore_data", &[vm.into()]).await.unwrap();
    data.get_str(key).map(str::to_owned)
}

/// Pids of agent processes serving VMs of the simulator in `sim_dir`.
fn agent_pids(sim_dir: &Path) -> Vec<u32> {
    let needle = format!("{}/abd/", sim_dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abd_vms_run_as_agent_processes() {
    let scratch = datapath_util::scratch();
    let pid = std::process::id();
    let static_ip = format!("127.0.3.{}", 20 + pid % 200);
    let a3 = A3::start(
        &scratch.path().join("a3"),
        &format!("127.0.1.{}:0", 60 + pid % 60),
    );
    let fixed = enroll(&a3, "abd-fixed", scratch.path());
    let leased = enroll(&a3, "abd-leased", scratch.path());
    let sim_dir = scratch.path().join("sim");
    let sim_addr = format!("127.0.2.{}", 20 + pid % 200);
    let mut sim = Sim::start(&sim_dir, &sim_addr, 1, 2, "6MiB");
    let s = sim.session().await;

    // Two ABDs: a static address from the A3's list, and DHCP from the simulator.
    let vm_fixed = start_abd(&s, "ABD fixed", &fixed, &format!("{static_ip}/24")).await;
    let vm_leased = start_abd(&s, "ABD leased", &leased, "dhcp").await;
    let from = wait_until_async(Duration::from_secs(60), || async {
        connected_from(&a3, "abd-fixed")
    })
    .await
    .expect("timed out: the static ABD connects");
    assert!(
        from.starts_with(&format!("{static_ip}:")),
        "connected from {from}"
    );
    let assigned = wait_until_async(Duration::from_secs(30), || {
        xenstore_key(&s, &vm_fixed, "vm-data/abd/assigned-ip")
    })
    .await
    .expect("timed out: assigned-ip of the static ABD");
    assert_eq!(assigned, format!("{static_ip}/24"));
    let lease = wait_until_async(Duration::from_secs(60), || {
        xenstore_key(&s, &vm_leased, "vm-data/abd/assigned-ip")
    })
    .await
    .expect("timed out: assigned-ip of the DHCP ABD");
    assert!(
        lease.starts_with("127.0.4.") && lease.ends_with("/24"),
        "{lease}"
    );
    let lease_ip = lease.trim_end_matches("/24").to_owned();
    let from = wait_until_async(Duration::from_secs(60), || async {
        connected_from(&a3, "abd-leased")
    })
    .await
    .expect("timed out: the DHCP ABD connects");
    assert!(
        from.starts_with(&format!("{lease_ip}:")),
        "connected from {from}"
    );

    // Hot-plug a snapshot of a demo VM's disk as xvdb of the static ABD: read-write, as xapi
    // refuses read-only disks in HVM guests; the agent only reads it.
    let demo = s
        .call("VM.get_by_name_label", &["demo-vm-001".into()])
        .await
        .unwrap();
    let demo_vm = demo.as_array().unwrap()[0].as_str().unwrap().to_owned();
    let demo_vbds = s
        .call("VM.get_VBDs", &[demo_vm.as_str().into()])
        .await
        .unwrap();
    let demo_vbd = demo_vbds.as_array().unwrap()[0]
        .as_str()
        .unwrap()
        .to_owned();
    let disk = str_call(&s, "VBD.get_VDI", &[demo_vbd.as_str().into()]).await;
    let snap = str_call(
        &s,
        "VDI.snapshot",
        &[disk.as_str().into(), Value::Struct(BTreeMap::new())],
    )
    .await;
    let snap_uuid = str_call(&s, "VDI.get_uuid", &[snap.as_str().into()]).await;
    let snap_vbd = |mode: &str| {
        let mut rec = BTreeMap::new();
        for (k, v) in [
            ("VM", Value::from(vm_fixed.as_str())),
            ("VDI", Value::from(snap.as_str())),
            ("userdevice", Value::from("1")),
            ("mode", Value::from(mode)),
            ("type", Value::from("Disk")),
            ("bootable", Value::Bool(false)),
            ("empty", Value::Bool(false)),
        ] {
            rec.insert(k.to_owned(), v);
        }
        Value::Struct(rec)
    };
    let ro = str_call(&s, "VBD.create", &[snap_vbd("RO")]).await;
    let refused = s.call("VBD.plug", &[ro.as_str().into()]).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("DISK_VBD_MUST_BE_READWRITE_FOR_HVM"),
        "{refused}"
    );
    s.call("VBD.destroy", &[ro.as_str().into()]).await.unwrap();
    let vbd = str_call(&s, "VBD.create", &[snap_vbd("RW")]).await;
    s.call("VBD.plug", &[vbd.as_str().into()]).await.unwrap();
    let fixed_uuid = str_call(&s, "VM.get_uuid", &[vm_fixed.as_str().into()]).await;
    let xvdb = sim.abd_dir(&fixed_uuid).join("dev/xvdb");
    wait_until_async(Duration::from_secs(30), || async {
        xvdb.exists().then_some(())
    })
    .await
    .expect("timed out: dev/xvdb appears");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&xvdb).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // Back it up by device id through the A3, restore it, and compare with the VDI.
    let version = a3.backup("abd-fixed", Path::new("xvdb"), "demo-disk", None);
    let restored = scratch.path().join("restored.img");
    let out = a3.restore("abd-fixed", &version, &restored);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = sim.vdi_data(&snap_uuid).await;
    let got = std::fs::read(&restored).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want[..],
        "the restored disk differs from the snapshot VDI"
    );

    // Restore onto a blank VDI plugged read-write as xvdc: unplug writes it back.
    let sr = str_call(&s, "VDI.get_SR", &[snap.as_str().into()]).await;
    let mut vdi_rec = BTreeMap::new();
    vdi_rec.insert("name_label".to_owned(), Value::from("restore target"));
    vdi_rec.insert("SR".to_owned(), Value::from(sr.as_str()));
    vdi_rec.insert("virtual_size".to_owned(), Value::Int(want.len() as i64));
    let blank = str_call(&s, "VDI.create", &[Value::Struct(vdi_rec)]).await;
    let blank_uuid = str_call(&s, "VDI.get_uuid", &[blank.as_str().into()]).await;
    let mut rw_rec = BTreeMap::new();
    for (k, v) in [
        ("VM", Value::from(vm_fixed.as_str())),
        ("VDI", Value::from(blank.as_str())),
        ("userdevice", Value::from("2")),
        ("mode", Value::from("RW")),
        ("type", Value::from("Disk")),
    ] {
        rw_rec.insert(k.to_owned(), v);
    }
    let rw_vbd = str_call(&s, "VBD.create", &[Value::Struct(rw_rec)]).await;
    s.call("VBD.plug", &[rw_vbd.as_str().into()]).await.unwrap();
    let xvdc = sim.abd_dir(&fixed_uuid).join("dev/xvdc");
    wait_until_async(Duration::from_secs(30), || async {
        xvdc.exists().then_some(())
    })
    .await
    .expect("timed out: dev/xvdc appears");
    let out = a3.restore("abd-fixed", &version, Path::new("xvdc"));
    assert!(
        out.status.success(),
        "restore to xvdc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Like xenopsd, the unplug returns once the guest no longer has the disk, its
    // writes back in the VDI: a disk plugged next under the same name is never the old one.
    s.call("VBD.unplug", &[rw_vbd.as_str().into()])
        .await
        .unwrap();
    assert!(!xvdc.exists(), "dev/xvdc is gone when VBD.unplug returns");
    let written = sim.vdi_data(&blank_uuid).await;
    assert!(
        written == want,
        "the VDI restored through xvdc differs from the snapshot"
    );
    s.call("VBD.destroy", &[rw_vbd.as_str().into()])
        .await
        .unwrap();

    s.call("VBD.unplug", &[vbd.as_str().into()]).await.unwrap();
    assert!(!xvdb.exists(), "dev/xvdb is gone when VBD.unplug returns");
    s.call("VBD.destroy", &[vbd.as_str().into()]).await.unwrap();

    // kill -9 behind XAPI's back: the VM restarts its agent, which reconnects.
    let killed = sim.kill_agent(&fixed_uuid).await;
    wait_until_async(Duration::from_secs(30), || async {
        let pids = agent_pids(&sim_dir);
        (!pids.contains(&killed) && pids.len() == 2).then_some(())
    })
    .await
    .expect("timed out: the killed agent is gone and another runs");
    wait_until_async(Duration::from_secs(60), || async {
        connected_from(&a3, "abd-fixed").filter(|f| f.starts_with(&format!("{static_ip}:")))
    })
    .await
    .expect("timed out: the restarted agent reconnects");

    // A simulator restart: its agents go with it, and come back with the same lease.
    drop(s);
    sim.stop();
    assert_eq!(
        agent_pids(&sim_dir),
        Vec::<u32>::new(),
        "agents outlived the simulator"
    );
    let sim = Sim::start(&sim_dir, &sim_addr, 1, 2, "6MiB");
    let s = sim.session().await;
    wait_until_async(Duration::from_secs(60), || async {
        (agent_pids(&sim_dir).len() == 2).then_some(())
    })
    .await
    .expect("timed out: both agents respawn");
    let again = wait_until_async(Duration::from_secs(60), || async {
        connected_from(&a3, "abd-leased").filter(|f| f.starts_with(&format!("{lease_ip}:")))
    })
    .await
    .expect("timed out: the DHCP ABD reconnects");
    assert!(again.starts_with("127.0.4."));

    // Shutdown stops the processes, frees the lease and removes the VM's directory.
    s.call("VM.clean_shutdown", &[vm_fixed.as_str().into()])
        .await
        .unwrap();
    s.call("VM.hard_shutdown", &[vm_leased.as_str().into()])
        .await
        .unwrap();
    wait_until_async(Duration::from_secs(30), || async {
        agent_pids(&sim_dir).is_empty().then_some(())
    })
    .await
    .expect("timed out: no agent runs after shutdown");
    wait_until_async(Duration::from_secs(10), || async {
        (!sim.abd_dir(&fixed_uuid).exists()).then_some(())
    })
    .await
    .expect("timed out: the VM directory is removed");
    wait_until_async(Duration::from_secs(30), || async {
        (connected_from(&a3, "abd-fixed").is_none() && connected_from(&a3, "abd-leased").is_none())
            .then_some(())
    })
    .await
    .expect("timed out: the A3 sees both ABDs gone");
}
