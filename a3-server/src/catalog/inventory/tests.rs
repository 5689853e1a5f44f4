use super::*;
use crate::catalog::Catalog;

fn host(uuid: &str, address: &str) -> HostRecord {
    HostRecord {
        uuid: uuid.into(),
        name_label: format!("host-{address}"),
        address: address.into(),
        enabled: true,
    }
}

fn pool_record() -> PoolRecord {
    PoolRecord {
        uuid: "p1".into(),
        name_label: "prod".into(),
        master: "OpaqueRef:h1".into(),
        default_sr: String::new(),
    }
}

fn vm(uuid: &str, name: &str) -> VmRecord {
    VmRecord {
        uuid: uuid.into(),
        name_label: name.into(),
        name_description: String::new(),
        power_state: "Running".into(),
        is_a_template: false,
        is_a_snapshot: false,
        is_control_domain: false,
        snapshot_of: "OpaqueRef:NULL".into(),
        resident_on: "OpaqueRef:h1".into(),
        memory_static_max: 1 << 30,
        vcpus_max: 2,
        vbds: vec![],
        vifs: vec![],
    }
}

fn catalog_with_pool() -> Catalog {
    let cat = Catalog::in_memory().unwrap();
    let pin = Fingerprint::of(b"cert-1");
    let hosts = vec![
        (
            "OpaqueRef:h1".to_string(),
            host("hu1", "127.0.0.11"),
            Some(pin),
        ),
        ("OpaqueRef:h2".to_string(), host("hu2", "127.0.0.12"), None),
    ];
    cat.record_pool(&NewPool {
        reference: "OpaqueRef:p1",
        record: &pool_record(),
        port: 4443,
        username: "root",
        hosts: &hosts,
    })
    .unwrap();
    cat
}

#[test]
fn pools_hosts_and_pins() {
    let cat = catalog_with_pool();
    let pools = cat.list_pools().unwrap();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].hosts, 2);
    assert_eq!(pools[0].master_address, "127.0.0.11");
    let hosts = cat.list_hosts().unwrap();
    assert!(hosts[0].is_master && !hosts[1].is_master);
    let ep = Endpoint::new("127.0.0.11", 4443);
    assert_eq!(cat.pin_for(&ep).unwrap(), Some(Fingerprint::of(b"cert-1")));
    assert_eq!(
        cat.pin_for(&Endpoint::new("127.0.0.11", 443)).unwrap(),
        None
    );
    assert_eq!(
        cat.pin_for(&Endpoint::new("127.0.0.12", 4443)).unwrap(),
        None
    );
    // A sync never touches pins.
    let objects = PoolObjects {
        hosts: vec![
            ("OpaqueRef:h1".into(), host("hu1", "127.0.0.11")),
            ("OpaqueRef:h2".into(), host("hu2", "127.0.0.12")),
        ],
        ..PoolObjects::default()
    };
    cat.replace_inventory("p1", &pool_record(), &objects)
        .unwrap();
    assert_eq!(cat.pin_for(&ep).unwrap(), Some(Fingerprint::of(b"cert-1")));
    assert_eq!(
        cat.find_host("127.0.0.12:4443").unwrap().unwrap().uuid,
        "hu2"
    );
    assert_eq!(cat.find_host("hu1").unwrap().unwrap().address, "127.0.0.11");
    assert!(cat.find_host("127.0.0.99").unwrap().is_none());
    assert_eq!(cat.remove_pool("p1").unwrap(), Some(2));
    assert!(cat.list_hosts().unwrap().is_empty());
    assert_eq!(cat.remove_pool("p1").unwrap(), None);
}

#[test]
fn sync_and_events_keep_vms_with_disks() {
    let cat = catalog_with_pool();
    let objects = PoolObjects {
        hosts: vec![("OpaqueRef:h1".into(), host("hu1", "127.0.0.11"))],
        vms: vec![
            ("OpaqueRef:v1".into(), vm("vu1", "web")),
            ("OpaqueRef:v2".into(), vm("vu2", "db")),
        ],
        vbds: vec![(
            "OpaqueRef:b1".into(),
            VbdRecord {
                uuid: "bu1".into(),
                vm: "OpaqueRef:v1".into(),
                vdi: "OpaqueRef:d1".into(),
                device: "xvda".into(),
                userdevice: "0".into(),
                kind: "Disk".into(),
                mode: "RW".into(),
                currently_attached: true,
            },
        )],
        vdis: vec![(
            "OpaqueRef:d1".into(),
            VdiRecord {
                uuid: "du1".into(),
                name_label: "web disk".into(),
                sr: "OpaqueRef:s1".into(),
                virtual_size: 10 << 30,
                physical_utilisation: 1 << 30,
                kind: "user".into(),
                cbt_enabled: false,
                is_a_snapshot: false,
                read_only: false,
            },
        )],
        srs: vec![(
            "OpaqueRef:s1".into(),
            SrRecord {
                uuid: "su1".into(),
                name_label: "Local storage".into(),
                kind: "ext".into(),
                content_type: "user".into(),
                shared: false,
                physical_size: 100 << 30,
                physical_utilisation: 0,
            },
        )],
        ..PoolObjects::default()
    };
    cat.replace_inventory("p1", &pool_record(), &objects)
        .unwrap();
    // The sweep removed the host the pool no longer has.
    assert_eq!(cat.list_hosts().unwrap().len(), 1);
    let vms = cat.list_vms(None).unwrap();
    assert_eq!(vms.len(), 2);
    let web = vms.iter().find(|v| v.name == "web").unwrap();
    assert_eq!(web.disks.len(), 1);
    assert_eq!(web.disks[0].sr_name.as_deref(), Some("Local storage"));
    assert_eq!(web.disks[0].virtual_size, Some(10 << 30));
    assert_eq!(web.host.as_deref(), Some("host-127.0.0.11"));

    cat.apply_changes(
        "p1",
        &[
            Change::Vm("OpaqueRef:v3".into(), vm("vu3", "new")),
            Change::Deleted {
                class: "vm".into(),
                reference: "OpaqueRef:v2".into(),
            },
        ],
    )
    .unwrap();
    let names: Vec<String> = cat
        .list_vms(Some("p1"))
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, vec!["new".to_string(), "web".to_string()]);
    assert!(cat.list_vms(Some("other")).unwrap().is_empty());
}
