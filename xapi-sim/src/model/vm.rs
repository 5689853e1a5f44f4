//! `VM` and `VM_guest_metrics` records.

use a3_shared::xapi_wire::{Struct, Value};

use super::{map, null, record, set, str_map};
use crate::clock;

/// What kind of VM a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmKind {
    /// An ordinary guest.
    Guest,
    /// A template (`is_a_template`).
    Template,
    /// A host's dom0 (`is_control_domain`).
    ControlDomain,
}

/// A halted `VM` record with `memory` bytes of RAM and `vcpus` virtual CPUs.
pub fn vm(uuid: &str, name: &str, kind: VmKind, memory: i64, vcpus: i64) -> Struct {
    record([
        ("uuid", uuid.into()),
        ("allowed_operations", set()),
        ("current_operations", map()),
        ("name_label", name.into()),
        ("name_description", "".into()),
        ("power_state", "Halted".into()),
        ("user_version", Value::Int(1)),
        ("is_a_template", (kind == VmKind::Template).into()),
        ("is_default_template", false.into()),
        ("suspend_VDI", null()),
        ("resident_on", null()),
        ("scheduled_to_be_resident_on", null()),
        ("affinity", null()),
        ("memory_overhead", Value::Int(memory / 64)),
        ("memory_target", Value::Int(0)),
        ("memory_static_max", Value::Int(memory)),
        ("memory_dynamic_max", Value::Int(memory)),
        ("memory_dynamic_min", Value::Int(memory)),
        ("memory_static_min", Value::Int(memory.min(1 << 27))),
        ("VCPUs_params", map()),
        ("VCPUs_max", Value::Int(vcpus)),
        ("VCPUs_at_startup", Value::Int(vcpus)),
        ("actions_after_shutdown", "destroy".into()),
        ("actions_after_reboot", "restart".into()),
        ("actions_after_crash", "restart".into()),
        ("consoles", set()),
        ("VIFs", set()),
        ("VBDs", set()),
        ("VUSBs", set()),
        ("crash_dumps", set()),
        ("VTPMs", set()),
        ("PV_bootloader", "".into()),
        ("PV_kernel", "".into()),
        ("PV_ramdisk", "".into()),
        ("PV_args", "".into()),
        ("PV_bootloader_args", "".into()),
        ("PV_legacy_args", "".into()),
        ("HVM_boot_policy", "BIOS order".into()),
        ("HVM_boot_params", str_map([("order", "cdn")])),
        ("HVM_shadow_multiplier", Value::Double(1.0)),
        (
            "platform",
            str_map([
                ("timeoffset", "0"),
                ("device-model", "qemu-upstream-compat"),
                ("videoram", "8"),
                ("apic", "true"),
                ("acpi", "1"),
                ("pae", "true"),
                ("nx", "true"),
                ("viridian", "false"),
            ]),
        ),
        ("PCI_bus", "".into()),
        ("other_config", map()),
        (
            "domid",
            Value::Int(if kind == VmKind::ControlDomain { 0 } else { -1 }),
        ),
        ("domarch", "".into()),
        ("last_boot_CPU_flags", map()),
        ("is_control_domain", (kind == VmKind::ControlDomain).into()),
        ("metrics", null()),
        ("guest_metrics", null()),
        ("last_booted_record", "".into()),
        ("recommendations", "".into()),
        ("xenstore_data", map()),
        ("ha_always_run", false.into()),
        ("ha_restart_priority", "".into()),
        ("is_a_snapshot", false.into()),
        ("snapshot_of", null()),
        ("snapshots", set()),
        ("snapshot_time", Value::DateTime(clock::EPOCH.into())),
        ("transportable_snapshot_id", "".into()),
        ("blobs", map()),
        ("tags", set()),
        ("blocked_operations", map()),
        ("snapshot_info", map()),
        ("snapshot_metadata", "".into()),
        ("parent", null()),
        ("children", set()),
        ("bios_strings", map()),
        ("protection_policy", null()),
        ("is_snapshot_from_vmpp", false.into()),
        ("snapshot_schedule", null()),
        ("is_vmss_snapshot", false.into()),
        ("appliance", null()),
        ("start_delay", Value::Int(0)),
        ("shutdown_delay", Value::Int(0)),
        ("order", Value::Int(0)),
        ("VGPUs", set()),
        ("attached_PCIs", set()),
        ("suspend_SR", null()),
        ("version", Value::Int(0)),
        ("generation_id", "".into()),
        ("hardware_platform_version", Value::Int(0)),
        ("has_vendor_device", false.into()),
        ("requires_reboot", false.into()),
        ("reference_label", "".into()),
        ("domain_type", "hvm".into()),
        ("NVRAM", map()),
        ("pending_guidances", set()),
    ])
}

/// A `VM_guest_metrics` record for a running Linux guest with `ip` on its first VIF, whose
/// PV tools reported everything (an ordinary simulated guest).
pub fn guest_metrics(uuid: &str, ip: &str, now: f64) -> Struct {
    let mut rec = reported_guest_metrics(uuid, now);
    for (k, v) in [
        (
            "os_version",
            str_map([
                ("name", "Debian GNU/Linux 12 (bookworm)"),
                ("uname", "6.1.0-13-amd64"),
                ("distro", "debian"),
                ("major", "12"),
                ("minor", "2"),
            ]),
        ),
        (
            "PV_drivers_version",
            str_map([
                ("major", "8"),
                ("minor", "2"),
                ("micro", "1"),
                ("build", "1"),
            ]),
        ),
        ("PV_drivers_up_to_date", true.into()),
        ("networks", str_map([("0/ip", ip), ("0/ipv4/0", ip)])),
        (
            "other",
            str_map([("feature-balloon", "1"), ("has-vendor-device", "0")]),
        ),
        ("can_use_hotplug_vbd", "yes".into()),
        ("can_use_hotplug_vif", "yes".into()),
        ("PV_drivers_detected", true.into()),
    ] {
        rec.insert(k.into(), v);
    }
    rec
}

/// The `VM_guest_metrics` record xapi creates when a guest first reports: empty until the
/// guest's keys fill it (xapi_guest_agent.ml).
pub fn reported_guest_metrics(uuid: &str, now: f64) -> Struct {
    record([
        ("uuid", uuid.into()),
        ("os_version", map()),
        ("PV_drivers_version", map()),
        ("PV_drivers_up_to_date", false.into()),
        ("memory", map()),
        ("disks", map()),
        ("networks", map()),
        ("other", map()),
        ("last_updated", Value::DateTime(clock::xapi_datetime(now))),
        ("other_config", map()),
        ("live", true.into()),
        ("can_use_hotplug_vbd", "unspecified".into()),
        ("can_use_hotplug_vif", "unspecified".into()),
        ("PV_drivers_detected", false.into()),
    ])
}
