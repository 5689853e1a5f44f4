//! `SR`, `PBD`, `VDI` and `VBD` records.

use a3_shared::xapi_wire::{Struct, Value};

use super::{map, null, record, set};
use crate::clock;

/// Size of a CBT block: one bit of a `list_changed_blocks` bitmap covers 64 KiB.
pub const CBT_BLOCK_SIZE: u64 = 64 * 1024;

/// An `SR` record.
pub fn sr(uuid: &str, name: &str, ty: &str, content_type: &str, shared: bool, size: i64) -> Struct {
    record([
        ("uuid", uuid.into()),
        ("name_label", name.into()),
        ("name_description", "".into()),
        ("allowed_operations", set()),
        ("current_operations", map()),
        ("VDIs", set()),
        ("PBDs", set()),
        ("virtual_allocation", Value::Int(0)),
        ("physical_utilisation", Value::Int(0)),
        ("physical_size", Value::Int(size)),
        ("type", ty.into()),
        ("content_type", content_type.into()),
        ("shared", shared.into()),
        ("other_config", map()),
        ("tags", set()),
        ("sm_config", map()),
        ("blobs", map()),
        ("local_cache_enabled", false.into()),
        ("introduced_by", null()),
        ("clustered", false.into()),
        ("is_tools_sr", false.into()),
    ])
}

/// A `PBD` record joining `host` to `sr`.
pub fn pbd(uuid: &str, host: &str, sr: &str, device_config: Value, attached: bool) -> Struct {
    record([
        ("uuid", uuid.into()),
        ("host", host.into()),
        ("SR", sr.into()),
        ("device_config", device_config),
        ("currently_attached", attached.into()),
        ("other_config", map()),
    ])
}

/// A `VDI` record of type `ty` (`user`, `system`, `cbt_metadata`, …) on `sr`.
pub fn vdi(uuid: &str, name: &str, sr: &str, virtual_size: i64, ty: &str) -> Struct {
    record([
        ("uuid", uuid.into()),
        ("name_label", name.into()),
        ("name_description", "".into()),
        ("allowed_operations", set()),
        ("current_operations", map()),
        ("SR", sr.into()),
        ("VBDs", set()),
        ("crash_dumps", set()),
        ("virtual_size", Value::Int(virtual_size)),
        ("physical_utilisation", Value::Int(0)),
        ("type", ty.into()),
        ("sharable", false.into()),
        ("read_only", false.into()),
        ("other_config", map()),
        ("storage_lock", false.into()),
        ("location", uuid.into()),
        ("managed", true.into()),
        ("missing", false.into()),
        ("parent", null()),
        ("xenstore_data", map()),
        ("sm_config", map()),
        ("is_a_snapshot", false.into()),
        ("snapshot_of", null()),
        ("snapshots", set()),
        ("snapshot_time", Value::DateTime(clock::EPOCH.into())),
        ("tags", set()),
        ("allow_caching", false.into()),
        ("on_boot", "persist".into()),
        ("metadata_of_pool", null()),
        ("metadata_latest", false.into()),
        ("is_tools_iso", false.into()),
        ("cbt_enabled", false.into()),
    ])
}

/// A detached `VBD` record.
pub fn vbd(uuid: &str, vm: &str, vdi: &str, userdevice: &str, ty: &str, mode: &str) -> Struct {
    record([
        ("uuid", uuid.into()),
        ("allowed_operations", set()),
        ("current_operations", map()),
        ("VM", vm.into()),
        ("VDI", vdi.into()),
        ("device", "".into()),
        ("userdevice", userdevice.into()),
        ("bootable", false.into()),
        ("mode", mode.into()),
        ("type", ty.into()),
        ("unpluggable", true.into()),
        ("storage_lock", false.into()),
        ("empty", false.into()),
        ("other_config", map()),
        ("currently_attached", false.into()),
        ("status_code", Value::Int(0)),
        ("status_detail", "".into()),
        ("runtime_properties", map()),
        ("qos_algorithm_type", "".into()),
        ("qos_algorithm_params", map()),
        ("qos_supported_algorithms", set()),
        ("metrics", null()),
    ])
}

/// The device name a VBD gets when plugged: `xvda` for userdevice 0, and so on.
pub fn device_name(userdevice: &str) -> String {
    match userdevice.parse::<u8>() {
        Ok(n) if n < 26 => format!("xvd{}", (b'a' + n) as char),
        _ => format!("xvd{userdevice}"),
    }
}
