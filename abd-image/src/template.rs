//! The ABD template VM as XAPI's `ova.xml` describes it (DESIGN §3, XVA): an HVM VM with
//! 128 MiB of RAM, one vCPU, one bootable disk and one VIF, hidden from XenCenter.

use a3_shared::xapi_wire::{Struct, Value};

use crate::recipe::{MEMORY_BYTES, TEMPLATE_VERSION};

/// The export-local reference of the template's disk in the XVA: its chunks are
/// `Ref:2/%08d`.
pub const DISK_REF: &str = "Ref:2";

/// The export-local reference of the SR the disk comes from.
const SR_REF: &str = "Ref:5";
/// XAPI's null reference.
const NULL: &str = "OpaqueRef:NULL";

/// `other_config` key that hides a VM from XenCenter.
pub const HIDE_KEY: &str = "HideFromXenCenter";
/// `other_config` key carrying the template's version, so the A3 can tell when to upgrade.
pub const VERSION_KEY: &str = "abd_template_version";

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn map(pairs: &[(&str, Value)]) -> Value {
    Value::Struct(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<Struct>(),
    )
}

fn object(class: &str, id: &str, snapshot: Value) -> Value {
    map(&[("class", s(class)), ("id", s(id)), ("snapshot", snapshot)])
}

