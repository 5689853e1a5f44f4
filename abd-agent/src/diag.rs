//! `abd-agent diag`: the appliance's self-checks (DESIGN.md §5), each pass, warn or fail
//! with a remedy, printed as a table or JSON. The appliance also runs them once at boot and
//! prints them on its console.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use a3_shared::proto::transport;
use anyhow::Context;
use serde::Serialize;

use crate::bootcfg::{Addressing, BootConfig};
use crate::identity::Identity;
use crate::net::dns;
use crate::{conn, device, tls};

/// How long each network probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Per disk: read at most this much, for at most [`READ_TIME`].
const READ_BYTES: u64 = 64 << 20;
const READ_TIME: Duration = Duration::from_secs(3);
/// Below this a disk is slow enough to make backups crawl.
const SLOW_MB_S: f64 = 20.0;
/// The agent's working budget in the 128 MiB appliance.
const MEMORY_BUDGET_KIB: u64 = 48 << 10;

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Pass,
    /// Works partly, or is not needed for backups.
    Warn,
    /// Broken: backups will fail until fixed.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub check: String,
    /// Its outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when it passes).
    pub remedy: String,
}

fn check(name: &str, status: Status, detail: String, remedy: &str) -> Check {
    Check {
        check: name.to_owned(),
        status,
        detail,
        remedy: if status == Status::Pass {
            String::new()
        } else {
            remedy.to_owned()
        },
    }
}

/// Runs every check. `disks` are the devices to time; empty means every visible disk.
/// `ssh` is where the agent's SSH server listens, when this process runs it.
pub async fn run(cfg: &BootConfig, disks: &[PathBuf], ssh: Option<SocketAddr>) -> Vec<Check> {
    let mut out = address_checks(cfg);
    out.push(dns_check(cfg).await);
    out.push(quic_check(cfg).await);
    out.push(tcp_check(cfg).await);
    out.push(reverse_path_check(cfg, ssh).await);
    let visible = visible_disks();
    out.push(disks_check(&visible));
    let timed: Vec<PathBuf> = if disks.is_empty() {
        visible.iter().map(|(path, _)| path.clone()).collect()
    } else {
        disks.to_vec()
    };
    for disk in timed {
        let c = tokio::task::spawn_blocking(move || throughput_check(&disk)).await;
        out.push(c.unwrap_or_else(|e| check("disk read", Status::Fail, e.to_string(), "")));
    }
    out.push(memory_check());
    out
}

/// The NIC's IPv4 address and the default gateway, compared with the boot config. An agent
/// run as a process (the simulator's) leaves the host's NICs and routes alone: its address
/// is the one it binds.
fn address_checks(cfg: &BootConfig) -> Vec<Check> {
    if let Some(bound) = cfg.agent.bind {
        return vec![check(
            "ip",
            Status::Pass,
            format!(
                "{} bound by this agent process (the host's interfaces are not its own)",
                bound.ip()
            ),
            "",
        )];
    }
    let addrs = interface_addresses();
    let gateway = default_gateway();
    let mut out = Vec::new();
    let ip = match &cfg.net.addressing {
        Addressing::Static { addr, prefix, .. } => {
            if addrs.iter().any(|(_, a)| a == addr) {
                check("ip", Status::Pass, format!("{addr}/{prefix} (static)"), "")
            } else {
                check(
                    "ip",
                    Status::Fail,
                    format!(
                        "{addr}/{prefix} is configured but not on any interface (found {addrs:?})"
                    ),
                    "see the boot log for the netlink error; check ip= in the boot config",
                )
            }
        }
        Addressing::Dhcp => match addrs.first() {
            Some((nic, a)) => check("ip", Status::Pass, format!("{a} on {nic} (DHCP lease)"), ""),
            None => check(
                "ip",
                Status::Fail,
                "no IPv4 address: no DHCP lease".into(),
                "check that a DHCP server serves this network, or set a static ip= (the A3's \
                 IP list for this pool)",
            ),
        },
    };
    out.push(ip);
    let wanted = match &cfg.net.addressing {
        Addressing::Static { gateway, .. } => *gateway,
        Addressing::Dhcp => None,
    };
    out.push(match (gateway, wanted) {
        (Some(gw), Some(want)) if gw != want => check(
            "gateway",
            Status::Fail,
            format!("default route via {gw}, but the boot config says gw={want}"),
            "fix gw= in the boot config",
        ),
        (Some(gw), _) => check(
            "gateway",
            Status::Pass,
            format!("default route via {gw}"),
            "",
        ),
        (None, _) if on_link(cfg) => check(
            "gateway",
            Status::Pass,
            "no default route; the A3 is on the local subnet".into(),
            "",
        ),
        (None, _) => check(
            "gateway",
            Status::Fail,
            "no default route, and the A3 is not on the local subnet".into(),
            "set gw= in the boot config (or a router in the DHCP scope)",
        ),
    });
    out
}

