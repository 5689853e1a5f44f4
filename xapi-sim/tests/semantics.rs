//! The XAPI semantics a backup product depends on, checked against an in-process pool.

mod common;

use std::time::Duration;

use a3_shared::xapi_wire::{Response, Value};
use base64::Engine as _;
use common::{Pool, refs};

const K64: u64 = 64 * 1024;

fn vbd_record(vm: &str, vdi: &str, mode: &str) -> Value {
    [
        ("VM", Value::from(vm)),
        ("VDI", Value::from(vdi)),
        ("userdevice", Value::from("autodetect")),
        ("bootable", Value::Bool(false)),
        ("mode", Value::from(mode)),
        ("type", Value::from("Disk")),
        ("unpluggable", Value::Bool(true)),
        ("empty", Value::Bool(false)),
        ("other_config", Value::empty_struct()),
    ]
    .into_iter()
    .collect()
}

#[tokio::test]
async fn power_state_checks() {
    let p = Pool::start(2, 4).await;
    let running = p.guest_in("Running").await;
    let halted = p.guest_in("Halted").await;
    let f = |v: Value| v;
    assert_eq!(
        p.fail(
            "VM.start",
            vec![running.clone().into(), f(false.into()), false.into()]
        )
        .await,
        ["VM_BAD_POWER_STATE", &running, "halted", "running"]
    );
    assert_eq!(
        p.fail("VM.clean_shutdown", vec![halted.clone().into()])
            .await,
        ["VM_BAD_POWER_STATE", &halted, "running", "halted"]
    );
    assert_eq!(
        p.fail("VM.destroy", vec![running.clone().into()]).await,
        ["VM_BAD_POWER_STATE", &running, "halted", "running"]
    );
    assert_eq!(
        p.fail("VM.clone", vec![running.clone().into(), "c".into()])
            .await,
        ["VM_BAD_POWER_STATE", &running, "halted", "running"]
    );

    p.ok(
        "VM.start",
        vec![halted.clone().into(), false.into(), false.into()],
    )
    .await;
    let rec = p.ok("VM.get_record", vec![halted.clone().into()]).await;
    assert_eq!(rec.get_str("power_state"), Some("Running"));
    assert!(rec.get("domid").unwrap().as_i64().unwrap() > 0);
    let gm = rec.get_str("guest_metrics").unwrap().to_owned();
    let networks = p.ok("VM_guest_metrics.get_networks", vec![gm.into()]).await;
    assert!(networks.get_str("0/ip").unwrap().starts_with("10.0."));
    let host = rec.get_str("resident_on").unwrap().to_owned();
    assert!(refs(&p.ok("host.get_resident_VMs", vec![host.into()]).await).contains(&halted));
    for vbd in refs(rec.get("VBDs").unwrap()) {
        let b = p.ok("VBD.get_record", vec![vbd.into()]).await;
        assert_eq!(b.get("currently_attached"), Some(&Value::Bool(true)));
    }

    p.ok("VM.hard_shutdown", vec![halted.clone().into()]).await;
    let rec = p.ok("VM.get_record", vec![halted.clone().into()]).await;
    assert_eq!(rec.get_str("power_state"), Some("Halted"));
    assert_eq!(rec.get_str("guest_metrics"), Some("OpaqueRef:NULL"));

    let template = p
        .ok("VM.get_by_name_label", vec!["Debian Bookworm 12".into()])
        .await;
    let template = refs(&template).remove(0);
    assert_eq!(
        p.fail(
            "VM.start",
            vec![template.clone().into(), false.into(), false.into()]
        )
        .await,
        ["VM_IS_TEMPLATE", &template, "start"]
    );
}

