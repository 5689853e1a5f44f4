//! The process backend (the default, `--abd-agent`): an ABD VM runs the `abd-agent` binary
//! as a process, handed its VM's xenstore and hot-plugged disks.
//!
//! - Per running ABD, the VM's directory holds `xenbus.sock` ([`super::xenstore`]), `dev/`
//!   ([`super::devices`]), `state/` (the agent's key and certificate), `agent.log` and, for
//!   DHCP, `lease`.
//! - The agent runs as `abd-agent run --xenbus DIR/xenbus.sock --dev-dir DIR/dev
//!   --state-dir DIR/state`, with `ABD_SIM_DHCP=127.0.4.x/24` when its config says
//!   `ip=dhcp`: the simulator's "DHCP server" leases 127.0.4.2..=254, one address per
//!   running ABD, freed at shutdown. The agent binds its address, so the A3 sees each ABD
//!   connect from it and can reach it back.
//! - The boot disk is not used: the process does not boot from it. Plugged disks need no
//!   more than their device files.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use tokio::process::Command;
use tokio::task::JoinHandle;

use super::devices::Device;
use super::{Ctx, Guest, SharedLeases, free_lease, signal, take_lease, xenstore};

/// The boot-config key saying how the ABD gets its address.
const IP_KEY: &str = "vm-data/abd/ip";
/// The environment variable carrying a DHCP lease to the agent.
pub const DHCP_ENV: &str = "ABD_SIM_DHCP";
/// The simulated DHCP network: 127.0.4.0/24, leases .2 to .254.
const LEASE_NET: [u8; 3] = [127, 0, 4];
const LEASE_PREFIX: u8 = 24;

fn lease_addr(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(LEASE_NET[0], LEASE_NET[1], LEASE_NET[2], octet)
}

/// An ABD run as an agent process.
pub struct Agent {
    agent: PathBuf,
    leases: SharedLeases,
    lease: Option<u8>,
    xenstore: Option<JoinHandle<()>>,
}

impl Agent {
    /// An ABD running `agent`, leasing from `leases`.
    pub fn new(agent: PathBuf, leases: SharedLeases) -> Agent {
        Agent {
            agent,
            leases,
            lease: None,
            xenstore: None,
        }
    }
}

impl Guest for Agent {
    /// Serves xenstore and takes a lease when the config asks for DHCP.
    async fn prepare(&mut self, ctx: &Ctx, _respawn: bool) -> std::io::Result<()> {
        self.xenstore = Some(xenstore::serve(
            ctx.shared.clone(),
            ctx.vm.clone(),
            &ctx.dir.join("xenbus.sock"),
        )?);
        let ip = ctx
            .xenstore_data()
            .into_iter()
            .find_map(|(k, v)| (k == IP_KEY).then_some(v));
        if ip.is_none_or(|ip| ip == "dhcp") {
            let lease =
                take_lease(&self.leases, &ctx.dir.join("lease"), |_| true)?.ok_or_else(|| {
                    std::io::Error::other("the simulated DHCP pool 127.0.4.0/24 is exhausted")
                })?;
            self.lease = Some(lease);
        }
        Ok(())
    }

    fn command(&self, ctx: &Ctx) -> std::io::Result<Command> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ctx.dir.join("agent.log"))?;
        let mut cmd = Command::new(&self.agent);
        cmd.arg("run")
            .arg("--xenbus")
            .arg(ctx.dir.join("xenbus.sock"))
            .arg("--dev-dir")
            .arg(ctx.dev_dir())
            .arg("--state-dir")
            .arg(ctx.dir.join("state"))
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(octet) = self.lease {
            cmd.env(DHCP_ENV, format!("{}/{LEASE_PREFIX}", lease_addr(octet)));
        }
        Ok(cmd)
    }

    /// The agent finds the device files by itself.
    async fn started(&mut self, _ctx: &Ctx, _plugged: Vec<Device>) {}

    async fn attach(&mut self, _ctx: &Ctx, _dev: &Device) -> std::io::Result<()> {
        Ok(())
    }

    async fn detach(&mut self, _ctx: &Ctx, _dev: &Device) {}

    async fn request_stop(&mut self, _ctx: &Ctx, pid: u32) {
        signal(pid, libc::SIGTERM);
    }

    async fn release(&mut self, _ctx: &Ctx, for_good: bool) {
        if let Some(x) = self.xenstore.take() {
            x.abort();
        }
        if for_good && let Some(octet) = self.lease.take() {
            free_lease(&self.leases, octet);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_in_the_simulated_dhcp_network() {
        assert_eq!(lease_addr(7), Ipv4Addr::new(127, 0, 4, 7));
    }
}
