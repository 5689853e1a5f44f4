//! The ABD on a real Xen hypervisor (issue 10): Debian's Xen 4.17, the version XCP-ng 8.3
//! runs, booted under qemu TCG with the dom0 bundle `cargo xtask test-xen` builds (see
//! `xtask/src/xen.rs`). dom0 runs `xen/abd-test.sh`:
//! - XCP-ng's SM sequence against the A3's `Alike_SR` export (probes, SM's mount options,
//!   `mkdir <sr-uuid>`, the writable and hard-link checks), then it reads the ABD's VHD, which
//!   the A3 writes into the SR after dom0 first looked at the directory;
//! - `xl create` of the ABD as an HVM guest with 128 MiB, booting from that VHD on the NFS
//!   mount, its boot config written with `xenstore-write` into `vm-data/abd/*`;
//! - the agent configures its network (DHCP from qemu's user network, bridged in dom0) and
//!   writes `vm-data/abd/assigned-ip` back;
//! - two disks hot-plugged read-write with `xl block-attach`: one the A3 backs up, one it
//!   restores into. The first must come back bit-exact and be left unchanged.
//!
//! It needs the bundle and takes several minutes of TCG, so it is `#[ignore]`d in
//! `cargo xtask test`, and `cargo xtask test-xen` runs it.

mod abd_qemu_util;
mod datapath_util;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use a3_e2e::{ChildGuard, built_image, wait_until};
use abd_image::initramfs::{self, Entry};
use abd_qemu_util::{DnsServer, assert_same_files, boot_keys, write_data_disk};
use datapath_util::{A3, scratch};

/// qemu's user-mode gateway: the host's loopback as dom0 and the ABD see it.
const HOST: &str = "10.0.2.2";
/// The deadline of each step; nested TCG is slow, and the machine may be loaded.
const STEP: Duration = Duration::from_secs(900);
/// How long the ABD may take to report its address before its boot counts as stalled.
/// Under nested TCG on a loaded 2-core machine, SeaBIOS has been seen to stop after
/// "Booting from 0000:7c00" for good, with nothing on the guest's serial port; the
/// slowest boot that went on reported its address 196 s after `xl unpause`.
const BOOT_TRY: Duration = Duration::from_secs(420);
/// The data disk's size.
const DISK: u64 = 64 << 20;

