//! An ABD's boot config as the A3 writes it into the VM's `xenstore_data`
//! (`vm-data/abd/*`, CONTRACTS C2; the agent's `bootcfg` reads the same keys), and the DNS
//! servers it carries: always the A3's own.

use std::net::{IpAddr, SocketAddr};

use super::FleetError;

/// The xenstore directory of the boot config.
pub const XS_DIR: &str = "vm-data/abd";

/// The `xenstore_data` key of the enrollment token, removed once the ABD has enrolled: any
/// XAPI session, read-only roles included, can read `xenstore_data`.
pub fn token_key() -> String {
    format!("{XS_DIR}/token")
}

/// How the ABD's NIC gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// DHCP.
    Dhcp,
    /// A static address from the pool's IP list.
    Static {
        /// `addr/prefix`.
        cidr: String,
        /// The gateway.
        gateway: Option<String>,
    },
}

/// Everything an ABD needs at boot.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// Port 2811 as the ABD reaches it.
    pub a3: SocketAddr,
    /// The name the A3's certificate carries.
    pub name: String,
    /// The ABD id.
    pub id: String,
    /// The one-time enrollment token.
    pub token: String,
    /// The A3's CA pin.
    pub ca: String,
    /// Static or DHCP.
    pub addressing: Addressing,
    /// DNS servers, `ip[:port]`.
    pub dns: Vec<String>,
    /// The A3's SSH public key (OpenSSH line), the only key the ABD's SSH server accepts.
    pub sshkey: String,
}

impl BootConfig {
    /// The `xenstore_data` entries.
    pub fn xenstore_data(&self) -> Vec<(String, String)> {
        let key = |k: &str| format!("{XS_DIR}/{k}");
        let mut out = vec![
            (key("a3"), self.a3.to_string()),
            (key("name"), self.name.clone()),
            (key("id"), self.id.clone()),
            (token_key(), self.token.clone()),
            (key("ca"), self.ca.clone()),
            (key("dns"), self.dns.join(",")),
            (key("sshkey"), self.sshkey.clone()),
        ];
        match &self.addressing {
            Addressing::Dhcp => out.push((key("ip"), "dhcp".into())),
            Addressing::Static { cidr, gateway } => {
                out.push((key("ip"), cidr.clone()));
                if let Some(gw) = gateway {
                    out.push((key("gw"), gw.clone()));
                }
            }
        }
        out
    }
}

/// The A3's DNS servers: the config's list when given, else the `nameserver` lines of
/// `resolv_conf`. Loopback resolvers (systemd-resolved's 127.0.0.53) are kept: in tests
/// ABDs share the A3's loopback; on a real pool the config should name reachable servers.
pub fn dns_servers(configured: &[String], resolv_conf: &str) -> Result<Vec<String>, FleetError> {
    let list: Vec<String> = if configured.is_empty() {
        resolv_conf
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        configured.to_vec()
    };
    for s in &list {
        let ok = s.parse::<IpAddr>().is_ok() || s.parse::<SocketAddr>().is_ok();
        if !ok {
            return Err(FleetError::Dns(format!(
                "DNS server {s:?} is not ip or ip:port; fix `dns` in the config file"
            )));
        }
    }
    if list.is_empty() {
        return Err(FleetError::Dns(
            "the A3 has no DNS server: /etc/resolv.conf names none; set `dns` in the config file"
                .into(),
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_contract() {
        let cfg = BootConfig {
            a3: "127.0.1.5:2811".parse().unwrap(),
            name: "127.0.1.5".into(),
            id: "abd-1".into(),
            token: "t".into(),
            ca: "ab".repeat(32),
            addressing: Addressing::Static {
                cidr: "127.0.3.1/8".into(),
                gateway: Some("127.0.0.1".into()),
            },
            dns: vec!["127.0.0.53".into(), "10.0.0.1:5353".into()],
            sshkey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA a3".into(),
        };
        let kv = cfg.xenstore_data();
        let get = |k: &str| kv.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        assert_eq!(get("vm-data/abd/ip"), Some("127.0.3.1/8"));
        assert_eq!(get("vm-data/abd/gw"), Some("127.0.0.1"));
        assert_eq!(get("vm-data/abd/dns"), Some("127.0.0.53,10.0.0.1:5353"));
        assert_eq!(get("vm-data/abd/a3"), Some("127.0.1.5:2811"));
        assert_eq!(
            get("vm-data/abd/sshkey"),
            Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA a3")
        );
        let dhcp = BootConfig {
            addressing: Addressing::Dhcp,
            ..cfg
        };
        let kv = dhcp.xenstore_data();
        assert!(kv.contains(&("vm-data/abd/ip".into(), "dhcp".into())));
        assert!(!kv.iter().any(|(k, _)| k == "vm-data/abd/gw"));
    }

    #[test]
    fn dns_comes_from_config_or_resolv_conf() {
        let rc = "# x\nnameserver 10.1.1.1\nsearch lan\nnameserver 10.1.1.2\n";
        assert_eq!(dns_servers(&[], rc).unwrap(), ["10.1.1.1", "10.1.1.2"]);
        assert_eq!(dns_servers(&["9.9.9.9".into()], rc).unwrap(), ["9.9.9.9"]);
        assert!(dns_servers(&[], "search lan\n").is_err());
        assert!(dns_servers(&["nope".into()], rc).is_err());
    }
}