#[tokio::test]
async fn vdi_in_use_and_cbt_metadata_cannot_be_attached() {
    let p = Pool::start(1, 4).await;
    let running = p
        .guests()
        .await
        .into_iter()
        .filter(|(_, s)| s == "Running")
        .collect::<Vec<_>>();
    let (a, b) = (running[0].0.clone(), running[1].0.clone());
    let disk = p.disk_of(&a, "0").await;
    // The running VM's own disk is attached read-write: a second writer is refused.
    let vbd = p.ok("VBD.create", vec![vbd_record(&b, &disk, "RW")]).await;
    assert_eq!(
        p.fail("VBD.plug", vec![vbd.clone()]).await,
        ["VDI_IN_USE", &disk]
    );
    p.ok("VBD.destroy", vec![vbd]).await;
    assert_eq!(
        p.fail("VDI.destroy", vec![disk.clone().into()]).await,
        ["VDI_IN_USE", &disk, "destroy"]
    );

    p.ok("VDI.enable_cbt", vec![disk.clone().into()]).await;
    assert_eq!(
        p.fail("VDI.data_destroy", vec![disk.clone().into()]).await,
        [
            "OPERATION_NOT_ALLOWED",
            &format!("VDI is not a snapshot: {disk}")
        ]
    );
    let snap = p.ok("VDI.snapshot", vec![disk.clone().into()]).await;
    p.ok("VDI.data_destroy", vec![snap.clone()]).await;
    // Idempotent, as in xapi.
    p.ok("VDI.data_destroy", vec![snap.clone()]).await;
    let snap = snap.as_str().unwrap().to_owned();
    assert_eq!(
        p.fail("VBD.create", vec![vbd_record(&b, &snap, "RO")])
            .await,
        ["VDI_INCOMPATIBLE_TYPE", &snap, "cbt_metadata"]
    );
    assert_eq!(
        p.fail("VDI.snapshot", vec![snap.clone().into()]).await,
        ["VDI_INCOMPATIBLE_TYPE", &snap, "cbt_metadata"]
    );
}

#[tokio::test]
async fn snapshots_are_point_in_time() {
    let p = Pool::start(1, 2).await;
    let vm = p.guest_in("Running").await;
    let disk = p.disk_of(&vm, "0").await;
    let before = p.read(&disk, 0, 2 * K64);
    let snap_vm = p
        .ok("VM.snapshot", vec![vm.clone().into(), "backup".into()])
        .await;
    let snap_disk = p.disk_of(snap_vm.as_str().unwrap(), "0").await;
    p.guest_write(&disk, 100, b"written after the snapshot");
    assert_eq!(p.read(&disk, 100, 26), b"written after the snapshot");
    assert_eq!(p.read(&snap_disk, 0, 2 * K64), before);
    let rec = p.ok("VDI.get_record", vec![snap_disk.clone().into()]).await;
    assert_eq!(rec.get("is_a_snapshot"), Some(&Value::Bool(true)));
    assert_eq!(rec.get_str("snapshot_of"), Some(disk.as_str()));
    // The empty CD drive is kept, not snapshotted.
    let vbds = p.ok("VM.get_VBDs", vec![snap_vm.clone()]).await;
    assert_eq!(refs(&vbds).len(), 3);

    // A snapshot VM cannot start; a disk reset at every boot has nothing to snapshot or
    // copy, but it can be cloned.
    assert_eq!(
        p.fail(
            "VM.start",
            vec![snap_vm.clone(), false.into(), false.into()]
        )
        .await,
        ["VM_IS_SNAPSHOT", snap_vm.as_str().unwrap(), "start"]
    );
    p.ok("VDI.set_on_boot", vec![disk.clone().into(), "reset".into()])
        .await;
    assert_eq!(
        p.fail(
            "VDI.snapshot",
            vec![disk.clone().into(), Value::empty_struct()]
        )
        .await,
        ["VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"]
    );
    p.ok(
        "VDI.clone",
        vec![disk.clone().into(), Value::empty_struct()],
    )
    .await;
    assert_eq!(
        p.fail("VM.snapshot", vec![vm.clone().into(), "again".into()])
            .await,
        ["VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"]
    );
    let ignored = Value::Array(vec![disk.clone().into()]);
    p.ok(
        "VM.snapshot",
        vec![vm.clone().into(), "no scratch".into(), ignored],
    )
    .await;
}