/// The bundle `cargo xtask test-xen` builds beside the ABD image.
fn bundle(name: &str) -> PathBuf {
    let path = built_image()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("xen")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask test-xen` (it builds the Xen bundle first)",
        path.display()
    );
    path
}

/// The machine: Xen under qemu TCG, its serial console (Xen's and dom0's) in a file.
struct Machine {
    qemu: ChildGuard,
    console: PathBuf,
    started: Instant,
}

impl Machine {
    /// Boots Xen with dom0's initramfs plus `extra` (a cpio of the test's files), with
    /// DESIGN §7's command line.
    fn boot(dir: &Path, extra: &[Entry]) -> Machine {
        let initrd = dir.join("dom0.img");
        let mut out = File::create(&initrd).unwrap();
        let mut base = std::fs::read(bundle("dom0.img")).unwrap();
        // The kernel unpacks concatenated archives in turn; an uncompressed one must start
        // 4-byte aligned, and the zero padding before it is skipped.
        base.resize(base.len().next_multiple_of(4), 0);
        out.write_all(&base).unwrap();
        initramfs::write_cpio(extra, &mut out).unwrap();
        drop(out);
        let console = dir.join("console.log");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg,thread=multi", "-cpu", "qemu64,+svm,+npt"])
            .args(["-smp", "2", "-m", "2048", "-no-reboot"])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-netdev", "user,id=n0", "-device", "e1000,netdev=n0"])
            .arg("-kernel")
            .arg(bundle("xen"))
            .args([
                "-append",
                "dom0_mem=768M console=com1 com1=115200 guest_loglvl=all",
            ])
            .arg("-initrd")
            // Multiboot modules, split on commas: the dom0 kernel with its command line, then
            // the initramfs.
            .arg(format!(
                "{} console=hvc0 rdinit=/init,{}",
                bundle("vmlinuz").display(),
                initrd.display()
            ));
        let started = Instant::now();
        let qemu = ChildGuard::spawn(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(dir.join("qemu.stderr")).unwrap()),
        );
        Machine {
            qemu,
            console,
            started,
        }
    }

    fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    fn tail(&self) -> String {
        let text = self.console_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Waits for a `dom0: <prefix>…` line and returns its rest.
    fn wait_dom0(&mut self, prefix: &str) -> String {
        self.wait_dom0_within(prefix, STEP)
            .unwrap_or_else(|| panic!("no dom0: {prefix} in {STEP:?}:\n{}", self.tail()))
    }

    /// [`Machine::wait_dom0`] for at most `limit`.
    fn wait_dom0_within(&mut self, prefix: &str, limit: Duration) -> Option<String> {
        let want = format!("dom0: {prefix}");
        self.wait_within(&want, limit, |text| {
            text.lines()
                .find_map(|l| l.trim_end().strip_prefix(want.as_str()))
                .map(|rest| rest.trim().to_owned())
        })
    }

    /// Waits until `done` (given the console) has an answer; fails on `dom0: FAIL`, on qemu's
    /// exit (a dom0 crash reboots Xen, and qemu exits with 0) and at the deadline.
    fn wait<T>(&mut self, what: &str, done: impl FnMut(&str) -> Option<T>) -> T {
        self.wait_within(what, STEP, done)
            .unwrap_or_else(|| panic!("no {what} in {STEP:?}:\n{}", self.tail()))
    }

    /// [`Machine::wait`] for at most `limit`: `None` when it passes.
    fn wait_within<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        wait_until(limit, || {
            let text = self.console_text();
            if let Some(fail) = text.lines().find(|l| l.starts_with("dom0: FAIL")) {
                panic!("{fail}\n{}", self.tail());
            }
            if let Some(found) = done(&text) {
                return Some(found);
            }
            if let Ok(Some(status)) = self.qemu.child.try_wait() {
                panic!("qemu exited ({status}) before {what}:\n{}", self.tail());
            }
            None
        })
    }
}

/// Copies the run's logs beside the bundle when the test fails: the scratch directory goes
/// with the failure, and a TCG run is too long to repeat for its logs.
struct KeepOnPanic(Vec<PathBuf>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for path in &self.0 {
            let name = path.file_name().expect("a file").to_string_lossy();
            let kept = bundle("dom0.img").with_file_name(format!("last-failed-{name}"));
            match std::fs::copy(path, &kept) {
                Ok(_) => eprintln!("xen: kept {}", kept.display()),
                Err(e) => eprintln!("xen: cannot keep {}: {e}", path.display()),
            }
        }
    }
}

fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
    Entry::File {
        path: path.to_owned(),
        mode,
        data: data.into(),
    }
}

#[test]
#[ignore = "needs the Xen bundle and minutes of TCG: run `cargo xtask test-xen`"]
fn hvm_abd_on_xen_backs_up_a_hot_plugged_disk_from_an_nfs_sr() {
    let dir = scratch();
    // The A3 on 127.0.0.1 (what 10.0.2.2 reaches), so its SR is on 127.0.0.1:111 and 2049.
    let a3 = A3::start(&dir.path().join("a3"), "127.0.0.1:0");
    let sr_dir = a3.state.join("sr");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 2049)).is_ok(),
        "the A3's SR is not served on 127.0.0.1:2049:\n{}",
        std::fs::read_to_string(a3_e2e::a3_log(&a3.state)).unwrap_or_default()
    );
    let dns = DnsServer::start(&[("a3", HOST.parse().unwrap())]);
    let id = "xen-abd";
    let mut keys = boot_keys(&a3.state, &a3.enroll(id, dir.path()), HOST, id);
    keys.push(("ip", "dhcp".to_owned()));
    keys.push(("dns", format!("{HOST}:{}", dns.port)));
    let abd_keys: String = keys.iter().map(|(k, v)| format!("{k}={v}\n")).collect();

    let sr_uuid = "6e0b1f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    let vdi_uuid = "0abd0000-1111-4222-8333-444455556666";
    let env = format!(
        "NFS_SERVER={HOST}\nEXPORT={}\nSR_UUID={sr_uuid}\nVDI_UUID={vdi_uuid}\n\
         DATA_FILE=data.img\nRESTORE_FILE=restore.img\n",
        a3_server::sr::EXPORT
    );
    let script = include_str!("../../xen/abd-test.sh");
    let _keep = KeepOnPanic(vec![
        dir.path().join("console.log"),
        a3_e2e::a3_log(&a3.state),
    ]);
    let mut machine = Machine::boot(
        dir.path(),
        &[
            file("run-test.sh", 0o755, script),
            file("test.env", 0o644, env),
            file("abd-keys", 0o600, abd_keys),
        ],
    );

    let up = machine.wait_dom0("up: ");
    println!(
        "xen: dom0 up after {:.0} s: {up}",
        machine.started.elapsed().as_secs_f64()
    );
    machine.wait_dom0("sr attached");
    let sr = sr_dir.join(sr_uuid);
    assert!(
        sr.is_dir(),
        "dom0 made the SR directory over NFS, but {} is missing: another NFS server answered",
        sr.display()
    );
    // Written after dom0 first looked at the directory, as the A3 writes templates into a
    // mounted SR; renamed into place whole.
    let template = dir.path().join("template.vhd");
    std::fs::copy(built_image().with_extension("vhd"), &template).unwrap();
    std::fs::copy(&template, sr.join("template.part")).unwrap();
    std::fs::rename(sr.join("template.part"), sr.join(format!("{vdi_uuid}.vhd"))).unwrap();
    let data = sr.join("data.img");
    write_data_disk(
        &data,
        DISK,
        &[
            (0, datapath_util::image(21, 4 << 20)),
            (DISK / 2 + 4096, datapath_util::image(22, 1 << 20)),
            (DISK - (1 << 20), datapath_util::image(23, 1 << 20)),
        ],
    );
    write_data_disk(&sr.join("restore.img"), DISK, &[]);
    let before = std::fs::read(&data).unwrap();
    println!("xen: {}", machine.wait_dom0("vhd read: "));

    machine.wait_dom0("abd started");
    let mut unpaused = Instant::now();
    let ip = match machine.wait_dom0_within("assigned-ip ", BOOT_TRY) {
        Some(ip) => ip,
        None => {
            // Reported, not hidden: the run says it booted the ABD twice.
            println!(
                "xen: the ABD reported no address {BOOT_TRY:?} after xl unpause (a boot \
                 stalled under nested TCG); destroying it and booting it once more"
            );
            std::fs::write(sr.join("reboot-abd"), b"").unwrap();
            machine.wait_dom0("abd restarted");
            unpaused = Instant::now();
            machine.wait_dom0("assigned-ip ")
        }
    };
    assert!(ip.starts_with("10.0.2."), "assigned-ip {ip}");
    machine.wait("the ABD's connection", |_| a3.connected(id).then_some(()));
    let connected = unpaused.elapsed();
    println!(
        "xen: the HVM ABD connected {:.0} s after xl unpause (assigned-ip {ip})",
        connected.as_secs_f64()
    );

    machine.wait_dom0("disks attached");
    let version = a3.backup(id, Path::new("/dev/xvdb"), "xen-data", None);
    let out = a3.restore(id, &version, Path::new("/dev/xvdc"));
    assert!(
        out.status.success(),
        "restore failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        machine.tail()
    );
    std::fs::write(sr.join("detach"), b"").unwrap();
    machine.wait_dom0("detached");
    assert_same_files(&data, &sr.join("restore.img"));
    assert!(
        std::fs::read(&data).unwrap() == before,
        "the ABD wrote to the disk it backed up"
    );
    machine.wait_dom0("test done");
    println!(
        "xen: passed in {:.0} s; boot to connected {:.0} s",
        machine.started.elapsed().as_secs_f64(),
        connected.as_secs_f64()
    );
}
