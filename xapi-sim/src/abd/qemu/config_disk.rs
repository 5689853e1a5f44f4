//! The config disk of a qemu ABD: the VM's `vm-data/abd/*` keys as `key=value` lines on a
//! small raw disk with serial [`SERIAL`] (the agent's `bootcfg::disk` reads it), rewritten
//! for qemu's user network, where the guest reaches the host only at [`GATEWAY`], qemu's
//! alias for the host's 127.0.0.1:
//! - `a3` and `dns` entries on 127.0.0.1 move to 10.0.2.2, same port;
//! - other loopback `dns` entries are dropped (nothing else on the host is reachable), and
//!   an `a3` on another loopback address is kept, with a warning: the ABD will not connect;
//! - a static loopback `ip` (the test lists 127.0.3.x) becomes `dhcp` and its `gw` goes:
//!   qemu's DHCP gives the guest 10.0.2.15;
//! - `assigned-ip` (the guest's report, [`super::console`]) is not config.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The serial the agent finds the disk by.
pub const SERIAL: &str = "abd-config";
/// The disk's size: the keys, NUL-padded.
pub const SIZE: usize = 64 << 10;
/// The host's 127.0.0.1 as a qemu user-network guest reaches it.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The boot-config keys' xenstore directory.
const PREFIX: &str = "vm-data/abd/";

/// The disk's text from the VM's `xenstore_data`, and warnings about what the guest cannot
/// reach.
pub fn contents(data: &[(String, String)]) -> (String, Vec<String>) {
    let mut warnings = Vec::new();
    let mut keys: BTreeMap<&str, String> = data
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(PREFIX)?, v)))
        .filter(|(k, _)| !k.contains('/') && *k != "assigned-ip")
        .filter(|(k, v)| {
            let one_line = !v.contains('\n');
            if !one_line {
                warnings.push(format!("{PREFIX}{k} spans lines; left off the config disk"));
            }
            one_line
        })
        .map(|(k, v)| (k, v.clone()))
        .collect();
    if let Some(a3) = keys.get_mut("a3") {
        match a3.parse::<SocketAddr>() {
            Ok(addr) if addr.ip() == Ipv4Addr::LOCALHOST => {
                *a3 = SocketAddr::new(GATEWAY.into(), addr.port()).to_string();
            }
            Ok(addr) if addr.ip().is_loopback() => warnings.push(format!(
                "a3={addr}: a qemu guest reaches only the host's 127.0.0.1 (as {GATEWAY}); \
                 run the A3's data port on 127.0.0.1"
            )),
            _ => {}
        }
    }
    if let Some(dns) = keys.get_mut("dns") {
        let mut kept = Vec::new();
        for server in dns.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (ip, port) = match server.parse::<SocketAddr>() {
                Ok(a) => (a.ip(), Some(a.port())),
                Err(_) => match server.parse::<IpAddr>() {
                    Ok(ip) => (ip, None),
                    Err(_) => {
                        kept.push(server.to_owned());
                        continue;
                    }
                },
            };
            if ip == Ipv4Addr::LOCALHOST {
                kept.push(match port {
                    Some(p) => format!("{GATEWAY}:{p}"),
                    None => GATEWAY.to_string(),
                });
            } else if ip.is_loopback() {
                warnings.push(format!(
                    "dns {server}: unreachable from a qemu guest (only 127.0.0.1 is); dropped"
                ));
            } else {
                kept.push(server.to_owned());
            }
        }
        *dns = kept.join(",");
    }
    let loopback_ip = keys
        .get("ip")
        .and_then(|ip| ip.split('/').next()?.parse::<Ipv4Addr>().ok())
        .is_some_and(|ip| ip.is_loopback());
    if loopback_ip {
        keys.insert("ip", "dhcp".into());
        keys.remove("gw");
    }
    let text = keys.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    (text, warnings)
}

/// The disk image: the text, NUL-padded to [`SIZE`].
pub fn image(text: &str) -> std::io::Result<Vec<u8>> {
    if text.len() >= SIZE {
        return Err(std::io::Error::other(format!(
            "the boot config is {} bytes; the config disk holds {SIZE}",
            text.len()
        )));
    }
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(SIZE, 0);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn loopback_addresses_move_to_the_gateway_or_go() {
        let mut d = data(&[
            ("a3", "127.0.0.1:40123"),
            ("name", "127.0.0.1"),
            ("id", "abd-1"),
            ("token", "t0k"),
            ("dns", "127.0.0.1:5353,127.0.0.53,192.0.2.1,127.0.0.1"),
            ("ip", "127.0.3.4/8"),
            ("gw", "127.0.0.1"),
            ("assigned-ip", "127.0.5.2/24"),
            ("sshkey", "ssh-ed25519 AAAA a3"),
        ]);
        d.push(("vm-data/other".into(), "x".into()));
        let (text, warnings) = contents(&d);
        assert_eq!(
            text,
            "a3=10.0.2.2:40123\ndns=10.0.2.2:5353,192.0.2.1,10.0.2.2\nid=abd-1\nip=dhcp\n\
             name=127.0.0.1\nsshkey=ssh-ed25519 AAAA a3\ntoken=t0k\n"
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("127.0.0.53"), "{warnings:?}");
    }

    #[test]
    fn other_addresses_stay_and_unreachable_a3s_are_named() {
        let (text, warnings) = contents(&data(&[
            ("a3", "127.1.2.3:2811"),
            ("ip", "10.0.2.20/24"),
            ("gw", "10.0.2.2"),
            ("note", "two\nlines"),
        ]));
        assert_eq!(text, "a3=127.1.2.3:2811\ngw=10.0.2.2\nip=10.0.2.20/24\n");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("127.1.2.3")));
    }

    #[test]
    fn the_image_is_nul_padded() {
        let img = image("a3=10.0.2.2:1\n").unwrap();
        assert_eq!(img.len(), SIZE);
        assert!(img.starts_with(b"a3=10.0.2.2:1\n\0"));
        assert!(image(&"x".repeat(SIZE)).is_err());
    }
}