#[tokio::test]
async fn cbt_bits_match_written_blocks() {
    let p = Pool::start(1, 2).await;
    let vm = p.guest_in("Running").await;
    let disk = p.disk_of(&vm, "1").await;
    p.ok("VDI.enable_cbt", vec![disk.clone().into()]).await;
    let base = p.ok("VDI.snapshot", vec![disk.clone().into()]).await;
    for block in [1u64, 2, 20] {
        p.guest_write(&disk, block * K64 + 7, b"x");
    }
    let top = p.ok("VDI.snapshot", vec![disk.clone().into()]).await;
    let b64 = p
        .ok("VDI.list_changed_blocks", vec![base.clone(), top.clone()])
        .await;
    let bitmap = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .unwrap();
    let size = p
        .ok("VDI.get_virtual_size", vec![disk.clone().into()])
        .await
        .as_i64()
        .unwrap() as u64;
    assert_eq!(bitmap.len() as u64, size.div_ceil(K64).div_ceil(8));
    let set: Vec<u64> = (0..bitmap.len() as u64 * 8)
        .filter(|b| bitmap[(b / 8) as usize] & (0x80 >> (b % 8)) != 0)
        .collect();
    assert_eq!(set, [1, 2, 20]);

    let other = p.disk_of(&vm, "0").await;
    assert_eq!(
        p.fail(
            "VDI.list_changed_blocks",
            vec![other.clone().into(), top.clone()]
        )
        .await,
        ["VDI_NO_CBT_METADATA", &other]
    );
}

#[tokio::test]
async fn supporters_answer_host_is_slave_and_master_can_move() {
    let p = Pool::start(3, 0).await;
    let master_addr = p.sim.hosts[0].address.clone();
    let login = |i| {
        p.call_on(
            i,
            "session.login_with_password",
            vec!["root".into(), common::PASSWORD.into()],
        )
    };
    assert_eq!(
        login(1).await,
        Response::failure("HOST_IS_SLAVE", [master_addr.as_str()])
    );
    let call = p
        .call_on(2, "VM.get_all", vec![p.session.clone().into()])
        .await;
    assert_eq!(
        call,
        Response::failure("HOST_IS_SLAVE", [master_addr.as_str()])
    );

    p.ok("pool.designate_new_master", vec![p.host(1).into()])
        .await;
    let new_addr = p.sim.hosts[1].address.clone();
    assert_eq!(
        login(0).await,
        Response::failure("HOST_IS_SLAVE", [new_addr.as_str()])
    );
    assert!(matches!(login(1).await, Response::Success(_)));
    assert_eq!(p.sim.master_address(), new_addr);
}

#[tokio::test]
async fn host_down_refuses_connections_and_comes_back() {
    let p = Pool::start(2, 0).await;
    let addr = format!("{}:{}", p.sim.hosts[1].address, p.sim.port);
    tokio::net::TcpStream::connect(&addr).await.unwrap();
    let shared = p.sim.shared().clone();
    let metrics = p.ok("host.get_metrics", vec![p.host(1).into()]).await;
    let live = || p.ok("host_metrics.get_live", vec![metrics.clone()]);
    assert_eq!(live().await, Value::Bool(true));
    shared.host_down(&p.host(1)).await;
    assert!(!shared.is_up(&p.host(1)));
    assert_eq!(live().await, Value::Bool(false));
    let err = tokio::net::TcpStream::connect(&addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    shared.host_up(&p.host(1)).unwrap();
    tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert_eq!(live().await, Value::Bool(true));
}

#[tokio::test]
async fn event_from_waits_for_changes() {
    let p = Pool::start(1, 2).await;
    let vm = p.guest_in("Halted").await;
    let first = p
        .ok(
            "event.from",
            vec![vec!["VM"].into(), "".into(), Value::Double(0.0)],
        )
        .await;
    let adds = first.get("events").unwrap().as_array().unwrap();
    assert!(adds.iter().all(|e| e.get_str("operation") == Some("add")));
    assert!(adds.iter().any(|e| e.get_str("ref") == Some(vm.as_str())));
    let token = first.get_str("token").unwrap().to_owned();

    // Nothing happens: an empty batch after the timeout.
    let quiet = p
        .ok(
            "event.from",
            vec![vec!["VM"].into(), token.clone().into(), Value::Double(0.05)],
        )
        .await;
    assert!(quiet.get("events").unwrap().as_array().unwrap().is_empty());

    // A waiter is woken by a change.
    let shared = p.sim.shared().clone();
    let host = p.host(0);
    let params: Vec<Value> = vec![
        p.session.clone().into(),
        vec!["vm"].into(),
        token.clone().into(),
        Value::Double(30.0),
    ];
    let waiter =
        tokio::spawn(
            async move { xapi_sim::server::call(&shared, &host, "event.from", &params).await },
        );
    p.ok(
        "VM.set_name_label",
        vec![vm.clone().into(), "renamed".into()],
    )
    .await;
    let batch = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("event.from woke up")
        .unwrap()
        .into_result()
        .unwrap();
    let events = batch.get("events").unwrap().as_array().unwrap();
    let e = events
        .iter()
        .find(|e| e.get_str("ref") == Some(vm.as_str()))
        .unwrap();
    assert_eq!(e.get_str("operation"), Some("mod"));
    assert_eq!(e.get_str("class"), Some("vm"));
    assert_eq!(
        e.get("snapshot").unwrap().get_str("name_label"),
        Some("renamed")
    );

    // Destroying gives a del without snapshot.
    let token = batch.get_str("token").unwrap().to_owned();
    p.ok("VM.destroy", vec![vm.clone().into()]).await;
    let batch = p
        .ok(
            "event.from",
            vec![vec!["VM"].into(), token.into(), Value::Double(1.0)],
        )
        .await;
    let del = batch
        .get("events")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e.get_str("operation") == Some("del"))
        .unwrap()
        .clone();
    assert_eq!(del.get_str("ref"), Some(vm.as_str()));
    assert!(del.get("snapshot").is_none());
}

