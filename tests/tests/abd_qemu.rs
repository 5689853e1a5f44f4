//! qemu end-to-end tests of the ABD appliance: the image `cargo xtask image` builds boots
//! under `qemu-system-x86_64 -accel tcg -m 128`, configures its network (DHCP from qemu's
//! user-mode network, or a static address), resolves the A3's name through the test's own
//! DNS server on loopback, connects to a real `a3-server` on the host, prints its self-checks
//! on the console, and backs up and restores a 1 GiB virtio disk bit-exact. The A3 runs
//! `diag --json` on the ABD over SSH through a host port forward, with its own key (in the
//! boot config's `sshkey`) and the host key the console printed pinned: through its library
//! on the DHCP boot, through `a3-server abd ssh --address` on the static one.
//!
//! How config reaches the guest, and why the A3 listens on 127.0.0.1: see
//! `abd_qemu_util`. One VM runs at a time (TCG on two shared cores); every wait has a
//! generous deadline and nothing asserts on time. The figures are printed.

mod abd_qemu_util;
mod datapath_util;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use a3_e2e::wait_until;
use a3_server::ssh::{A3Key, Target};
use abd_qemu_util::{
    Boot, DnsServer, Vm, assert_same_files, boot_keys, diag_line, free_tcp_port, silent_udp_port,
    write_data_disk,
};
use datapath_util::{A3, scratch};

/// One VM at a time.
static QEMU: Mutex<()> = Mutex::new(());

/// qemu's user-mode gateway: the host's loopback as the guest sees it.
const HOST: &str = "10.0.2.2";
/// How long a TCG boot may take on a loaded machine (~7 s when idle).
const BOOT_DEADLINE: Duration = Duration::from_secs(600);

/// An A3 on 127.0.0.1 (the only host address the guest reaches) and an enrolled ABD id.
struct Site {
    dir: tempfile::TempDir,
    a3: A3,
    id: String,
    keys: Vec<(&'static str, String)>,
}

impl Site {
    fn start(id: &str) -> Site {
        let dir = scratch();
        let a3 = A3::start(&dir.path().join("a3"), "127.0.0.1:0");
        let keys = boot_keys(&a3.state, &a3.enroll(id, dir.path()), HOST, id);
        Site {
            dir,
            a3,
            id: id.to_owned(),
            keys,
        }
    }

    fn with(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        self.keys.iter().chain(extra).cloned().collect()
    }

    /// Waits until the A3 lists the ABD as connected; returns the time since qemu started.
    fn wait_connected(&self, vm: &mut Vm) -> Duration {
        wait_until(BOOT_DEADLINE, || {
            if let Ok(Some(status)) = vm.qemu.child.try_wait() {
                panic!("qemu exited ({status}):\n{}", vm.tail());
            }
            self.a3.connected(&self.id).then_some(())
        })
        .unwrap_or_else(|| panic!("the ABD never connected:\n{}", vm.tail()));
        vm.started.elapsed()
    }
}

/// The ABD's SSH host key as its console printed it.
fn ssh_hostkey(vm: &mut Vm) -> String {
    let fp = vm.wait_line("abd-ssh-hostkey: ", Duration::from_secs(300));
    assert!(fp.starts_with("SHA256:"), "{fp}");
    fp
}

/// Parses a `diag --json` report that came over SSH.
fn parse_checks(json: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(json)
        .unwrap_or_else(|e| panic!("diag --json over SSH: {e}:\n{json}"))
        .as_array()
        .unwrap()
        .clone()
}

fn assert_status(checks: &[serde_json::Value], name: &str, status: &str) {
    let line = diag_line(checks, name);
    assert_eq!(
        line["status"], status,
        "diag {name}: {line}\nall: {checks:#?}"
    );
}

#[test]
fn dhcp_boot_connects_passes_diag_and_round_trips_1gib() {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::start("qemu-abd-dhcp");
    let dns = DnsServer::start(&[("a3", HOST.parse().unwrap())]);
    let dir = site.dir.path();

    // 1 GiB, mostly zeros as real disks are, with data at the start, middle and end.
    let data = dir.join("data.img");
    let restored = dir.join("restored.img");
    let gib = 1u64 << 30;
    write_data_disk(
        &data,
        gib,
        &[
            (0, datapath_util::image(11, 24 << 20)),
            ((gib / 2) + 4096, datapath_util::image(12, 8 << 20)),
            (gib - (3 << 20), datapath_util::image(13, 3 << 20)),
        ],
    );
    write_data_disk(&restored, gib, &[]);

    let keys = site.with(&[
        ("ip", "dhcp".to_owned()),
        ("dns", format!("{HOST}:{}", dns.port)),
    ]);
    let ssh_port = free_tcp_port();
    let mut vm = Vm::boot(&Boot {
        dir,
        keys: &keys,
        disks: &[data.clone(), restored.clone()],
        ssh_forward: Some((ssh_port, "10.0.2.15".parse().unwrap())),
    });
    let connected_after = site.wait_connected(&mut vm);

    // The A3 runs diag over SSH, pinning the host key the ABD printed.
    let target = Target {
        abd: site.id.clone(),
        addr: ([127, 0, 0, 1], ssh_port).into(),
        host_key: Some(ssh_hostkey(&mut vm)),
    };
    let key = A3Key::load(&site.a3.state).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt
        .block_on(a3_server::ssh::exec(
            &key,
            &target,
            "diag --json",
            Duration::from_secs(300),
        ))
        .unwrap_or_else(|e| panic!("diag over SSH: {e}\n{}", vm.tail()));
    let over_ssh = parse_checks(&out.stdout);
    assert_eq!(out.status, 0, "diag over SSH failed a line: {over_ssh:#?}");
    for (name, status) in [
        ("ip", "pass"),
        ("quic", "pass"),
        ("tcp", "pass"),
        ("reverse path", "pass"),
        ("read /dev/vda", "pass"),
    ] {
        assert_status(&over_ssh, name, status);
    }
    println!(
        "abd qemu DHCP boot: diag over SSH through 127.0.0.1:{ssh_port} -> 10.0.2.15:22 passed"
    );

    let checks = vm.boot_diag();
    for (name, status) in [
        ("ip", "pass"),
        ("gateway", "pass"),
        ("dns", "pass"),
        ("quic", "pass"),
        ("tcp", "pass"),
        ("reverse path", "pass"),
        ("disks", "pass"),
        ("read /dev/vda", "pass"),
        ("memory", "pass"),
    ] {
        assert_status(&checks, name, status);
    }
    assert!(
        checks.iter().all(|c| c["status"] == "pass"),
        "every line passes in the good setup: {checks:#?}"
    );
    let ip = diag_line(&checks, "ip")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ip.contains("10.0.2.15") && ip.contains("DHCP"), "{ip}");
    let dns_detail = diag_line(&checks, "dns")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        dns_detail.contains(&format!("{HOST}:{}", dns.port)),
        "{dns_detail}"
    );

    let version = site
        .a3
        .backup(&site.id, Path::new("/dev/vda"), "qemu-data", None);
    let out = site.a3.restore(&site.id, &version, Path::new("/dev/vdb"));
    assert!(
        out.status.success(),
        "restore failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vm.tail()
    );
    assert_same_files(&data, &restored);

    // A status line printed after the jobs carries the peak over both.
    let seen = vm.status_lines().len();
    wait_until(Duration::from_secs(120), || {
        (vm.status_lines().len() > seen).then_some(())
    })
    .unwrap_or_else(|| panic!("no status line after the jobs:\n{}", vm.tail()));
    let lines = vm.status_lines();
    let get = |line: &[(String, String)], k: &str| -> u64 {
        line.iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    let peak_kib = lines.iter().map(|l| get(l, "vmhwm_kib")).max().unwrap_or(0);
    let last = lines.last().unwrap();
    println!(
        "abd qemu (TCG, 128 MiB): boot to connected {:.1} s; agent peak RSS (VmHWM) {:.1} MiB \
         over a 1 GiB backup and restore; guest memory available {:.1} MiB, free {:.1} MiB",
        connected_after.as_secs_f64(),
        peak_kib as f64 / 1024.0,
        get(last, "mem_available_kib") as f64 / 1024.0,
        get(last, "mem_free_kib") as f64 / 1024.0,
    );
    assert_eq!(get(last, "boot_errors"), 0, "boot errors:\n{}", vm.tail());
}

