//! The qemu end-to-end harness: the ABD image booted under qemu TCG with user-mode
//! networking, its serial console captured, a DNS server on loopback, data disks.
//!
//! Config reaches the agent on the kernel command line. syslinux reads its `APPEND` line
//! from `syslinux.cfg` on the image's FAT partition, so each boot gets a copy of `abd.img`
//! (32 MiB) whose `syslinux.cfg` is rewritten with mtools: the boot path stays the real
//! one (BIOS, MBR, syslinux, kernel, initramfs), and the built image is never touched.
//!
//! qemu's user networking maps its gateway 10.0.2.2 to the host's 127.0.0.1 (TCP and UDP),
//! so the test's A3 and DNS server listen on 127.0.0.1 (not a 127.0.1.N address of their
//! own): nothing else is reachable from the guest. qemu's DNS forwarder 10.0.2.3 is never
//! given to the guest. The other way, a host port forward (`hostfwd`) on 127.0.0.1 reaches
//! the guest's SSH server on 22, as the A3 reaches an ABD.

#![allow(dead_code)] // each test file uses a different part

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use a3_e2e::{ChildGuard, built_image, wait_until};
use a3_server::ssh::A3Key;
use abd_image::recipe;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};

/// A DNS server on 127.0.0.1 answering A queries from a fixed table (NXDOMAIN otherwise);
/// it stops when dropped.
pub struct DnsServer {
    /// Its UDP port.
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `names` (without the trailing dot).
    pub fn start(names: &[(&str, Ipv4Addr)]) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let names: Vec<(String, Ipv4Addr)> = names
            .iter()
            .map(|(n, a)| (format!("{}.", n.to_ascii_lowercase()), *a))
            .collect();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopping.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n], &names) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        DnsServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(query: &[u8], names: &[(String, Ipv4Addr)]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    let question = q.queries.first()?.clone();
    let mut reply = Message::response(q.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = q.metadata.recursion_desired;
    reply.add_query(question.clone());
    let name = question.name().to_ascii().to_ascii_lowercase();
    match names.iter().find(|(n, _)| *n == name) {
        Some((_, addr)) if question.query_type() == RecordType::A => {
            reply.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A((*addr).into()),
            ));
        }
        Some(_) => {}
        None => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().ok()
}

/// A UDP port on 127.0.0.1 that receives and never answers (a DNS server that is down but
/// not refusing); held until dropped.
pub fn silent_udp_port() -> (UdpSocket, u16) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// A booted ABD VM: qemu with its serial console in a file.
pub struct Vm {
    /// The qemu process.
    pub qemu: ChildGuard,
    /// The serial console's capture.
    pub console: PathBuf,
    /// When qemu started.
    pub started: Instant,
}

/// What to boot.
pub struct Boot<'a> {
    /// Scratch dir for the image copy and the console log.
    pub dir: &'a Path,
    /// The `abd.*` keys (without the prefix) for the kernel command line.
    pub keys: &'a [(&'a str, String)],
    /// Raw files attached as virtio disks (vda, vdb, …).
    pub disks: &'a [PathBuf],
    /// Forward this port on the host's 127.0.0.1 to port 22 of this guest address.
    pub ssh_forward: Option<(u16, Ipv4Addr)>,
}

