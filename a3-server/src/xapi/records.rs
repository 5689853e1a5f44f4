//! Typed views of the XAPI records the A3 reads: the fields it uses, nothing more.
//!
//! Over XML-RPC XAPI sends ints as strings; [`Value::as_i64`] reads both forms, so these
//! parsers work for either encoding.

use a3_shared::xapi_wire::Value;

/// A record field that is missing or of the wrong type.
#[derive(Debug, thiserror::Error)]
#[error("{class} record: field {field}: {problem}")]
pub struct RecordError {
    /// The XAPI class.
    pub class: &'static str,
    /// The field.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A record type of one XAPI class.
pub trait Record: Sized {
    /// The class name as in method names (`VM`, `host`, …).
    const CLASS: &'static str;
    /// Reads the record from its struct.
    fn from_value(v: &Value) -> Result<Self, RecordError>;
}

/// Reads a `get_all_records` answer (a map from ref to record).
pub fn parse_all_records<T: Record>(all: &Value) -> Result<Vec<(String, T)>, RecordError> {
    let map = all.as_struct().ok_or_else(|| RecordError {
        class: T::CLASS,
        field: "(all records)".into(),
        problem: format!("a {}, not a map of records", all.kind()),
    })?;
    map.iter()
        .map(|(r, v)| Ok((r.clone(), T::from_value(v)?)))
        .collect()
}

/// Field access with errors naming the class and field.
struct Fields<'a> {
    class: &'static str,
    v: &'a Value,
}

impl<'a> Fields<'a> {
    fn new(class: &'static str, v: &'a Value) -> Result<Fields<'a>, RecordError> {
        if v.as_struct().is_none() {
            return Err(RecordError {
                class,
                field: "(record)".into(),
                problem: format!("a {}, not a struct", v.kind()),
            });
        }
        Ok(Fields { class, v })
    }

    fn err(&self, field: &str, problem: &str) -> RecordError {
        RecordError {
            class: self.class,
            field: field.to_owned(),
            problem: problem.to_owned(),
        }
    }

    fn get(&self, field: &str) -> Result<&'a Value, RecordError> {
        self.v.get(field).ok_or_else(|| self.err(field, "missing"))
    }

    fn string(&self, field: &str) -> Result<String, RecordError> {
        self.get(field)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.err(field, "not a string"))
    }

    /// A string field that older hosts may lack.
    fn string_or_default(&self, field: &str) -> Result<String, RecordError> {
        match self.v.get(field) {
            None => Ok(String::new()),
            Some(_) => self.string(field),
        }
    }

    fn int(&self, field: &str) -> Result<i64, RecordError> {
        self.get(field)?
            .as_i64()
            .ok_or_else(|| self.err(field, "not an int"))
    }

    fn boolean(&self, field: &str) -> Result<bool, RecordError> {
        self.get(field)?
            .as_bool()
            .ok_or_else(|| self.err(field, "not a bool"))
    }

    fn bool_or_false(&self, field: &str) -> Result<bool, RecordError> {
        match self.v.get(field) {
            None => Ok(false),
            Some(_) => self.boolean(field),
        }
    }

    fn refs(&self, field: &str) -> Result<Vec<String>, RecordError> {
        self.get(field)?
            .as_array()
            .ok_or_else(|| self.err(field, "not a set"))?
            .iter()
            .map(|r| {
                r.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.err(field, "holds a non-string"))
            })
            .collect()
    }
}

/// `pool`.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolRecord {
    /// The pool's uuid.
    pub uuid: String,
    /// Its name (often empty on a single-host pool).
    pub name_label: String,
    /// The master host's ref.
    pub master: String,
    /// The default SR's ref.
    pub default_sr: String,
}

impl Record for PoolRecord {
    const CLASS: &'static str = "pool";
    fn from_value(v: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, v)?;
        Ok(PoolRecord {
            uuid: f.string("uuid")?,
            name_label: f.string("name_label")?,
            master: f.string("master")?,
            default_sr: f.string_or_default("default_SR")?,
        })
    }
}

/// `host`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostRecord {
    /// The host's uuid.
    pub uuid: String,
    /// Its name.
    pub name_label: String,
    /// The management address (no port).
    pub address: String,
    /// Whether it accepts new VMs.
    pub enabled: bool,
}

impl Record for HostRecord {
    const CLASS: &'static str = "host";
    fn from_value(v: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, v)?;
        Ok(HostRecord {
            uuid: f.string("uuid")?,
            name_label: f.string("name_label")?,
            address: f.string("address")?,
            enabled: f.boolean("enabled")?,
        })
    }
}