#[tokio::test]
async fn state_persists_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), 2, 2);
    let sim = xapi_sim::Sim::start(cfg.clone()).await.unwrap();
    let fingerprint = sim.hosts[0].fingerprint.clone();
    let p = common::Pool {
        session: String::new(),
        sim,
        dir: tempfile::tempdir().unwrap(),
    };
    let p = common::Pool {
        session: p.login().await,
        ..p
    };
    let vm = p.guest_in("Running").await;
    let disk = p.disk_of(&vm, "0").await;
    p.ok("VDI.enable_cbt", vec![disk.clone().into()]).await;
    let base = p.ok("VDI.snapshot", vec![disk.clone().into()]).await;
    p.ok("VM.set_name_label", vec![vm.clone().into(), "kept".into()])
        .await;
    p.guest_write(&disk, 3 * K64, b"persisted bytes");
    p.sim.shutdown().await.unwrap();

    let mut cfg2 = cfg.clone();
    cfg2.hosts = 5; // a saved pool keeps its own shape
    let sim = xapi_sim::Sim::start(cfg2).await.unwrap();
    assert_eq!(sim.hosts.len(), 2);
    assert_eq!(sim.hosts[0].fingerprint, fingerprint);
    let p = common::Pool {
        session: String::new(),
        sim,
        dir: p.dir,
    };
    let p = common::Pool {
        session: p.login().await,
        ..p
    };
    let rec = p.ok("VM.get_record", vec![vm.clone().into()]).await;
    assert_eq!(rec.get_str("name_label"), Some("kept"));
    assert_eq!(rec.get("memory_static_max"), Some(&Value::Int(1 << 30)));
    assert_eq!(p.read(&disk, 3 * K64, 15), b"persisted bytes");
    let top = p.ok("VDI.snapshot", vec![disk.clone().into()]).await;
    let b64 = p.ok("VDI.list_changed_blocks", vec![base, top]).await;
    let bitmap = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .unwrap();
    assert_eq!(bitmap[0], 0b0001_0000);
    p.sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn parameters_and_methods_follow_xapi() {
    let p = Pool::start(1, 0).await;
    for n in 2..=4 {
        let params: Vec<Value> = ["root", common::PASSWORD, "1.0", "test"][..n]
            .iter()
            .map(|s| Value::from(*s))
            .collect();
        assert!(matches!(
            p.call_on(0, "session.login_with_password", params).await,
            Response::Success(_)
        ));
    }
    assert_eq!(
        p.call_on(0, "session.login_with_password", vec!["root".into()])
            .await,
        Response::failure(
            "MESSAGE_PARAMETER_COUNT_MISMATCH",
            ["session.login_with_password", "4", "1"]
        )
    );
    assert_eq!(
        p.call_on(0, "VM.frobnicate", vec![]).await,
        Response::failure("MESSAGE_METHOD_UNKNOWN", ["VM.frobnicate"])
    );
    assert_eq!(
        p.call_on(
            0,
            "session.login_with_password",
            vec!["root".into(), "nope".into()]
        )
        .await,
        Response::failure(
            "SESSION_AUTHENTICATION_FAILED",
            ["root", "Authentication failure"]
        )
    );
    let methods = p
        .call_on(0, "system.listMethods", vec![])
        .await
        .into_result()
        .unwrap();
    let methods: Vec<&str> = methods
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in [
        "VM.get_all_records",
        "VM.get_power_state",
        "VM.set_xenstore_data",
        "VM.add_to_xenstore_data",
        "Async.VM.snapshot",
        "VDI.list_changed_blocks",
        "event.from",
        "pool.designate_new_master",
        "session.login_with_password",
    ] {
        assert!(methods.contains(&m), "{m} missing from system.listMethods");
    }
    assert!(!methods.contains(&"Async.VM.get_power_state"));

    // Async calls run inside a task whose result is XML-RPC encoded.
    let vm = p
        .ok("VM.get_by_name_label", vec!["Other install media".into()])
        .await;
    let vm = refs(&vm).remove(0);
    let task = p
        .ok("Async.VM.clone", vec![vm.into(), "from-task".into()])
        .await;
    let rec = p.ok("task.get_record", vec![task]).await;
    assert_eq!(rec.get_str("status"), Some("success"));
    let result = rec.get_str("result").unwrap();
    let new_vm = a3_shared::xapi_wire::xmlrpc::decode_value_document(result.as_bytes()).unwrap();
    let name = p.ok("VM.get_name_label", vec![new_vm]).await;
    assert_eq!(name.as_str(), Some("from-task"));
}

