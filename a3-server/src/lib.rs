//! The A3: control plane and backup store for XCP-ng / XenServer pools.
//!
//! The modules form layers; each uses only modules of lower rows (`tests/layers.rs`
//! enforces it, and that the CLI uses only the API's wire types):
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | 1 | [`util`] | wall-clock time, the process's TLS provider |
//! | 2 | [`config`] | the TOML config file and its defaults |
//! | 3 | [`xapi`] | the XAPI client: TLS pinning, sessions, tasks, typed records, events, one typed function per call (`ops`), create records (`create`) |
//! | 4 | [`catalog`] | the SQLite catalog: pools, hosts, VMs, ABDs, jobs and their logs, versions |
//! | 5 | [`store`], [`pki`] | the deduplicating backup store; the A3's CA, ABD enrollment and revocation |
//! | 6 | [`inventory`], [`ssh`], [`dataport`] | host add, pool discovery and the inventory kept current; SSH to the ABDs; port 2811, where agents stream disks (QUIC, TLS/TCP fallback) |
//! | 7 | [`sr`] | `<state-dir>/sr/` served over NFS v3 with a portmapper, and each pool's `Alike_SR` |
//! | 8 | [`fleet`] | the ABD template in each pool, the persistent ABD VMs, the static IP lists |
//! | 9 | [`jobs`] | whole-VM backup, restore and diag runs, recovery after a crash, verify runs, pool add |
//! | 10 | [`api`] | the HTTP JSON API: handlers only, the wire types (`api::dto`), every error's status (`api::error`) |
//! | 11 | [`server`] | `a3-server serve`: builds every component once and hands each what it needs |
//! | 12 | [`cli`] | the command line; commands other than `serve` are clients of the API |
pub mod api;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod dataport;
pub mod fleet;
pub mod inventory;
pub mod jobs;
pub mod pki;
pub mod server;
pub mod sr;
pub mod ssh;
pub mod store;
pub mod util;
pub mod xapi;
