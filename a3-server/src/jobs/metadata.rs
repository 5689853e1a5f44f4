//! The VM metadata a version carries (DESIGN.md §1.7): enough to rebuild the VM, plus each
//! disk's CBT base for the next incremental.

use serde::{Deserialize, Serialize};

use crate::xapi::ops::{self, NULL_REF, Record};
use crate::xapi::{Session, XapiError};

/// A version's metadata (the `versions.metadata` JSON of a VM version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmMetadata {
    /// The pool it was taken in.
    pub pool_uuid: String,
    /// The VM's uuid.
    pub vm_uuid: String,
    /// Its name.
    pub name_label: String,
    /// Its description.
    pub name_description: String,
    /// Memory: static min/max, dynamic min/max, in bytes.
    pub memory: [i64; 4],
    /// vCPUs: max and at startup.
    pub vcpus_max: i64,
    /// vCPUs at startup.
    pub vcpus_at_startup: i64,
    /// `platform` map.
    pub platform: Vec<(String, String)>,
    /// `HVM_boot_policy`.
    pub hvm_boot_policy: String,
    /// `HVM_boot_params`.
    pub hvm_boot_params: Vec<(String, String)>,
    /// `PV_bootloader`, `PV_kernel`, `PV_ramdisk`, `PV_args`.
    pub pv: [String; 4],
    /// The disks.
    pub disks: Vec<DiskMeta>,
    /// The network interfaces.
    pub vifs: Vec<VifMeta>,
}

/// One disk of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMeta {
    /// Its name in the version (`xvda`, from the VBD's userdevice).
    pub name: String,
    /// The VBD's userdevice.
    pub userdevice: String,
    /// Bootable.
    pub bootable: bool,
    /// `RW` or `RO`.
    pub mode: String,
    /// The VDI's uuid.
    pub vdi_uuid: String,
    /// The VDI's name.
    pub vdi_name: String,
    /// The VDI's description.
    pub vdi_description: String,
    /// Its size in bytes.
    pub virtual_size: u64,
    /// The SR it was on.
    pub sr_uuid: String,
    /// The snapshot VDI kept as CBT metadata after this version: the next incremental's
    /// base.
    pub cbt_base_uuid: Option<String>,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VifMeta {
    /// The device number.
    pub device: String,
    /// The MAC.
    pub mac: String,
    /// The MTU.
    pub mtu: i64,
    /// The network's uuid.
    pub network_uuid: String,
    /// The network's name (to map onto another pool).
    pub network_name: String,
}

/// Reads the VM `vm` (record `rec`) and its disks and interfaces.
pub async fn capture(s: &Session, pool_uuid: &str, rec: &Record) -> Result<VmMetadata, XapiError> {
    let mut disks = Vec::new();
    for vbd in ops::refs(rec, "VBDs") {
        let b = ops::record(s, "VBD", &vbd).await?;
        let vdi = ops::text(&b, "VDI");
        if ops::text(&b, "type") != "Disk" || vdi == NULL_REF || vdi.is_empty() {
            continue;
        }
        let userdevice = ops::text(&b, "userdevice").to_owned();
        let Some(name) = ops::device_name(&userdevice) else {
            continue;
        };
        let d = ops::record(s, "VDI", vdi).await?;
        let sr = ops::record(s, "SR", ops::text(&d, "SR")).await?;
        disks.push(DiskMeta {
            name,
            userdevice,
            bootable: ops::flag(&b, "bootable"),
            mode: ops::text(&b, "mode").to_owned(),
            vdi_uuid: ops::text(&d, "uuid").to_owned(),
            vdi_name: ops::text(&d, "name_label").to_owned(),
            vdi_description: ops::text(&d, "name_description").to_owned(),
            virtual_size: ops::int(&d, "virtual_size") as u64,
            sr_uuid: ops::text(&sr, "uuid").to_owned(),
            cbt_base_uuid: None,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    let mut vifs = Vec::new();
    for vif in ops::refs(rec, "VIFs") {
        let v = ops::record(s, "VIF", &vif).await?;
        let n = ops::record(s, "network", ops::text(&v, "network")).await?;
        vifs.push(VifMeta {
            device: ops::text(&v, "device").to_owned(),
            mac: ops::text(&v, "MAC").to_owned(),
            mtu: ops::int(&v, "MTU"),
            network_uuid: ops::text(&n, "uuid").to_owned(),
            network_name: ops::text(&n, "name_label").to_owned(),
        });
    }
    vifs.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(VmMetadata {
        pool_uuid: pool_uuid.to_owned(),
        vm_uuid: ops::text(rec, "uuid").to_owned(),
        name_label: ops::text(rec, "name_label").to_owned(),
        name_description: ops::text(rec, "name_description").to_owned(),
        memory: [
            ops::int(rec, "memory_static_min"),
            ops::int(rec, "memory_static_max"),
            ops::int(rec, "memory_dynamic_min"),
            ops::int(rec, "memory_dynamic_max"),
        ],
        vcpus_max: ops::int(rec, "VCPUs_max"),
        vcpus_at_startup: ops::int(rec, "VCPUs_at_startup"),
        platform: ops::string_map(rec, "platform"),
        hvm_boot_policy: ops::text(rec, "HVM_boot_policy").to_owned(),
        hvm_boot_params: ops::string_map(rec, "HVM_boot_params"),
        pv: [
            ops::text(rec, "PV_bootloader").to_owned(),
            ops::text(rec, "PV_kernel").to_owned(),
            ops::text(rec, "PV_ramdisk").to_owned(),
            ops::text(rec, "PV_args").to_owned(),
        ],
        disks,
        vifs,
    })
}
