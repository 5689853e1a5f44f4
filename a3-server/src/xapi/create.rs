//! Records for `VM.create`, `VDI.create`, `VBD.create` and `VIF.create`: each spec names
//! what the workflow chooses and fills the other fields xapi requires with their usual
//! values, so that every object of a class is made the same way.

use a3_shared::xapi_wire::{Struct, Value};

use super::ops::{NULL_REF, map_value};
use super::{Session, XapiError};

fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Struct(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Struct>(),
    )
}

async fn create(s: &Session, method: &str, rec: Value) -> Result<String, XapiError> {
    let v = s.call(method, &[rec]).await?;
    super::ops::returns_ref(s, method, v)
}

/// A new HVM or PV VM, from a version's metadata.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    /// Its name.
    pub name_label: String,
    /// Its description.
    pub name_description: String,
    /// static_min, static_max, dynamic_min, dynamic_max (bytes).
    pub memory: [i64; 4],
    /// `VCPUs_max`.
    pub vcpus_max: i64,
    /// `VCPUs_at_startup`.
    pub vcpus_at_startup: i64,
    /// `PV_bootloader`, `PV_kernel`, `PV_ramdisk`, `PV_args`.
    pub pv: [String; 4],
    /// `HVM_boot_policy` ("" for PV).
    pub hvm_boot_policy: String,
    /// `HVM_boot_params`.
    pub hvm_boot_params: Vec<(String, String)>,
    /// `platform`.
    pub platform: Vec<(String, String)>,
    /// `other_config`.
    pub other_config: Vec<(String, String)>,
}

impl VmSpec {
    /// `VM.create`: the new VM's ref.
    pub async fn create(&self, s: &Session) -> Result<String, XapiError> {
        let m = |x: i64| Value::from(x.to_string());
        let rec = record(vec![
            ("name_label", Value::from(&self.name_label)),
            ("name_description", Value::from(&self.name_description)),
            ("user_version", Value::from("1")),
            ("is_a_template", Value::Bool(false)),
            ("affinity", Value::from(NULL_REF)),
            ("memory_static_min", m(self.memory[0])),
            ("memory_static_max", m(self.memory[1])),
            ("memory_dynamic_min", m(self.memory[2])),
            ("memory_dynamic_max", m(self.memory[3])),
            ("memory_target", m(self.memory[3])),
            ("VCPUs_max", m(self.vcpus_max)),
            ("VCPUs_at_startup", m(self.vcpus_at_startup)),
            ("VCPUs_params", Value::empty_struct()),
            ("actions_after_shutdown", Value::from("destroy")),
            ("actions_after_reboot", Value::from("restart")),
            ("actions_after_crash", Value::from("restart")),
            ("PV_bootloader", Value::from(&self.pv[0])),
            ("PV_kernel", Value::from(&self.pv[1])),
            ("PV_ramdisk", Value::from(&self.pv[2])),
            ("PV_args", Value::from(&self.pv[3])),
            ("PV_bootloader_args", Value::from("")),
            ("PV_legacy_args", Value::from("")),
            ("HVM_boot_policy", Value::from(&self.hvm_boot_policy)),
            ("HVM_boot_params", map_value(&self.hvm_boot_params)),
            ("platform", map_value(&self.platform)),
            ("PCI_bus", Value::from("")),
            ("other_config", map_value(&self.other_config)),
            ("recommendations", Value::from("")),
        ]);
        create(s, "VM.create", rec).await
    }
}

/// A new user VDI.
#[derive(Debug, Clone, Default)]
pub struct VdiSpec {
    /// Its name.
    pub name_label: String,
    /// Its description.
    pub name_description: String,
    /// The SR's ref.
    pub sr: String,
    /// Its size in bytes.
    pub virtual_size: u64,
    /// `other_config` (the run's tag).
    pub other_config: Vec<(String, String)>,
}

impl VdiSpec {
    /// `VDI.create`: the new VDI's ref.
    pub async fn create(&self, s: &Session) -> Result<String, XapiError> {
        let rec = record(vec![
            ("name_label", Value::from(&self.name_label)),
            ("name_description", Value::from(&self.name_description)),
            ("SR", Value::from(&self.sr)),
            ("virtual_size", Value::from(self.virtual_size.to_string())),
            ("type", Value::from("user")),
            ("sharable", Value::Bool(false)),
            ("read_only", Value::Bool(false)),
            ("other_config", map_value(&self.other_config)),
            ("xenstore_data", Value::empty_struct()),
            ("sm_config", Value::empty_struct()),
            ("tags", Value::Array(vec![])),
        ]);
        create(s, "VDI.create", rec).await
    }
}

/// How a disk VBD is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VbdMode {
    /// `RO`.
    ReadOnly,
    /// `RW`.
    ReadWrite,
}

impl VbdMode {
    /// XAPI's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            VbdMode::ReadOnly => "RO",
            VbdMode::ReadWrite => "RW",
        }
    }

    /// The mode of XAPI's name (`RW` unless `RO`).
    pub fn parse(mode: &str) -> VbdMode {
        if mode == "RO" {
            VbdMode::ReadOnly
        } else {
            VbdMode::ReadWrite
        }
    }
}

/// A new disk VBD.
#[derive(Debug, Clone)]
pub struct VbdSpec {
    /// The VM's ref.
    pub vm: String,
    /// The VDI's ref.
    pub vdi: String,
    /// The slot (`0`, `1`, …).
    pub userdevice: String,
    /// Whether the VM boots from it.
    pub bootable: bool,
    /// RO or RW.
    pub mode: VbdMode,
    /// Whether it may be hot-unplugged.
    pub unpluggable: bool,
    /// `other_config` (the run's tag).
    pub other_config: Vec<(String, String)>,
}

impl VbdSpec {
    /// `VBD.create`: the new VBD's ref.
    pub async fn create(&self, s: &Session) -> Result<String, XapiError> {
        let rec = record(vec![
            ("VM", Value::from(&self.vm)),
            ("VDI", Value::from(&self.vdi)),
            ("userdevice", Value::from(&self.userdevice)),
            ("bootable", Value::Bool(self.bootable)),
            ("mode", Value::from(self.mode.as_str())),
            ("type", Value::from("Disk")),
            ("empty", Value::Bool(false)),
            ("unpluggable", Value::Bool(self.unpluggable)),
            ("other_config", map_value(&self.other_config)),
            ("qos_algorithm_type", Value::from("")),
            ("qos_algorithm_params", Value::empty_struct()),
        ]);
        create(s, "VBD.create", rec).await
    }
}

/// A new VIF with a MAC of xapi's choosing.
#[derive(Debug, Clone)]
pub struct VifSpec {
    /// The VM's ref.
    pub vm: String,
    /// The network's ref.
    pub network: String,
    /// The device number (`0`, `1`, …).
    pub device: String,
    /// The MTU.
    pub mtu: i64,
}

impl VifSpec {
    /// `VIF.create`: the new VIF's ref.
    pub async fn create(&self, s: &Session) -> Result<String, XapiError> {
        let rec = record(vec![
            ("VM", Value::from(&self.vm)),
            ("network", Value::from(&self.network)),
            ("device", Value::from(&self.device)),
            ("MAC", Value::from("")),
            ("MTU", Value::from(self.mtu.to_string())),
            ("other_config", Value::empty_struct()),
            ("qos_algorithm_type", Value::from("")),
            ("qos_algorithm_params", Value::empty_struct()),
        ]);
        create(s, "VIF.create", rec).await
    }
}
