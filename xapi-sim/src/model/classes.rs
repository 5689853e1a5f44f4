//! The XAPI classes the simulator serves, with the fields a client may set.
//!
//! The dispatch table generates `get_all`, `get_all_records`, `get_record`, `get_by_uuid`,
//! a getter per field, and setters and map add/remove calls from this list.

use a3_shared::xapi_wire::Struct;

use super::{host, network, storage, task, vm};

/// One class's shape.
pub struct ClassSpec {
    /// The XAPI class name, e.g. `VM`.
    pub name: &'static str,
    /// A record with every field at its default: gives getters and setter types.
    pub template: fn() -> Struct,
    /// Fields with a `set_<field>` call.
    pub settable: &'static [&'static str],
    /// Map fields with `add_to_<field>` / `remove_from_<field>` calls.
    pub maps: &'static [&'static str],
}

/// Every class served.
pub const CLASSES: &[ClassSpec] = &[
    ClassSpec {
        name: "pool",
        template: || host::pool("", "", ""),
        settable: &[
            "name_label",
            "name_description",
            "default_SR",
            "suspend_image_SR",
            "crash_dump_SR",
            "other_config",
            "tags",
        ],
        maps: &["other_config", "gui_config"],
    },
    ClassSpec {
        name: "host",
        template: || host::host("", "", "", ""),
        settable: &["name_label", "name_description", "other_config", "tags"],
        maps: &["other_config", "logging"],
    },
    ClassSpec {
        name: "host_metrics",
        template: || host::host_metrics("", 0, 0.0),
        settable: &["other_config"],
        maps: &["other_config"],
    },
    ClassSpec {
        name: "VM",
        template: || vm::vm("", "", vm::VmKind::Guest, 0, 0),
        settable: &[
            "name_label",
            "name_description",
            "is_a_template",
            "other_config",
            "xenstore_data",
            "platform",
            "HVM_boot_params",
            "HVM_boot_policy",
            "PV_args",
            "affinity",
            "tags",
            "blocked_operations",
        ],
        maps: &[
            "other_config",
            "xenstore_data",
            "platform",
            "HVM_boot_params",
            "blocked_operations",
            "VCPUs_params",
        ],
    },
    ClassSpec {
        name: "VM_guest_metrics",
        template: || vm::guest_metrics("", "", 0.0),
        settable: &["other_config"],
        maps: &["other_config"],
    },
    ClassSpec {
        name: "SR",
        template: || storage::sr("", "", "", "", false, 0),
        settable: &[
            "name_label",
            "name_description",
            "other_config",
            "sm_config",
            "tags",
        ],
        maps: &["other_config", "sm_config"],
    },
    ClassSpec {
        name: "PBD",
        template: || storage::pbd("", "", "", Struct::new().into(), false),
        settable: &["other_config", "device_config"],
        maps: &["other_config"],
    },
    ClassSpec {
        name: "VDI",
        template: || storage::vdi("", "", "", 0, "user"),
        settable: &[
            "name_label",
            "name_description",
            "other_config",
            "sm_config",
            "xenstore_data",
            "tags",
            "on_boot",
            "allow_caching",
            "read_only",
        ],
        maps: &["other_config", "sm_config", "xenstore_data"],
    },
    ClassSpec {
        name: "VBD",
        template: || storage::vbd("", "", "", "", "Disk", "RW"),
        settable: &["other_config", "bootable", "mode", "userdevice"],
        maps: &["other_config", "qos_algorithm_params"],
    },
    ClassSpec {
        name: "network",
        template: || network::network("", "", ""),
        settable: &[
            "name_label",
            "name_description",
            "other_config",
            "tags",
            "MTU",
        ],
        maps: &["other_config"],
    },
    ClassSpec {
        name: "PIF",
        template: || {
            let addr = network::PifAddress {
                ip: "",
                netmask: "",
                gateway: "",
            };
            network::pif("", "", "", "", "", &addr, false)
        },
        settable: &["other_config"],
        maps: &["other_config"],
    },
    ClassSpec {
        name: "VIF",
        template: || network::vif("", "", "", "", ""),
        settable: &["other_config"],
        maps: &["other_config", "qos_algorithm_params"],
    },
    ClassSpec {
        name: "task",
        template: || task::task("", "", "", 0.0),
        settable: &["other_config"],
        maps: &["other_config"],
    },
];

/// The canonical class name for a case-insensitive one (`vm` → `VM`), as `event.from`
/// accepts them.
pub fn canonical(name: &str) -> Option<&'static str> {
    CLASSES
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(name))
        .map(|c| c.name)
}