/// The `ova.xml` value of the template, whose disk is `disk_size` bytes. XAPI encodes
/// integers as strings in `ova.xml` as on the XML-RPC wire.
pub fn template_ova(disk_size: u64) -> Value {
    let mem = s(&MEMORY_BYTES.to_string());
    let empty = || Value::Struct(Struct::new());
    let vm = map(&[
        ("uuid", s("")),
        ("name_label", s("ABD template")),
        (
            "name_description",
            s("Alike Backup Delegate: the A3's block-reading appliance. Managed by the A3."),
        ),
        ("is_a_template", Value::Bool(true)),
        ("is_a_snapshot", Value::Bool(false)),
        ("power_state", s("Halted")),
        ("memory_static_max", mem.clone()),
        ("memory_static_min", mem.clone()),
        ("memory_dynamic_max", mem.clone()),
        ("memory_dynamic_min", mem),
        ("VCPUs_max", s("1")),
        ("VCPUs_at_startup", s("1")),
        ("VCPUs_params", empty()),
        ("HVM_boot_policy", s("BIOS order")),
        ("HVM_boot_params", map(&[("order", s("c"))])),
        (
            "platform",
            map(&[
                ("acpi", s("1")),
                ("apic", s("true")),
                ("pae", s("true")),
                ("nx", s("true")),
                ("viridian", s("false")),
                ("device-model", s("qemu-upstream-compat")),
            ]),
        ),
        ("PV_bootloader", s("")),
        ("PV_kernel", s("")),
        ("PV_args", s("")),
        ("actions_after_shutdown", s("destroy")),
        ("actions_after_reboot", s("restart")),
        ("actions_after_crash", s("restart")),
        (
            "other_config",
            map(&[(HIDE_KEY, s("true")), (VERSION_KEY, s(TEMPLATE_VERSION))]),
        ),
        ("xenstore_data", empty()),
        ("blocked_operations", empty()),
        ("tags", Value::Array(vec![])),
        ("VBDs", Value::Array(vec![s("Ref:1")])),
        ("VIFs", Value::Array(vec![s("Ref:3")])),
        ("user_version", s("1")),
        ("resident_on", s(NULL)),
        ("affinity", s(NULL)),
        ("PV_ramdisk", s("")),
        ("PV_bootloader_args", s("")),
        ("PV_legacy_args", s("")),
        ("PCI_bus", s("")),
        ("domid", s("-1")),
        ("domarch", s("")),
        ("is_control_domain", Value::Bool(false)),
        ("metrics", s(NULL)),
        ("guest_metrics", s(NULL)),
        ("recommendations", s("")),
        ("domain_type", s("hvm")),
    ]);
    let qos = || {
        [
            ("qos_algorithm_type", s("")),
            ("qos_algorithm_params", empty()),
            ("qos_supported_algorithms", Value::Array(vec![])),
            ("status_code", s("0")),
            ("status_detail", s("")),
            ("runtime_properties", empty()),
        ]
    };
    let vbd = map(&[
        ("uuid", s("")),
        ("VM", s("Ref:0")),
        ("VDI", s(DISK_REF)),
        ("device", s("xvda")),
        ("userdevice", s("0")),
        ("bootable", Value::Bool(true)),
        ("mode", s("RW")),
        ("type", s("Disk")),
        ("empty", Value::Bool(false)),
        ("unpluggable", Value::Bool(false)),
        ("other_config", empty()),
        ("storage_lock", Value::Bool(false)),
    ]
    .into_iter()
    .chain(qos())
    .collect::<Vec<_>>());
    let vdi = map(&[
        ("uuid", s("")),
        ("name_label", s("ABD boot disk")),
        ("name_description", s("The ABD appliance's boot disk")),
        ("virtual_size", s(&disk_size.to_string())),
        ("type", s("system")),
        ("read_only", Value::Bool(false)),
        ("sharable", Value::Bool(false)),
        ("VBDs", Value::Array(vec![s("Ref:1")])),
        ("other_config", empty()),
        ("sm_config", empty()),
        ("SR", s(SR_REF)),
        ("physical_utilisation", s(&disk_size.to_string())),
        ("storage_lock", Value::Bool(false)),
        ("managed", Value::Bool(true)),
        ("missing", Value::Bool(false)),
        ("parent", s(NULL)),
    ]);
    let vif = map(&[
        ("uuid", s("")),
        ("VM", s("Ref:0")),
        ("network", s("Ref:4")),
        ("device", s("0")),
        ("MAC", s("")),
        ("MTU", s("1500")),
        ("other_config", empty()),
    ]
    .into_iter()
    .chain(qos())
    .collect::<Vec<_>>());
    // The SR the disk was exported from; xapi's import looks it up (it must be in the
    // export) and puts the disk on the import's SR.
    let sr = map(&[
        ("uuid", s("")),
        ("name_label", s("Alike_SR")),
        ("VDIs", Value::Array(vec![s(DISK_REF)])),
        ("virtual_allocation", s(&disk_size.to_string())),
        ("physical_utilisation", s(&disk_size.to_string())),
        ("physical_size", s("0")),
        ("type", s("nfs")),
        ("content_type", s("user")),
        ("shared", Value::Bool(true)),
        ("other_config", empty()),
    ]);
    let network = map(&[
        ("uuid", s("")),
        ("name_label", s("Pool-wide network associated with eth0")),
        ("bridge", s("xenbr0")),
        ("other_config", empty()),
    ]);
    map(&[
        (
            "version",
            map(&[
                ("hostname", s("a3")),
                ("date", s("1970-01-01")),
                ("product_version", s(env!("CARGO_PKG_VERSION"))),
                ("product_brand", s("A3")),
                ("build_number", s(TEMPLATE_VERSION)),
                ("xapi_major", s("1")),
                ("xapi_minor", s("20")),
                ("export_vsn", s("2")),
            ]),
        ),
        (
            "objects",
            Value::Array(vec![
                object("VM", "Ref:0", vm),
                object("VBD", "Ref:1", vbd),
                object("VDI", DISK_REF, vdi),
                object("VIF", "Ref:3", vif),
                object("network", "Ref:4", network),
                object("SR", SR_REF, sr),
            ]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use a3_shared::xapi_wire::xmlrpc;

    #[test]
    fn template_is_a_hidden_hvm_vm_of_128_mib_and_round_trips() {
        let ova = template_ova(32 << 20);
        let back = xmlrpc::decode_value_document(xmlrpc::encode_value(&ova).as_bytes()).unwrap();
        assert_eq!(back, ova);
        let objects = ova.get("objects").unwrap().as_array().unwrap();
        let vm = objects[0].get("snapshot").unwrap();
        assert_eq!(vm.get_str("HVM_boot_policy"), Some("BIOS order"));
        assert_eq!(
            vm.get("memory_static_max").unwrap().as_i64(),
            Some(128 << 20)
        );
        let other = vm.get("other_config").unwrap();
        assert_eq!(other.get_str(HIDE_KEY), Some("true"));
        assert_eq!(other.get_str(VERSION_KEY), Some(TEMPLATE_VERSION));
        let classes: Vec<_> = objects
            .iter()
            .map(|o| o.get_str("class").unwrap())
            .collect();
        assert_eq!(classes, ["VM", "VBD", "VDI", "VIF", "network", "SR"]);
    }

    #[test]
    fn every_record_has_the_fields_xapi_import_requires() {
        let ova = template_ova(32 << 20);
        for o in ova.get("objects").unwrap().as_array().unwrap() {
            let class = o.get_str("class").unwrap();
            assert!(
                a3_shared::ova_fields::required(class).is_some(),
                "{class} has no required-fields list"
            );
            let missing = a3_shared::ova_fields::missing(class, o.get("snapshot").unwrap());
            assert_eq!(
                missing, None,
                "the template's {class} record lacks {missing:?}"
            );
        }
    }
}