/// Whether the A3's address is inside the static subnet.
fn on_link(cfg: &BootConfig) -> bool {
    let (Addressing::Static { addr, prefix, .. }, SocketAddr::V4(a3)) =
        (&cfg.net.addressing, cfg.agent.a3_address)
    else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
    u32::from(*addr) & mask == u32::from(*a3.ip()) & mask
}

/// Non-loopback IPv4 addresses by interface.
pub fn interface_addresses() -> Vec<(String, Ipv4Addr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| {
            let ip = ifa.address?.as_sockaddr_in()?.ip();
            (!ip.is_loopback()).then_some((ifa.interface_name, ip))
        })
        .collect()
}

/// The default gateway from `/proc/net/route` (little-endian hex columns).
fn default_gateway() -> Option<Ipv4Addr> {
    parse_default_gateway(&std::fs::read_to_string("/proc/net/route").ok()?)
}

fn parse_default_gateway(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(1) != Some(&"00000000") || cols.get(7) != Some(&"00000000") {
            return None;
        }
        let gw = u32::from_str_radix(cols.get(2)?, 16).ok()?;
        (gw != 0).then(|| Ipv4Addr::from(gw.swap_bytes()))
    })
}

async fn dns_check(cfg: &BootConfig) -> Check {
    let name = &cfg.agent.server_name;
    if name.parse::<std::net::IpAddr>().is_ok() {
        return check(
            "dns",
            Status::Pass,
            format!("the A3 is named by address ({name}); no DNS needed"),
            "",
        );
    }
    let servers = &cfg.net.dns;
    let listed = servers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match dns::resolve_a(name, servers, Duration::from_secs(2)).await {
        Ok(answer) => {
            let a3 = cfg.agent.a3_address.ip();
            let addrs = answer
                .addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            if answer.addrs.iter().any(|a| std::net::IpAddr::V4(*a) == a3) {
                check(
                    "dns",
                    Status::Pass,
                    format!("{name} -> {addrs} (from {})", answer.server),
                    "",
                )
            } else {
                check(
                    "dns",
                    Status::Warn,
                    format!(
                        "{name} -> {addrs} (from {}), but the A3 is configured at {a3}",
                        answer.server
                    ),
                    "fix the A3's DNS record, or the a3= address in the boot config",
                )
            }
        }
        Err(e) => check(
            "dns",
            Status::Fail,
            format!("{name} through [{listed}]: {e:#}"),
            "check that the A3's DNS servers (dns= in the boot config) are reachable from the \
             ABD's network on UDP 53 (or the given port) and hold the A3's name",
        ),
    }
}

