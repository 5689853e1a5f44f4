//! `xapi-sim`: a simulated XCP-ng pool that speaks XAPI.
//!
//! Real XAPI clients (the Python `XenAPI` SDK, Xen Orchestra's client, the A3) cannot tell
//! it from a pool for the calls a backup product makes. See the README for the command
//! line, the control API and what is simulated.
//!
//! Who does what:
//! - [`sim`]: start/stop a pool ([`Sim::start`]), per-host listeners, saving state;
//! - [`server`]: HTTPS, HTTP routing, XML-RPC and JSON-RPC endpoints, `event.from` waits;
//! - [`api`]: the dispatch table and every XAPI method, one module per class group;
//! - [`model`]: the object database, event log and record shapes;
//! - [`errors`]: XAPI error codes and parameters;
//! - [`disks`] and [`demo`]: VDI content, snapshots, CBT, demo data;
//! - [`http_vdi`]: `/export_raw_vdi` and `/import_raw_vdi`; [`import_xva`]: `/import`;
//! - [`file_store`], [`nfs_client`], [`vhd_file`]: NFS SRs' files, over NFSv3, as VHDs;
//! - [`control`]: the `/sim/` control API for tests, and [`knobs`], the simulated-only
//!   conditions it sets;
//! - [`guest_agent`]: guest metrics from what a guest reports;
//! - [`abd`]: the backends running ABD VMs: `abd-agent` processes, or qemu guests;
//! - [`inventory`]: the pool a fresh state directory starts with;
//! - [`persist`] and [`tls`]: the state directory.
#![warn(missing_docs)]

pub mod abd;
pub mod api;
pub mod clock;
pub mod control;
pub mod demo;
pub mod disks;
pub mod errors;
pub mod faults;
pub mod file_store;
pub mod guest_agent;
pub mod http_vdi;
pub mod import_xva;
pub mod inventory;
pub mod knobs;
pub mod model;
pub mod nfs_client;
pub mod persist;
pub mod server;
pub mod sim;
pub mod state;
pub mod tls;
pub mod vhd_file;

pub use sim::{AbdBackend, HostInfo, Sim, SimConfig, SimError};