#[tokio::test]
async fn provision_and_xenstore_data() {
    let p = Pool::start(1, 0).await;
    let created: Value = [
        ("name_label", Value::from("made")),
        ("memory_static_max", Value::from("268435456")),
        ("VCPUs_max", Value::from("1")),
        ("is_a_template", Value::Bool(false)),
    ]
    .into_iter()
    .collect();
    let made = p.ok("VM.create", vec![created]).await;
    let rec = p.ok("VM.get_record", vec![made]).await;
    assert_eq!(rec.get("memory_static_max"), Some(&Value::Int(256 << 20)));
    assert_eq!(rec.get_str("power_state"), Some("Halted"));

    let t = refs(
        &p.ok("VM.get_by_name_label", vec!["Debian Bookworm 12".into()])
            .await,
    )
    .remove(0);
    let vm = p.ok("VM.clone", vec![t.into(), "new".into()]).await;
    p.ok("VM.provision", vec![vm.clone()]).await;
    p.ok("VM.set_is_a_template", vec![vm.clone(), false.into()])
        .await;
    let vdi = p.disk_of(vm.as_str().unwrap(), "0").await;
    let size = p.ok("VDI.get_virtual_size", vec![vdi.into()]).await;
    assert_eq!(size.as_i64(), Some(10 << 30));
    p.ok(
        "VM.add_to_xenstore_data",
        vec![vm.clone(), "vm-data/ip".into(), "127.0.3.5".into()],
    )
    .await;
    let data = p.ok("VM.get_xenstore_data", vec![vm.clone()]).await;
    assert_eq!(data.get_str("vm-data/ip"), Some("127.0.3.5"));
    let dup = p
        .fail(
            "VM.add_to_xenstore_data",
            vec![vm.clone(), "vm-data/ip".into(), "x".into()],
        )
        .await;
    assert_eq!(dup[0], "MAP_DUPLICATE_KEY");
    p.ok("VM.start", vec![vm.clone(), false.into(), false.into()])
        .await;
    assert_eq!(
        p.ok("VM.get_power_state", vec![vm]).await.as_str(),
        Some("Running")
    );
}