/// `VM` (including templates, snapshots and control domains).
#[derive(Clone, Debug, PartialEq)]
pub struct VmRecord {
    /// The VM's uuid.
    pub uuid: String,
    /// Its name.
    pub name_label: String,
    /// Its description.
    pub name_description: String,
    /// `Halted`, `Running`, `Paused` or `Suspended`.
    pub power_state: String,
    /// A template, not a VM.
    pub is_a_template: bool,
    /// A snapshot of another VM.
    pub is_a_snapshot: bool,
    /// A host's dom0.
    pub is_control_domain: bool,
    /// For a snapshot: the VM it was taken of.
    pub snapshot_of: String,
    /// The host it runs on (`OpaqueRef:NULL` when halted).
    pub resident_on: String,
    /// Static memory maximum in bytes.
    pub memory_static_max: i64,
    /// Maximum vCPUs.
    pub vcpus_max: i64,
    /// Its VBDs.
    pub vbds: Vec<String>,
    /// Its VIFs.
    pub vifs: Vec<String>,
}

impl Record for VmRecord {
    const CLASS: &'static str = "VM";
    fn from_value(v: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, v)?;
        Ok(VmRecord {
            uuid: f.string("uuid")?,
            name_label: f.string("name_label")?,
            name_description: f.string_or_default("name_description")?,
            power_state: f.string("power_state")?,
            is_a_template: f.boolean("is_a_template")?,
            is_a_snapshot: f.bool_or_false("is_a_snapshot")?,
            is_control_domain: f.bool_or_false("is_control_domain")?,
            snapshot_of: f.string_or_default("snapshot_of")?,
            resident_on: f.string_or_default("resident_on")?,
            memory_static_max: f.int("memory_static_max")?,
            vcpus_max: f.int("VCPUs_max")?,
            vbds: f.refs("VBDs")?,
            vifs: f.refs("VIFs")?,
        })
    }
}

/// `VBD`: a VM's attachment of a VDI.
#[derive(Clone, Debug, PartialEq)]
pub struct VbdRecord {
    /// The VBD's uuid.
    pub uuid: String,
    /// The VM's ref.
    pub vm: String,
    /// The VDI's ref (`OpaqueRef:NULL` for an empty CD drive).
    pub vdi: String,
    /// The device name in the guest (`xvda`), set once plugged.
    pub device: String,
    /// The device number (`0`, `1`, …).
    pub userdevice: String,
    /// `Disk` or `CD`.
    pub kind: String,
    /// `RW` or `RO`.
    pub mode: String,
    /// Whether it is plugged now.
    pub currently_attached: bool,
}

impl Record for VbdRecord {
    const CLASS: &'static str = "VBD";
    fn from_value(v: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, v)?;
        Ok(VbdRecord {
            uuid: f.string("uuid")?,
            vm: f.string("VM")?,
            vdi: f.string("VDI")?,
            device: f.string_or_default("device")?,
            userdevice: f.string("userdevice")?,
            kind: f.string("type")?,
            mode: f.string("mode")?,
            currently_attached: f.boolean("currently_attached")?,
        })
    }
}

/// `VDI`: a virtual disk.
#[derive(Clone, Debug, PartialEq)]
pub struct VdiRecord {
    /// The VDI's uuid.
    pub uuid: String,
    /// Its name.
    pub name_label: String,
    /// The SR's ref.
    pub sr: String,
    /// Its size in bytes as the guest sees it.
    pub virtual_size: i64,
    /// Bytes it occupies on the SR.
    pub physical_utilisation: i64,
    /// `user`, `system`, `cbt_metadata`, …
    pub kind: String,
    /// Changed-block tracking is on.
    pub cbt_enabled: bool,
    /// A snapshot of another VDI.
    pub is_a_snapshot: bool,
    /// Read-only.
    pub read_only: bool,
}

impl Record for VdiRecord {
    const CLASS: &'static str = "VDI";
    fn from_value(v: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, v)?;
        Ok(VdiRecord {
            uuid: f.string("uuid")?,
            name_label: f.string("name_label")?,
            sr: f.string("SR")?,
            virtual_size: f.int("virtual_size")?,
            physical_utilisation: f.int("physical_utilisation")?,
            kind: f.string("type")?,
            cbt_enabled: f.bool_or_false("cbt_enabled")?,
            is_a_snapshot: f.bool_or_false("is_a_snapshot")?,
            read_only: f.bool_or_false("read_only")?,
        })
    }
}

/// `SR`: a storage repository.
#[derive(Clone, Debug, PartialEq)]
pub struct SrRecord {
    /// The SR's uuid.
    pub uuid: String,
    /// Its name.
    pub name_label: String,
    /// Its driver (`ext`, `lvm`, `nfs`, `iso`, …).
    pub kind: String,
    /// `user`, `iso`, `disk`, …
    pub content_type: String,
    /// Shared by all hosts of the pool.
    pub shared: bool,
    /// Capacity in bytes.
    pub physical_size: i64,
    /// Bytes used.
    pub physical_utilisation: i64,
}

