//! The appliance's boot config, from (in order of precedence) xenstore `vm-data/abd/*`, the
//! kernel command line `abd.*=`, a config disk ([`disk`]), and a config file (DESIGN.md §5).
//!
//! The first three sources give the same keys: `a3` (the A3's `ip:port`), `name` (the
//! name its certificate carries), `id`, `token`, `ca` (hex SHA-256 pin), `ip` (`dhcp` or
//! `addr/prefix`), `gw`, `dns` (comma-separated `ip[:port]`), `sshkey` (the A3's SSH public
//! key, the only one the agent's SSH server accepts: an OpenSSH line `ssh-ed25519 AAAA…
//! comment`, or `ssh-ed25519:AAAA…` since the command line splits words on spaces). A key
//! from xenstore wins over the same key on the command line, which wins over the config
//! disk.

pub mod disk;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::AgentConfig;
use crate::device;
use crate::xenbus::{self, Transport, Xenstore};

/// The environment variable carrying the simulator's DHCP lease (`addr/prefix`) to an agent
/// run as a process (xapi-sim's process backend).
pub const SIM_DHCP_ENV: &str = "ABD_SIM_DHCP";
/// Where the agent keeps its key and certificate in the appliance (tmpfs: the A3
/// re-enrolls a rebooted ABD with a fresh token).
const STATE_DIR: &str = "/run/abd/state";

/// How the NIC gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// Ask the network's DHCP server.
    Dhcp,
    /// A fixed address and prefix, with an optional default gateway.
    Static {
        /// The address.
        addr: Ipv4Addr,
        /// The prefix length.
        prefix: u8,
        /// The default gateway.
        gateway: Option<Ipv4Addr>,
    },
}

/// The network half of the boot config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Static or DHCP.
    pub addressing: Addressing,
    /// The DNS servers to use (never the network's own forwarder unless given here).
    pub dns: Vec<SocketAddr>,
}

/// Everything the appliance needs at boot.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// How to reach and trust the A3.
    pub agent: AgentConfig,
    /// How to configure the NIC and resolvers.
    pub net: NetConfig,
}