async fn quic_check(cfg: &BootConfig) -> Check {
    let a3 = cfg.agent.a3_address;
    let started = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, quic_handshake(cfg)).await {
        Ok(Ok(())) => check(
            "quic",
            Status::Pass,
            format!(
                "TLS handshake with the A3 at {a3} (pinned CA, name {}) in {} ms",
                cfg.agent.server_name,
                started.elapsed().as_millis()
            ),
            "",
        ),
        Ok(Err(e)) => check(
            "quic",
            Status::Fail,
            format!("{a3}: {e:#}"),
            "check that the A3 runs and that UDP 2811 is open from the ABD to the A3; a \
             certificate error means the CA pin or name in the boot config is wrong",
        ),
        Err(_) => check(
            "quic",
            Status::Fail,
            format!("{a3}: no handshake within {} s", PROBE_TIMEOUT.as_secs()),
            "UDP 2811 is probably filtered between the ABD and the A3: open it in the firewall",
        ),
    }
}

/// A full QUIC + TLS handshake with the pinned CA, then a clean close.
async fn quic_handshake(cfg: &BootConfig) -> anyhow::Result<()> {
    let identity = match &cfg.agent.state_dir {
        Some(dir) => Identity::load_or_create(dir)?,
        None => anyhow::bail!("no state dir for the agent's key"),
    };
    let tls = tls::client_config(&cfg.agent.ca_pin, &identity)?;
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    client.transport_config(Arc::new(transport::transport(transport::Side::Agent)));
    let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
    let endpoint = quinn::Endpoint::client(bind)?;
    let connection = endpoint
        .connect_with(client, cfg.agent.a3_address, &cfg.agent.server_name)?
        .await?;
    connection.close(0u32.into(), b"diag");
    endpoint.wait_idle().await;
    Ok(())
}

async fn tcp_check(cfg: &BootConfig) -> Check {
    let a3 = cfg.agent.a3_address;
    let started = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, tcp_handshake(cfg)).await {
        Ok(Ok(())) => check(
            "tcp",
            Status::Pass,
            format!(
                "TLS/TCP fallback: handshake with the A3 at {a3} (pinned CA, name {}) in {} ms",
                cfg.agent.server_name,
                started.elapsed().as_millis()
            ),
            "",
        ),
        Ok(Err(e)) => check(
            "tcp",
            Status::Warn,
            format!("{a3}: {e:#}"),
            "only the TLS/TCP fallback needs TCP 2811 (QUIC is the data path): open it from \
             the ABD to the A3 if this network may drop UDP",
        ),
        Err(_) => check(
            "tcp",
            Status::Warn,
            format!(
                "{a3}: no TLS/TCP handshake within {} s",
                PROBE_TIMEOUT.as_secs()
            ),
            "TCP 2811 is probably filtered; only the TLS/TCP fallback needs it (QUIC is the \
             data path)",
        ),
    }
}

/// A TLS/TCP fallback handshake with the pinned CA, as the agent connects; the control
/// stream is closed at once.
async fn tcp_handshake(cfg: &BootConfig) -> anyhow::Result<()> {
    let identity = match &cfg.agent.state_dir {
        Some(dir) => Identity::load_or_create(dir)?,
        None => anyhow::bail!("no state dir for the agent's key"),
    };
    let tls = tls::client_config(&cfg.agent.ca_pin, &identity)?;
    conn::connect_tcp(&cfg.agent, tls)
        .await?
        .close(b"diag")
        .await;
    Ok(())
}