#[test]
fn static_boot_with_a_dead_dns_server_fails_the_dns_line() {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let site = Site::start("qemu-abd-static");
    // Receives queries and never answers.
    let (_dead, dead_port) = silent_udp_port();
    let keys = site.with(&[
        ("ip", "10.0.2.20/24".to_owned()),
        ("gw", HOST.to_owned()),
        ("dns", format!("{HOST}:{dead_port}")),
    ]);
    let ssh_port = free_tcp_port();
    let mut vm = Vm::boot(&Boot {
        dir: site.dir.path(),
        keys: &keys,
        disks: &[],
        ssh_forward: Some((ssh_port, "10.0.2.20".parse().unwrap())),
    });
    // The A3 is configured by address, so the ABD connects without DNS.
    let connected_after = site.wait_connected(&mut vm);

    // Through the admin's command line this time; the failing DNS line makes it exit 1.
    let hostkey = ssh_hostkey(&mut vm);
    let out = site.a3.cli(&[
        "abd",
        "ssh",
        &site.id,
        "--address",
        &format!("127.0.0.1:{ssh_port}"),
        "--host-key",
        &hostkey,
        "--timeout",
        "300",
        "diag",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("exited with status 1"),
        "abd ssh diag must report the failing DNS line: {stderr}\n{}",
        vm.tail()
    );
    let over_ssh = parse_checks(&String::from_utf8_lossy(&out.stdout));
    assert_status(&over_ssh, "ip", "pass");
    assert_status(&over_ssh, "reverse path", "pass");
    assert_status(&over_ssh, "dns", "fail");

    let checks = vm.boot_diag();
    assert_status(&checks, "ip", "pass");
    let ip = diag_line(&checks, "ip")["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ip.contains("10.0.2.20/24 (static)"), "{ip}");
    assert_status(&checks, "gateway", "pass");
    assert_status(&checks, "quic", "pass");
    assert_status(&checks, "reverse path", "pass");
    assert_status(&checks, "dns", "fail");
    let dns = diag_line(&checks, "dns");
    assert!(
        dns["detail"].as_str().unwrap().contains("no answer"),
        "{dns}"
    );
    assert!(
        dns["remedy"].as_str().unwrap().contains("DNS servers"),
        "the DNS line must carry its remedy: {dns}"
    );
    println!(
        "abd qemu static boot: connected after {:.1} s",
        connected_after.as_secs_f64()
    );
}