/// The `abd.*` keys of a kernel command line, without the prefix.
pub fn cmdline_keys(cmdline: &str) -> BTreeMap<String, String> {
    cmdline
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("abd."))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Merges sources, the first one winning for each key.
pub fn merge(sources: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for source in sources.iter().rev() {
        out.extend(source.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// Parses `addr/prefix` (IPv4).
pub fn parse_cidr(cidr: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (addr, prefix) = cidr
        .split_once('/')
        .context("expected dhcp or addr/prefix, e.g. 10.0.2.15/24")?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .context("the prefix must be 0..=32")?;
    let addr = addr
        .parse()
        .with_context(|| format!("{addr:?} is not an IPv4 address"))?;
    Ok((addr, prefix))
}

impl Addressing {
    /// The address an agent run as a plain process "configures" by binding it, since it
    /// leaves the host's NICs alone: the static one, or for DHCP the lease the simulator
    /// handed over in [`SIM_DHCP_ENV`]. `None`: DHCP with no lease (bind any address).
    pub fn process_address(
        &self,
        sim_lease: Option<&str>,
    ) -> anyhow::Result<Option<(Ipv4Addr, u8)>> {
        match (self, sim_lease) {
            (Addressing::Static { addr, prefix, .. }, _) => Ok(Some((*addr, *prefix))),
            (Addressing::Dhcp, Some(lease)) => parse_cidr(lease)
                .map(Some)
                .with_context(|| format!("{SIM_DHCP_ENV}={lease}")),
            (Addressing::Dhcp, None) => Ok(None),
        }
    }
}

/// Reads the boot config from its sources, first one winning per key: xenstore through
/// `xenbus` (or [`xenbus::XENBUS`] when it exists), the kernel command line `cmdline`, the
/// config disk (by its serial in `/sys/block`), then the config `file`. Returns the
/// xenstore connection too, to report the address on.
pub fn gather(
    xenbus_path: Option<&Path>,
    cmdline: &str,
    file: Option<&Path>,
) -> anyhow::Result<(BootConfig, Option<Xenstore<Transport>>)> {
    let default = Path::new(xenbus::XENBUS);
    let xenbus_path = xenbus_path.or(default.exists().then_some(default));
    let (xs_keys, xs) = match xenbus_path {
        Some(path) => {
            let mut xs = xenbus::open(path)?;
            let keys = xs.abd_keys().with_context(|| {
                format!("xenstore {}: reading {}", path.display(), xenbus::ABD_DIR)
            })?;
            (keys, Some(xs))
        }
        None => (BTreeMap::new(), None),
    };
    let disk_keys = disk::keys(Path::new(device::SYS_BLOCK), Path::new("/dev"))?;
    let file = file.map(AgentConfig::load).transpose()?;
    let boot = from_keys(&merge(&[xs_keys, cmdline_keys(cmdline), disk_keys]), file)?;
    Ok((boot, xs))
}

/// Builds the boot config from merged keys; `file` supplies the agent fields when neither
/// xenstore nor the command line named an A3.
pub fn from_keys(
    keys: &BTreeMap<String, String>,
    file: Option<AgentConfig>,
) -> anyhow::Result<BootConfig> {
    let get = |k: &str| keys.get(k).map(String::as_str);
    let mut agent = match (get("a3"), file) {
        (Some(a3), _) => {
            let a3_address: SocketAddr = a3
                .parse()
                .with_context(|| format!("abd.a3={a3}: expected ip:port, e.g. 10.0.2.2:2811"))?;
            let ca_pin = get("ca").context("abd.ca is missing: give the A3's CA pin (64 hex)")?;
            if ca_pin.len() != 64 || hex::decode(ca_pin).is_err() {
                bail!("abd.ca must be 64 hex digits (the SHA-256 of the A3's CA certificate)");
            }
            AgentConfig {
                id: get("id")
                    .context("abd.id is missing: give this ABD's id")?
                    .to_owned(),
                a3_address,
                server_name: get("name").map_or_else(|| a3_address.ip().to_string(), str::to_owned),
                ca_pin: ca_pin.to_owned(),
                token: get("token").map(str::to_owned),
                state_dir: Some(PathBuf::from(STATE_DIR)),
                bind: None,
                ssh_key: None,
                transport: Default::default(),
            }
        }
        (None, Some(file)) => file,
        (None, None) => bail!(
            "no boot config: set xenstore vm-data/abd/a3 (and ca, id, token), or abd.a3= on \
             the kernel command line, or attach a config disk with serial {}, or give --config",
            disk::SERIAL
        ),
    };
    if let Some(key) = get("sshkey") {
        crate::ssh::keys::authorized_key(key).with_context(|| format!("abd.sshkey={key}"))?;
        agent.ssh_key = Some(key.to_owned());
    }
    Ok(BootConfig {
        agent,
        net: net_from_keys(keys)?,
    })
}

fn net_from_keys(keys: &BTreeMap<String, String>) -> anyhow::Result<NetConfig> {
    let addressing = match keys.get("ip").map(String::as_str) {
        None | Some("dhcp") => Addressing::Dhcp,
        Some(cidr) => {
            let (addr, prefix) = parse_cidr(cidr).with_context(|| format!("abd.ip={cidr}"))?;
            let gateway = match keys.get("gw") {
                Some(gw) => Some(
                    gw.parse()
                        .with_context(|| format!("abd.gw={gw}: not an IPv4"))?,
                ),
                None => None,
            };
            Addressing::Static {
                addr,
                prefix,
                gateway,
            }
        }
    };
    let mut dns = Vec::new();
    for server in keys.get("dns").into_iter().flat_map(|d| d.split(',')) {
        let server = server.trim();
        let parsed = server
            .parse::<SocketAddr>()
            .or_else(|_| server.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .with_context(|| format!("abd.dns: {server:?} is not ip or ip:port"))?;
        dns.push(parsed);
    }
    Ok(NetConfig { addressing, dns })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn cmdline_gives_agent_and_static_net() {
        let cmdline = format!(
            "console=ttyS0 quiet abd.a3=10.0.2.2:2811 abd.name=a3.test abd.id=abd-1 \
             abd.token=t0k abd.ca={} abd.ip=10.0.2.15/24 abd.gw=10.0.2.2 \
             abd.dns=10.0.2.2:5353,192.0.2.1",
            &PIN[..64]
        );
        let cfg = from_keys(&cmdline_keys(&cmdline), None).unwrap();
        assert_eq!(cfg.agent.a3_address, "10.0.2.2:2811".parse().unwrap());
        assert_eq!(cfg.agent.server_name, "a3.test");
        assert_eq!(cfg.agent.id, "abd-1");
        assert_eq!(cfg.agent.token.as_deref(), Some("t0k"));
        assert_eq!(
            cfg.net.addressing,
            Addressing::Static {
                addr: "10.0.2.15".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.0.2.2".parse().unwrap()),
            }
        );
        assert_eq!(
            cfg.net.dns,
            vec![
                "10.0.2.2:5353".parse().unwrap(),
                "192.0.2.1:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn dhcp_is_the_default_and_bad_values_name_the_key() {
        let keys = cmdline_keys(&format!(
            "abd.a3=10.0.2.2:2811 abd.id=x abd.ca={}",
            &PIN[..64]
        ));
        assert_eq!(
            from_keys(&keys, None).unwrap().net.addressing,
            Addressing::Dhcp
        );
        let bad = cmdline_keys("abd.a3=10.0.2.2 abd.id=x");
        let err = format!("{:#}", from_keys(&bad, None).unwrap_err());
        assert!(err.contains("abd.a3=10.0.2.2"), "{err}");
        let err = format!(
            "{:#}",
            from_keys(&cmdline_keys("abd.ip=10.0.2.15"), None).unwrap_err()
        );
        assert!(err.contains("no boot config"), "{err}");
    }

    #[test]
    fn xenstore_wins_over_cmdline_and_file_fills_in_last() {
        let xs = cmdline_keys("abd.a3=192.0.2.9:2811 abd.ip=dhcp");
        let cmd = cmdline_keys(&format!(
            "abd.a3=10.0.2.2:2811 abd.ip=10.0.2.15/24 abd.id=abd-2 abd.ca={}",
            &PIN[..64]
        ));
        let config_disk = disk::parse("id=from-disk\ntoken=disk-token\nip=10.0.2.16/24\n");
        let cfg = from_keys(&merge(&[xs, cmd, config_disk]), None).unwrap();
        assert_eq!(cfg.agent.a3_address, "192.0.2.9:2811".parse().unwrap());
        assert_eq!(
            cfg.agent.id, "abd-2",
            "the command line wins over the config disk"
        );
        assert_eq!(
            cfg.agent.token.as_deref(),
            Some("disk-token"),
            "the disk fills in"
        );
        assert_eq!(cfg.net.addressing, Addressing::Dhcp);

        let file = AgentConfig {
            id: "from-file".into(),
            a3_address: "127.0.0.1:2811".parse().unwrap(),
            server_name: "localhost".into(),
            ca_pin: PIN[..64].into(),
            token: None,
            state_dir: None,
            bind: None,
            ssh_key: None,
            transport: Default::default(),
        };
        let cfg = from_keys(&cmdline_keys("abd.dns=10.0.2.2"), Some(file)).unwrap();
        assert_eq!(cfg.agent.id, "from-file");
        assert_eq!(cfg.net.dns, vec!["10.0.2.2:53".parse().unwrap()]);
    }

    #[test]
    fn process_address_is_the_static_one_or_the_sim_lease() {
        let fixed = Addressing::Static {
            addr: "127.0.3.7".parse().unwrap(),
            prefix: 24,
            gateway: None,
        };
        let lease = Some("127.0.4.2/24");
        assert_eq!(
            fixed.process_address(lease).unwrap(),
            Some(("127.0.3.7".parse().unwrap(), 24))
        );
        assert_eq!(
            Addressing::Dhcp.process_address(lease).unwrap(),
            Some(("127.0.4.2".parse().unwrap(), 24))
        );
        assert_eq!(Addressing::Dhcp.process_address(None).unwrap(), None);
        let err = format!(
            "{:#}",
            Addressing::Dhcp
                .process_address(Some("127.0.4.2"))
                .unwrap_err()
        );
        assert!(err.contains(SIM_DHCP_ENV), "{err}");
    }
}