/// Whether the agent's SSH server answers on this ABD's address, for the A3 to reach the
/// ABD back on 22 (the A3's own `diag` over SSH proves the path through the network).
async fn reverse_path_check(cfg: &BootConfig, ssh: Option<SocketAddr>) -> Check {
    const NAME: &str = "reverse path";
    if cfg.agent.ssh_key.is_none() {
        return check(
            NAME,
            Status::Warn,
            "SSH is off: the boot config has no sshkey (the A3's public key)".into(),
            "the A3 sets vm-data/abd/sshkey when it creates an ABD (abd.sshkey= under qemu); \
             destroy this ABD and let the A3 make a new one",
        );
    }
    let port = ssh.map_or(crate::ssh::PORT, |a| a.port());
    let ip = match (ssh.map(|a| a.ip()), cfg.agent.bind.map(|b| b.ip())) {
        (Some(ip), _) | (None, Some(ip)) if !ip.is_unspecified() => ip,
        _ => match interface_addresses().into_iter().next() {
            Some((_, ip)) => ip.into(),
            None => {
                return check(
                    NAME,
                    Status::Fail,
                    "no address for the A3 to reach".into(),
                    "fix the ip check first",
                );
            }
        },
    };
    let target = SocketAddr::new(ip, port);
    match tokio::task::spawn_blocking(move || ssh_banner(target)).await {
        Ok(Ok(banner)) if banner.starts_with("SSH-2.0-") => check(
            NAME,
            Status::Pass,
            format!("SSH answers on {target} ({banner})"),
            "",
        ),
        Ok(Ok(banner)) => check(
            NAME,
            Status::Fail,
            format!("{target} answers {banner:?}, not SSH"),
            "another program holds the ABD's port 22: the appliance runs nothing else there",
        ),
        Ok(Err(e)) => check(
            NAME,
            Status::Fail,
            format!("{target}: {e}"),
            "the agent's SSH server is not serving: see the `ssh:` lines of its log",
        ),
        Err(e) => check(NAME, Status::Fail, e.to_string(), "report this bug"),
    }
}

/// The first line an SSH server sends (`SSH-2.0-…`).
fn ssh_banner(target: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut buf = [0u8; 255];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok(String::from_utf8_lossy(&buf[..len]).trim_end().to_owned())
}

/// The disks this agent can be given, with their sizes: the appliance's block devices (its
/// config disk left out), or for an agent run as a process the files of its device dir.
fn visible_disks() -> Vec<(PathBuf, u64)> {
    let dev = device::dev_dir();
    if dev != Path::new("/dev") {
        let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dev)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| (e.path(), meta.len()))
            })
            .collect();
        files.sort();
        return files;
    }
    block_devices()
        .into_iter()
        .filter(|(name, _)| {
            let serial = std::fs::read_to_string(format!("/sys/block/{name}/serial"));
            serial.map_or(true, |s| s.trim() != crate::bootcfg::disk::SERIAL)
        })
        .map(|(name, size)| (dev.join(name), size))
        .collect()
}

/// Whole disks under `/sys/block` with their sizes (bytes), loop and ram devices left out.
fn block_devices() -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut disks: Vec<(String, u64)> = dir
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            if ["loop", "ram", "zram", "sr", "fd"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                return None;
            }
            let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{name}/size"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            (sectors > 0).then_some((name, sectors * 512))
        })
        .collect();
    disks.sort();
    disks
}

fn disks_check(disks: &[(PathBuf, u64)]) -> Check {
    if disks.is_empty() {
        return check(
            "disks",
            Status::Warn,
            "no block devices visible".into(),
            "none needed until a job: the A3 hot-plugs each snapshot disk; if a job's disk \
             never appears, check the VBD plug on the host",
        );
    }
    let list = disks
        .iter()
        .map(|(path, size)| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            format!("{name} ({:.1} GiB)", *size as f64 / (1u64 << 30) as f64)
        })
        .collect::<Vec<_>>()
        .join(", ");
    check("disks", Status::Pass, list, "")
}

/// Unbuffered (O_DIRECT) sequential read speed of `disk`.
fn throughput_check(disk: &Path) -> Check {
    let name = format!("read {}", disk.display());
    match read_speed(disk) {
        Ok((bytes, elapsed, direct)) => {
            let mb_s = bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-6);
            let how = if direct {
                "unbuffered"
            } else {
                "buffered: its file system refuses O_DIRECT"
            };
            let detail = format!(
                "{mb_s:.0} MB/s {how} ({} MiB in {} ms)",
                bytes >> 20,
                elapsed.as_millis()
            );
            if mb_s >= SLOW_MB_S {
                check(&name, Status::Pass, detail, "")
            } else {
                check(
                    &name,
                    Status::Warn,
                    detail,
                    "the storage behind this disk is slow: backups of it will be slow too",
                )
            }
        }
        Err(e) => check(
            &name,
            Status::Fail,
            format!("{e:#}"),
            "check that the disk is plugged and readable",
        ),
    }
}

