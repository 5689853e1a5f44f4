//! The fields an XVA's `ova.xml` record must carry for xapi to import it.
//!
//! xapi's `/import` (xen-api `ocaml/xapi/import.ml`) reads each exported object with the
//! generated `API.<class>_t_of_rpc` (`ocaml/idl/ocaml_backend/gen_api.ml`): a field missing
//! from the record takes its datamodel default, and a field without one fails the import
//! with `Failure("Field <name> not present in rpc")`. Sets of refs default to the empty set.
//!
//! The lists below are the fields with no `default` that are not sets of refs, taken from
//! xen-api's generated datamodel `doc/data/xenapi.json` (commit
//! 34624a69f0d26ca073e6eb82defe5898c2019022) for the classes an XVA of one VM holds.

use crate::xapi_wire::Value;

/// `VM` fields without a datamodel default.
pub const VM: &[&str] = &[
    "uuid",
    "user_version",
    "is_a_template",
    "resident_on",
    "affinity",
    "memory_static_max",
    "memory_dynamic_max",
    "memory_dynamic_min",
    "memory_static_min",
    "VCPUs_params",
    "VCPUs_max",
    "VCPUs_at_startup",
    "actions_after_shutdown",
    "actions_after_reboot",
    "actions_after_crash",
    "PV_bootloader",
    "PV_kernel",
    "PV_ramdisk",
    "PV_args",
    "PV_bootloader_args",
    "PV_legacy_args",
    "HVM_boot_policy",
    "HVM_boot_params",
    "platform",
    "PCI_bus",
    "other_config",
    "domid",
    "domarch",
    "is_control_domain",
    "metrics",
    "guest_metrics",
    "recommendations",
];

/// `VBD` fields without a datamodel default.
pub const VBD: &[&str] = &[
    "uuid",
    "VM",
    "VDI",
    "userdevice",
    "bootable",
    "mode",
    "type",
    "storage_lock",
    "empty",
    "other_config",
    "status_code",
    "status_detail",
    "runtime_properties",
    "qos_algorithm_type",
    "qos_algorithm_params",
    "qos_supported_algorithms",
];

/// `VDI` fields without a datamodel default.
pub const VDI: &[&str] = &[
    "uuid",
    "SR",
    "virtual_size",
    "physical_utilisation",
    "type",
    "sharable",
    "read_only",
    "other_config",
    "storage_lock",
    "managed",
    "missing",
    "parent",
];

/// `VIF` fields without a datamodel default.
pub const VIF: &[&str] = &[
    "uuid",
    "device",
    "network",
    "VM",
    "MAC",
    "MTU",
    "other_config",
    "status_code",
    "status_detail",
    "runtime_properties",
    "qos_algorithm_type",
    "qos_algorithm_params",
    "qos_supported_algorithms",
];

/// `SR` fields without a datamodel default.
pub const SR: &[&str] = &[
    "uuid",
    "virtual_allocation",
    "physical_utilisation",
    "physical_size",
    "type",
    "content_type",
    "shared",
    "other_config",
];

/// `network` fields without a datamodel default.
pub const NETWORK: &[&str] = &["uuid", "other_config"];

/// The required fields of `class`; `None` for a class not listed here.
pub fn required(class: &str) -> Option<&'static [&'static str]> {
    Some(match class {
        "VM" => VM,
        "VBD" => VBD,
        "VDI" => VDI,
        "VIF" => VIF,
        "SR" => SR,
        "network" => NETWORK,
        _ => return None,
    })
}

/// The first required field of `class` that the record lacks.
pub fn missing(class: &str, record: &Value) -> Option<&'static str> {
    required(class)?
        .iter()
        .find(|f| record.get(f).is_none())
        .copied()
}

/// The message xapi's import fails with for a missing field, as `ExnHelper.string_of_exn`
/// renders the `Failure` (carried by `IMPORT_ERROR [msg]`).
pub fn missing_message(field: &str) -> String {
    format!("INTERNAL_ERROR: [ Failure(\"Field {field} not present in rpc\") ]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xapi_wire::Struct;

    #[test]
    fn the_first_missing_field_is_named() {
        let mut rec: Struct = NETWORK
            .iter()
            .map(|f| ((*f).to_owned(), Value::from("")))
            .collect();
        assert_eq!(missing("network", &Value::Struct(rec.clone())), None);
        rec.remove("other_config");
        assert_eq!(
            missing("network", &Value::Struct(rec)),
            Some("other_config")
        );
        assert_eq!(missing("host", &Value::Struct(Struct::new())), None);
        assert_eq!(
            missing_message("user_version"),
            "INTERNAL_ERROR: [ Failure(\"Field user_version not present in rpc\") ]"
        );
    }
}