impl Record for SrRecord {
    const CLASS: &'static str = "SR";
    fn from_value(v: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, v)?;
        Ok(SrRecord {
            uuid: f.string("uuid")?,
            name_label: f.string("name_label")?,
            kind: f.string("type")?,
            content_type: f.string_or_default("content_type")?,
            shared: f.boolean("shared")?,
            physical_size: f.int("physical_size")?,
            physical_utilisation: f.int("physical_utilisation")?,
        })
    }
}

/// `network`.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkRecord {
    /// The network's uuid.
    pub uuid: String,
    /// Its name.
    pub name_label: String,
    /// The bridge on each host (`xenbr0`).
    pub bridge: String,
}

impl Record for NetworkRecord {
    const CLASS: &'static str = "network";
    fn from_value(v: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, v)?;
        Ok(NetworkRecord {
            uuid: f.string("uuid")?,
            name_label: f.string("name_label")?,
            bridge: f.string_or_default("bridge")?,
        })
    }
}

/// `VIF`: a VM's network interface.
#[derive(Clone, Debug, PartialEq)]
pub struct VifRecord {
    /// The VIF's uuid.
    pub uuid: String,
    /// The VM's ref.
    pub vm: String,
    /// The network's ref.
    pub network: String,
    /// The device number (`0`, `1`, …).
    pub device: String,
    /// The MAC address.
    pub mac: String,
}

impl Record for VifRecord {
    const CLASS: &'static str = "VIF";
    fn from_value(v: &Value) -> Result<Self, RecordError> {
        let f = Fields::new(Self::CLASS, v)?;
        Ok(VifRecord {
            uuid: f.string("uuid")?,
            vm: f.string("VM")?,
            network: f.string("network")?,
            device: f.string("device")?,
            mac: f.string("MAC")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use a3_shared::xapi_wire::{Response, decode_response};

    /// A `VM.get_all_records` answer as xapi writes it: ints as bare strings.
    const VMS: &str = r#"<?xml version="1.0"?><methodResponse><params><param><value><struct>
<member><name>Status</name><value>Success</value></member>
<member><name>Value</name><value><struct><member><name>OpaqueRef:v1</name><value><struct>
<member><name>uuid</name><value>0e6b3f36-1111-2222-3333-444455556666</value></member>
<member><name>name_label</name><value>web01</value></member>
<member><name>name_description</name><value/></member>
<member><name>power_state</name><value>Running</value></member>
<member><name>is_a_template</name><value><boolean>0</boolean></value></member>
<member><name>is_a_snapshot</name><value><boolean>0</boolean></value></member>
<member><name>is_control_domain</name><value><boolean>0</boolean></value></member>
<member><name>snapshot_of</name><value>OpaqueRef:NULL</value></member>
<member><name>resident_on</name><value>OpaqueRef:h1</value></member>
<member><name>memory_static_max</name><value>2147483648</value></member>
<member><name>VCPUs_max</name><value>2</value></member>
<member><name>VBDs</name><value><array><data><value>OpaqueRef:b1</value></data></array></value></member>
<member><name>VIFs</name><value><array><data/></array></value></member>
<member><name>other_config</name><value><struct/></value></member>
</struct></value></member></struct></value></member>
</struct></value></param></params></methodResponse>"#;

    #[test]
    fn vm_records_read_from_xmlrpc() {
        let Response::Success(all) = decode_response(VMS.as_bytes()).unwrap() else {
            panic!("not a success");
        };
        let vms: Vec<(String, VmRecord)> = parse_all_records(&all).unwrap();
        assert_eq!(vms.len(), 1);
        let (r, vm) = &vms[0];
        assert_eq!(r, "OpaqueRef:v1");
        assert_eq!(vm.name_label, "web01");
        assert_eq!(vm.name_description, "");
        assert_eq!(vm.memory_static_max, 2 << 30);
        assert_eq!(vm.vcpus_max, 2);
        assert_eq!(vm.vbds, vec!["OpaqueRef:b1".to_string()]);
        assert!(vm.vifs.is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        let v: Value = [("uuid", Value::from("u")), ("name_label", Value::Int(3))]
            .into_iter()
            .collect();
        let e = NetworkRecord::from_value(&v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "network record: field name_label: not a string"
        );
        let e = HostRecord::from_value(&Value::from("x")).unwrap_err();
        assert!(e.to_string().contains("not a struct"), "{e}");
    }
}
