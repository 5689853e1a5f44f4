//! The pools the A3 manages and their inventory: hosts (with pinned certificates), VMs,
//! VBDs, VDIs, SRs, networks and VIFs, as XAPI last reported them.
//!
//! Objects are keyed by uuid and also carry their XAPI ref, unique within a pool, because
//! events name objects by ref. A full sync upserts every object and sweeps what the pool
//! no longer has; events upsert or delete one object at a time. Pins live in `hosts` and
//! are never overwritten by a sync: only first contact and `host trust` set them.
//! Passwords are not stored here (see `inventory::secrets`).
//!
//! - [`schema`]: the tables;
//! - `pools`: pools, hosts, their access and pinned certificates;
//! - `objects`: the objects a sync or an event writes, and the VM listing.

mod objects;
mod pools;
pub mod schema;
#[cfg(test)]
mod tests;

pub use schema::SCHEMA;

use serde::{Deserialize, Serialize};

use crate::xapi::records::{
    HostRecord, NetworkRecord, PoolRecord, SrRecord, VbdRecord, VdiRecord, VifRecord, VmRecord,
};
use crate::xapi::{Endpoint, Fingerprint};

/// Every object of one pool, as a full sync reads them: `(ref, record)` per class.
#[derive(Debug, Default)]
pub struct PoolObjects {
    /// Hosts.
    pub hosts: Vec<(String, HostRecord)>,
    /// VMs, templates, snapshots and control domains.
    pub vms: Vec<(String, VmRecord)>,
    /// VBDs.
    pub vbds: Vec<(String, VbdRecord)>,
    /// VDIs.
    pub vdis: Vec<(String, VdiRecord)>,
    /// SRs.
    pub srs: Vec<(String, SrRecord)>,
    /// Networks.
    pub networks: Vec<(String, NetworkRecord)>,
    /// VIFs.
    pub vifs: Vec<(String, VifRecord)>,
}

/// One object's change, from an event.
#[derive(Debug)]
pub enum Change {
    /// The pool record changed (its master, its name).
    Pool(PoolRecord),
    /// A host was added or changed.
    Host(String, HostRecord),
    /// A VM was added or changed.
    Vm(String, VmRecord),
    /// A VBD was added or changed.
    Vbd(String, VbdRecord),
    /// A VDI was added or changed.
    Vdi(String, VdiRecord),
    /// An SR was added or changed.
    Sr(String, SrRecord),
    /// A network was added or changed.
    Network(String, NetworkRecord),
    /// A VIF was added or changed.
    Vif(String, VifRecord),
    /// An object of `class` (lower case, as events name it) was destroyed.
    Deleted {
        /// `vm`, `vbd`, …
        class: String,
        /// Its ref.
        reference: String,
    },
}

/// A new pool as host add records it.
#[derive(Debug)]
pub struct NewPool<'a> {
    /// The pool's ref.
    pub reference: &'a str,
    /// The pool record.
    pub record: &'a PoolRecord,
    /// The XAPI port every host of the pool uses.
    pub port: u16,
    /// The XAPI user.
    pub username: &'a str,
    /// Every host, with the certificate pinned at first contact (`None` when it could not
    /// be reached yet).
    pub hosts: &'a [(String, HostRecord, Option<Fingerprint>)],
}

/// A pool as the API lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolRow {
    /// The pool's uuid.
    pub uuid: String,
    /// Its name (the master's name when the pool has none).
    pub name: String,
    /// The master host's uuid (empty when not known yet).
    pub master_uuid: String,
    /// The master's address.
    pub master_address: String,
    /// The XAPI port.
    pub port: u16,
    /// The XAPI user.
    pub username: String,
    /// How many hosts it has.
    pub hosts: u32,
    /// How many VMs it has (not counting templates, snapshots and control domains).
    pub vms: u32,
    /// When the pool was added (Unix seconds).
    pub added_at: i64,
    /// The last full inventory sync (Unix seconds).
    pub synced_at: Option<i64>,
    /// The last connection problem, empty when the A3 is in sync.
    pub status: String,
}

/// A host as the API lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostRow {
    /// The host's uuid.
    pub uuid: String,
    /// Its pool's uuid.
    pub pool_uuid: String,
    /// Its pool's name.
    pub pool_name: String,
    /// Its name.
    pub name: String,
    /// Its management address.
    pub address: String,
    /// The XAPI port.
    pub port: u16,
    /// Whether it is the pool master.
    pub is_master: bool,
    /// Whether it accepts VMs.
    pub enabled: bool,
    /// The pinned certificate fingerprint (`None` until the A3 first reaches it).
    pub cert_sha256: Option<String>,
}

impl HostRow {
    /// Where its XAPI listens.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(&self.address, self.port)
    }
}

/// A VM with its disks and network interfaces.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmRow {
    /// The VM's uuid.
    pub uuid: String,
    /// Its XAPI ref.
    pub xapi_ref: String,
    /// Its pool's uuid.
    pub pool_uuid: String,
    /// Its pool's name.
    pub pool_name: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// `Running`, `Halted`, …
    pub power_state: String,
    /// The host it runs on, when running.
    pub host: Option<String>,
    /// Static memory maximum in bytes.
    pub memory_bytes: i64,
    /// vCPUs.
    pub vcpus: i64,
    /// Its disks (VBDs of type `Disk`), by device number.
    pub disks: Vec<DiskRow>,
    /// Its network interfaces, by device number.
    pub nics: Vec<NicRow>,
}

/// One disk of a VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskRow {
    /// The VBD's device number (`0`, `1`, …).
    pub userdevice: String,
    /// `RW` or `RO`.
    pub mode: String,
    /// The VDI's uuid (`None` when the VBD's VDI is not known).
    pub vdi_uuid: Option<String>,
    /// The VDI's XAPI ref.
    pub vdi_ref: String,
    /// The VDI's name.
    pub vdi_name: Option<String>,
    /// The VDI's size in bytes.
    pub virtual_size: Option<i64>,
    /// The SR's uuid.
    pub sr_uuid: Option<String>,
    /// The SR's name.
    pub sr_name: Option<String>,
}

/// One network interface of a VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NicRow {
    /// The VIF's device number.
    pub device: String,
    /// Its MAC address.
    pub mac: String,
    /// The network's uuid.
    pub network_uuid: Option<String>,
    /// The network's name.
    pub network_name: Option<String>,
}

/// What the A3 needs to connect to a pool.
#[derive(Clone, Debug)]
pub struct PoolAccess {
    /// The pool's uuid.
    pub uuid: String,
    /// The pool's ref.
    pub reference: String,
    /// The XAPI port.
    pub port: u16,
    /// The XAPI user.
    pub username: String,
    /// The master host's ref, as last known.
    pub master_ref: String,
    /// Every known host.
    pub hosts: Vec<HostAccess>,
}

/// One host of a [`PoolAccess`].
#[derive(Clone, Debug)]
pub struct HostAccess {
    /// The host's uuid.
    pub uuid: String,
    /// Its ref.
    pub reference: String,
    /// Its address.
    pub address: String,
    /// Its pinned certificate.
    pub pin: Option<Fingerprint>,
}
