//! The A3: control plane and backup store for XCP-ng / XenServer pools.
//!
//! Who does what:
//! - [`config`]: the TOML config file and its defaults.
//! - [`catalog`]: the SQLite catalog (pools, hosts, VMs, ABDs, jobs, versions).
//! - [`server`]: `a3-server serve`, which starts every component and shuts them down cleanly.
//! - [`api`]: the HTTP JSON API, one handler file per resource.
//! - [`xapi`]: the XAPI client (TLS pinning, sessions, typed records, events).
//! - [`inventory`]: host add and pool discovery, the inventory kept current, failover.
//! - [`store`]: the deduplicating backup store: chunks, manifests, versions, verify, GC.
//! - [`pki`]: the A3's own CA, ABD enrollment and revocation, the port-2811 certificates.
//! - [`dataport`]: port 2811, the QUIC endpoint ABD agents stream disks through, and the
//!   data-path jobs (backup and restore of one disk).
//! - [`template`], [`fleet`], [`jobs`], [`poolops`]: the pool workflow: the ABD template
//!   in each pool, the persistent ABD VMs, whole-VM backup and restore jobs with recovery
//!   after a crash, and the XAPI calls they make.
//! - [`abdssh`]: SSH to the ABDs (the A3's key, pinned host keys, `diag` and friends).
//! - [`sr`]: the A3 SR: `<state-dir>/sr/` served over NFS v3 with a portmapper on 111, and
//!   each pool's `Alike_SR` (created once, plugged at start, unplugged at a clean shutdown).
//! - [`cli`]: the command line; commands other than `serve` are clients of the running
//!   server's API.
pub mod abdssh;
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
pub mod store;
pub mod util;
pub mod xapi;

/// Installs rustls's `ring` provider as the process default (every TLS and QUIC endpoint
/// uses it). Safe to call more than once.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