impl Vm {
    /// Copies the image, writes the command line into the copy, and boots it.
    pub fn boot(b: &Boot<'_>) -> Vm {
        let img = b.dir.join("abd-boot.img");
        std::fs::copy(built_image(), &img).unwrap();
        let append: Vec<String> = std::iter::once(recipe::KERNEL_CMDLINE.to_owned())
            .chain(b.keys.iter().map(|(k, v)| format!("abd.{k}={v}")))
            .collect();
        let cfg = recipe::syslinux_cfg().replace(recipe::KERNEL_CMDLINE, &append.join(" "));
        let cfg_path = b.dir.join("syslinux.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let out = Command::new("mcopy")
            .args(["-o", "-i"])
            .arg(format!("{}@@{}", img.display(), recipe::PARTITION_OFFSET))
            .arg(&cfg_path)
            .arg("::/syslinux.cfg")
            .output()
            .expect("mcopy (Debian package mtools, installed by `cargo xtask image`)");
        assert!(
            out.status.success(),
            "mcopy into the image copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let console = b.dir.join("console.log");
        let _ = std::fs::remove_file(&console);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "128", "-smp", "1"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=ide,index=0", img.display()))
            .arg("-netdev")
            .arg(match b.ssh_forward {
                Some((port, guest)) => {
                    format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-{guest}:22")
                }
                None => "user,id=n0".to_owned(),
            })
            .args(["-device", "virtio-net-pci,netdev=n0"]);
        for disk in b.disks {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio", disk.display()));
        }
        let started = Instant::now();
        let qemu = ChildGuard::spawn(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(b.dir.join("qemu.stderr")).unwrap()),
        );
        Vm {
            qemu,
            console,
            started,
        }
    }

    /// The console's complete lines so far (a line being written is left out).
    pub fn console_text(&self) -> String {
        let mut bytes = std::fs::read(&self.console).unwrap_or_default();
        bytes.truncate(bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits for a console line starting with `prefix`, returning its rest. Panics with the
    /// console's tail when qemu exits or the deadline passes.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let found = wait_until(timeout, || {
            if let Ok(Some(status)) = self.qemu.child.try_wait() {
                panic!("qemu exited ({status}) before {prefix:?}:\n{}", self.tail());
            }
            self.console_text()
                .lines()
                .find_map(|l| l.trim_end().strip_prefix(prefix).map(str::to_owned))
        });
        found.unwrap_or_else(|| {
            panic!(
                "no {prefix:?} on the console in {timeout:?}:\n{}",
                self.tail()
            )
        })
    }

    /// The last lines of the console, for failure messages.
    pub fn tail(&self) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The boot diag's checks (the JSON line the appliance prints after configuring its
    /// network).
    pub fn boot_diag(&mut self) -> Vec<serde_json::Value> {
        let json = self.wait_line("abd-diag-json: ", Duration::from_secs(300));
        serde_json::from_str::<serde_json::Value>(&json)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The `abd-status:` lines so far, as key=value maps.
    pub fn status_lines(&self) -> Vec<Vec<(String, String)>> {
        self.console_text()
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("abd-status: "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }
}

/// The boot config keys of an ABD enrolled as `id` (`enrolled` is the config file
/// `a3-server abd enroll` wrote) for an A3 with state dir `state`, reached at `host`, the
/// host's loopback as the guest sees it. The DNS and addressing keys are the test's.
pub fn boot_keys(
    state: &Path,
    enrolled: &Path,
    host: &str,
    id: &str,
) -> Vec<(&'static str, String)> {
    let port = std::fs::read_to_string(state.join("data.addr"))
        .unwrap()
        .trim()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    let cfg = std::fs::read_to_string(enrolled).unwrap();
    let field = |k: &str| {
        cfg.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} = \"")))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no {k} in the enrolled config:\n{cfg}"))
            .to_owned()
    };
    // The A3 made its SSH key at start; the command line takes it without spaces.
    let sshkey = A3Key::load(state).unwrap().public_line();
    let (alg, blob) = sshkey.split_once(' ').unwrap();
    let blob = blob.split_whitespace().next().unwrap();
    vec![
        ("sshkey", format!("{alg}:{blob}")),
        ("a3", format!("{host}:{port}")),
        // A name the A3's certificate carries, resolved through the test's DNS.
        ("name", "a3".to_owned()),
        ("id", id.to_owned()),
        ("token", field("token")),
        ("ca", field("ca_pin")),
    ]
}

/// A TCP port on 127.0.0.1 free right now, for a qemu host forward (qemu binds it itself).
pub fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The check named `name` in a diag report.
pub fn diag_line<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name:?} line in {checks:#?}"))
}

/// A sparse `size`-byte disk with data at a few places (the rest zeros, which a real disk
/// mostly is): `image` pieces at the start, the middle and the end.
pub fn write_data_disk(path: &Path, size: u64, pieces: &[(u64, Vec<u8>)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (at, data) in pieces {
        f.write_all_at(data, *at).unwrap();
    }
}

/// Asserts two files have the same bytes, naming the first differing MiB.
pub fn assert_same_files(a: &Path, b: &Path) {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let len = fa.metadata().unwrap().len();
    assert_eq!(
        len,
        fb.metadata().unwrap().len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(1 << 20) as usize;
        fa.read_exact_at(&mut x[..n], off).unwrap();
        fb.read_exact_at(&mut y[..n], off).unwrap();
        if x[..n] != y[..n] {
            let at = x[..n]
                .iter()
                .zip(&y[..n])
                .position(|(p, q)| p != q)
                .unwrap();
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                off + at as u64
            );
        }
        off += n as u64;
    }
}