/// Bytes read, the time taken, and whether the read bypassed the page cache (a device file
/// of the simulator may sit on a file system without O_DIRECT).
fn read_speed(disk: &Path) -> anyhow::Result<(u64, Duration, bool)> {
    let direct = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(disk);
    let (mut f, direct) = match direct {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
            File::open(disk).with_context(|| format!("cannot open {}", disk.display()))?,
            false,
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot open {} with O_DIRECT", disk.display()));
        }
    };
    // O_DIRECT wants a buffer aligned to the logical block size: 4096 covers every disk.
    let mut buf = AlignedBuf::new(1 << 20);
    let started = Instant::now();
    let mut total = 0u64;
    while total < READ_BYTES && started.elapsed() < READ_TIME {
        let n = f
            .read(buf.as_mut())
            .with_context(|| format!("read {}", disk.display()))?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok((total, started.elapsed(), direct))
}

/// A heap buffer aligned to 4096 bytes.
struct AlignedBuf {
    raw: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + 4096];
        let offset = raw.as_ptr().align_offset(4096);
        AlignedBuf { raw, offset, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.offset..self.offset + self.len]
    }
}

fn memory_check() -> Check {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |key: &str| -> Option<u64> {
        info.lines().find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) => {
            let detail = format!("{} MiB available of {} MiB", avail >> 10, total >> 10);
            if avail >= MEMORY_BUDGET_KIB {
                check("memory", Status::Pass, detail, "")
            } else {
                check(
                    "memory",
                    Status::Warn,
                    detail,
                    "less than the agent's 48 MiB working budget: give the ABD VM 128 MiB",
                )
            }
        }
        _ => check(
            "memory",
            Status::Fail,
            "cannot read /proc/meminfo".into(),
            "mount /proc",
        ),
    }
}

/// The human table.
pub fn table(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<width$}  STATUS  DETAIL / REMEDY\n", "CHECK");
    for c in checks {
        let status = match c.status {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!("{:<width$}  {status:<6}  {}\n", c.check, c.detail));
        if !c.remedy.is_empty() {
            out.push_str(&format!("{:<width$}          -> {}\n", "", c.remedy));
        }
    }
    out
}

/// Whether any check failed.
pub fn any_failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.status == Status::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateway_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_default_gateway(table),
            Some(Ipv4Addr::new(10, 0, 2, 2))
        );
        assert_eq!(
            parse_default_gateway(&table[..table.rfind("eth0").unwrap()]),
            None
        );
    }

    #[test]
    fn table_shows_remedies_only_for_problems() {
        let checks = [
            check("ip", Status::Pass, "10.0.2.15".into(), "never shown"),
            check("dns", Status::Fail, "timeout".into(), "open UDP 53"),
        ];
        let t = table(&checks);
        assert!(!t.contains("never shown"), "{t}");
        assert!(t.contains("FAIL") && t.contains("-> open UDP 53"), "{t}");
        assert!(any_failed(&checks));
    }

    #[test]
    fn read_speed_of_a_file_with_or_without_o_direct() {
        let dir = std::env::temp_dir().join(format!("abd-diag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("disk");
        std::fs::write(&file, vec![7u8; 4 << 20]).unwrap();
        // tmpfs refuses O_DIRECT: the read is then buffered, and the line says so.
        let c = throughput_check(&file);
        assert!(c.check.contains("disk"), "{c:?}");
        assert_ne!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("MB/s"), "{c:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