/// xapi_vm_lifecycle.ml `check_operation_error`: an operation in the VM's
/// `blocked_operations` is refused with `OPERATION_BLOCKED [vm, reason]` before any other
/// check; copies of the VM start unblocked (xapi_vm_clone.ml) and `VM.create` ignores the
/// field (xapi_vm.ml).
#[tokio::test]
async fn blocked_operations_are_refused_with_their_reason() {
    let p = Pool::start(1, 4).await;
    let halted = p.guest_in("Halted").await;
    let running = p.guest_in("Running").await;
    let vm = || Value::from(halted.as_str());
    let start = |v: Value| vec![v, false.into(), false.into()];
    for op in ["start", "start_on", "destroy"] {
        p.ok(
            "VM.add_to_blocked_operations",
            vec![vm(), op.into(), format!("no {op}: restoring").into()],
        )
        .await;
    }
    assert_eq!(
        p.fail("VM.start", start(vm())).await,
        ["OPERATION_BLOCKED", &halted, "no start: restoring"]
    );
    assert_eq!(
        p.fail(
            "VM.start_on",
            vec![vm(), p.host(0).into(), false.into(), false.into()]
        )
        .await,
        ["OPERATION_BLOCKED", &halted, "no start_on: restoring"]
    );
    assert_eq!(
        p.fail("VM.destroy", vec![vm()]).await,
        ["OPERATION_BLOCKED", &halted, "no destroy: restoring"]
    );
    // An `Async.` call gets its task, which holds the refusal.
    let task = p.ok("Async.VM.start", start(vm())).await;
    let rec = p.ok("task.get_record", vec![task]).await;
    assert_eq!(rec.get_str("status"), Some("failure"));
    let info: Vec<&str> = rec
        .get("error_info")
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(info, ["OPERATION_BLOCKED", &halted, "no start: restoring"]);
    assert_eq!(
        p.ok("VM.get_power_state", vec![vm()]).await.as_str(),
        Some("Halted"),
        "nothing started"
    );
    // The same key twice is refused, as for any map field.
    let dup = p
        .fail(
            "VM.add_to_blocked_operations",
            vec![vm(), "start".into(), "again".into()],
        )
        .await;
    assert_eq!(dup[0], "MAP_DUPLICATE_KEY");

    // Operations not listed run; a snapshot and a clone are not blocked themselves.
    let snap = p.ok("VM.snapshot", vec![vm(), "before".into()]).await;
    let snap_blocked = p.ok("VM.get_blocked_operations", vec![snap]).await;
    assert_eq!(snap_blocked, Value::empty_struct());
    p.ok(
        "VM.add_to_blocked_operations",
        vec![vm(), "snapshot".into(), "no snapshot".into()],
    )
    .await;
    assert_eq!(
        p.fail("VM.snapshot", vec![vm(), "again".into()]).await,
        ["OPERATION_BLOCKED", &halted, "no snapshot"]
    );

    // Removed, the operation runs again; the whole map can be replaced at once.
    for op in ["start", "start_on", "destroy", "snapshot"] {
        p.ok("VM.remove_from_blocked_operations", vec![vm(), op.into()])
            .await;
    }
    p.ok("VM.start", start(vm())).await;
    let only_shutdown: Value = [("clean_shutdown", Value::from("hold on"))]
        .into_iter()
        .collect();
    p.ok("VM.set_blocked_operations", vec![vm(), only_shutdown])
        .await;
    assert_eq!(
        p.fail("VM.clean_shutdown", vec![vm()]).await,
        ["OPERATION_BLOCKED", &halted, "hold on"]
    );
    p.ok("VM.hard_shutdown", vec![vm()]).await;

    // The block comes before the power state: a running VM blocked for start says so.
    let start_blocked: Value = [("start", Value::from("blocked"))].into_iter().collect();
    p.ok(
        "VM.set_blocked_operations",
        vec![running.clone().into(), start_blocked.clone()],
    )
    .await;
    assert_eq!(
        p.fail("VM.start", start(running.clone().into())).await,
        ["OPERATION_BLOCKED", &running, "blocked"]
    );

    // VM.create makes a VM with nothing blocked, whatever the record says.
    let created: Value = [
        ("name_label", Value::from("made")),
        ("memory_static_max", Value::from("268435456")),
        ("VCPUs_max", Value::from("1")),
        ("is_a_template", Value::Bool(false)),
        ("blocked_operations", start_blocked),
    ]
    .into_iter()
    .collect();
    let made = p.ok("VM.create", vec![created]).await;
    assert_eq!(
        p.ok("VM.get_blocked_operations", vec![made]).await,
        Value::empty_struct()
    );
}
