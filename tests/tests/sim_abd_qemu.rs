//! The simulator's qemu backend end to end: `xapi-sim serve --abd-backend qemu` boots the
//! ABD VM the A3 provisions from its real template (the image `cargo xtask image` builds)
//! under qemu TCG, hands it its boot config on a config disk, hot-plugs the snapshot disk
//! through QMP, and the A3 backs a simulated VM up through it and restores it bit-exact.
//! A killed qemu is restarted; no qemu outlives the simulator, stopped or killed; and a
//! restarted simulator boots the ABD it records as Running again.
//!
//! A qemu guest reaches the host only through 10.0.2.2 = 127.0.0.1 (see the backend's
//! module header), so the A3's port 2811 and the DNS server its ABDs use listen on
//! 127.0.0.1 (OS-picked ports); its NFS SR stays on its own 127.1.x.y address. TCG boots
//! take 15-50 s on a loaded machine: the deadlines are generous and nothing asserts on
//! time; the figures are printed.

mod abd_qemu_util;
mod pool_support;

use std::path::Path;
use std::time::{Duration, Instant};

use a3_e2e::{built_image, wait_until};
use abd_qemu_util::DnsServer;
use pool_support::{A3, Sim, alike_sr, assert_nothing_left, noise, objects, user_vms};
use serde_json::Value as Json;

/// How long the A3 waits for a qemu ABD to boot and connect.
const BOOT_TIMEOUT_SECS: u64 = 900;

/// The VDI uuids of a VM's disks, by userdevice.
fn disks(inv: &Json, vm_uuid: &str) -> Vec<String> {
    let vm = objects(inv, "VM")
        .into_iter()
        .find(|v| v["uuid"] == vm_uuid)
        .unwrap_or_else(|| panic!("no VM {vm_uuid}"));
    let mut found: Vec<(String, String)> = vm["VBDs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &inv["objects"]["VBD"][r.as_str().unwrap()])
        .filter(|b| b["type"] == "Disk")
        .filter_map(|b| {
            let vdi = inv["objects"]["VDI"][b["VDI"].as_str()?]["uuid"].as_str()?;
            Some((b["userdevice"].as_str()?.to_owned(), vdi.to_owned()))
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "VM {vm_uuid} has no disk");
    found.into_iter().map(|(_, vdi)| vdi).collect()
}

/// Processes whose command line mentions `needle`, as `pid: cmdline`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle)
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// Asserts that no process mentions the simulator's directory (qemu names its files there).
fn assert_none_left(sim_dir: &Path) {
    let dir = sim_dir.display().to_string();
    let gone = wait_until(Duration::from_secs(30), || {
        processes_mentioning(&dir).is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "processes outlived the simulator: {:?}",
        processes_mentioning(&dir)
    );
}

fn console_of(sim_dir: &Path, vm_uuid: &str) -> String {
    std::fs::read_to_string(sim_dir.join("abd").join(vm_uuid).join("console.log"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_abd_backs_up_and_restores_a_simulated_vm_bit_exact() {
    let started = Instant::now();
    let image = built_image();
    let xva = image.with_file_name("abd.xva");
    assert!(
        xva.exists(),
        "{} missing: run `cargo xtask image`",
        xva.display()
    );
    let scratch = tempfile::Builder::new()
        .prefix("a3-qemu-")
        .tempdir()
        .unwrap();
    let sim_dir = scratch.path().join("sim");
    let (base, a3_ip) = pool_support::addresses();
    let mut sim = Sim::start_qemu(&sim_dir, &base, 1, 1, "64MiB");

    // The ABD resolves nothing itself here, but its DNS must be a server of the test's own
    // on 127.0.0.1 (never qemu's forwarder, which would ask this machine's resolver).
    let dns = DnsServer::start(&[("a3", "10.0.2.2".parse().unwrap())]);
    let config = format!(
        "abd_template = {:?}\ndns = [\"127.0.0.1:{}\"]\nsr_address = \"{a3_ip}\"\n\
         abd_boot_timeout_secs = {BOOT_TIMEOUT_SECS}\n",
        xva.display().to_string(),
        dns.port
    );
    let a3 = A3::start_with(&scratch.path().join("a3"), &a3_ip, &config, "127.0.0.1:0");
    let pool = a3.add_pool(&sim);
    alike_sr(&sim).await;

    // Known content in the VM's 64 MiB disk: the start, the middle, the last MiB.
    let inv = sim.inventory().await;
    let vms = user_vms(&inv);
    assert_eq!(vms.len(), 1, "{vms:?}");
    let (vm_uuid, vm_name) = vms[0].clone();
    let vdis = disks(&inv, &vm_uuid);
    for (i, at) in [0u64, 30 << 20, 63 << 20].into_iter().enumerate() {
        sim.write_vdi(&vdis[0], at, noise(i as u64 + 1, 1 << 20))
            .await;
    }
    let mut originals = Vec::new();
    for vdi in &vdis {
        originals.push(sim.vdi_data(vdi).await);
    }
    assert_eq!(originals[0].len(), 64 << 20);

    // The backup provisions the ABD; meanwhile, time its boot: from qemu creating the
    // console file to the agent saying it connected.
    let backup_started = Instant::now();
    let (backed_up, boot_to_connected) = std::thread::scope(|scope| {
        let backup = scope.spawn(|| a3.backup(&[&vm_name], 1));
        let abd_root = sim_dir.join("abd");
        let console = wait_until(Duration::from_secs(BOOT_TIMEOUT_SECS), || {
            let dir = std::fs::read_dir(&abd_root).ok()?.flatten().next()?;
            let console = dir.path().join("console.log");
            console.exists().then_some(console)
        });
        let booted = Instant::now();
        let connected = console.and_then(|c| {
            wait_until(Duration::from_secs(BOOT_TIMEOUT_SECS), || {
                let text = std::fs::read_to_string(&c).unwrap_or_default();
                (text.contains("connected to the A3") || backup.is_finished()).then_some(())
            })
            .map(|()| booted.elapsed())
        });
        (backup.join().unwrap(), connected)
    });
    backed_up.unwrap_or_else(|e| panic!("backup failed: {e}\nA3 log: {}", a3.log_path().display()));
    let backup_took = backup_started.elapsed();

    // The ABD ran under qemu: its console shows the agent connected, and the VM record
    // carries the host address the simulator forwards to it.
    let abds = a3.abd_vms();
    assert_eq!(abds.len(), 1, "{abds:?}");
    let abd_vm = abds[0]["vm_uuid"].as_str().unwrap().to_owned();
    let console = console_of(&sim_dir, &abd_vm);
    assert!(
        console.contains("connected to the A3"),
        "the ABD's console shows no connection:\n{console}"
    );
    let qemus = processes_mentioning(&sim_dir.join("abd").join(&abd_vm).display().to_string());
    assert!(
        qemus.iter().any(|p| p.contains("qemu-system-x86_64")),
        "no qemu runs the ABD: {qemus:?}"
    );
    let inv = sim.inventory().await;
    let abd_rec = objects(&inv, "VM")
        .into_iter()
        .find(|v| v["uuid"] == abd_vm)
        .unwrap();
    let assigned = abd_rec["xenstore_data"]["vm-data/abd/assigned-ip"]
        .as_str()
        .unwrap_or_else(|| panic!("no assigned-ip: {}", abd_rec["xenstore_data"]))
        .to_owned();
    assert!(assigned.starts_with("127.0.5."), "{assigned}");
    // qemu forwards that address's port 22 to the guest (where the agent's SSH serves).
    let host = assigned.split('/').next().unwrap();
    std::net::TcpStream::connect_timeout(
        &format!("{host}:22").parse().unwrap(),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("qemu does not forward {host}:22: {e}"));
    assert_nothing_left(&inv);

    // Restore as a new VM: every disk bit-exact.
    let versions = a3.versions(&vm_name);
    assert_eq!(versions.len(), 1, "{versions:?}");
    let restore_started = Instant::now();
    let out = a3.ok(&["restore", &versions[0]["id"].to_string()]);
    assert!(out.contains("succeeded"), "{out}");
    let restore_took = restore_started.elapsed();
    let inv = sim.inventory().await;
    let restored = objects(&inv, "VM")
        .into_iter()
        .find(|v| {
            v["name_label"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{vm_name} (restored "))
        })
        .expect("the restored VM");
    let restored_vdis = disks(&inv, restored["uuid"].as_str().unwrap());
    assert_eq!(restored_vdis.len(), originals.len(), "as many disks");
    for (i, (vdi, original)) in restored_vdis.iter().zip(&originals).enumerate() {
        let got = sim.vdi_data(vdi).await;
        assert_eq!(got.len(), original.len(), "disk {i}: size");
        assert!(
            got == *original,
            "restored disk {i} differs from the original"
        );
    }
    assert_nothing_left(&inv);

    // Each disk's backup ran in the qemu guest, on the disk the simulator hot-plugged
    // through QMP (the A3 names it xvdb; the agent finds it by serial), and the simulator
    // met no error driving qemu (unplugs included).
    let console = console_of(&sim_dir, &abd_vm);
    let jobs = console.matches("backup starts").count();
    assert_eq!(jobs, vdis.len(), "one backup job per disk:\n{console}");
    assert_eq!(console.matches("job done").count(), jobs, "{console}");
    for line in console
        .lines()
        .filter(|l| l.contains("starts") || l.contains("job done"))
    {
        eprintln!("ABD console: {}", line.trim_end());
    }
    let sim_log = std::fs::read_to_string(sim_dir.with_extension("sim.log")).unwrap();
    let errors: Vec<&str> = sim_log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        errors.is_empty(),
        "the simulator logged errors: {errors:#?}"
    );
    let reported = console
        .lines()
        .find(|l| l.starts_with("abd-vm-data: assigned-ip="))
        .unwrap_or("(no report line)")
        .to_owned();

    // The A3's diag job on the qemu ABD: SSH through the forwarded port with the host key
    // the guest reported, the appliance's own checks, and a test disk hot-plugged through
    // QMP that the guest reads and hashes.
    let diag = a3.cli(&["abd", "diag", "--pool", &pool]);
    let table = String::from_utf8_lossy(&diag.stdout).into_owned();
    eprintln!("{table}");
    let line = |name: &str| -> String {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name) || l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no {name} line:\n{table}"))
            .to_owned()
    };
    for name in ["ssh", "quic", "tcp", "reverse path", "test disk"] {
        let l = line(name);
        assert!(
            l.contains("PASS"),
            "{l}\n{table}\n{}",
            String::from_utf8_lossy(&diag.stderr)
        );
    }
    assert!(line("ip").contains("10.0.2.15"), "{table}");

    // The `/sim/` kill takes the qemu down behind XAPI's back; the VM, still Running,
    // gets a new one, as a crashed guest restarts.
    let vm_dir = sim_dir.join("abd").join(&abd_vm).display().to_string();
    let qemu_pids = || -> Vec<String> {
        processes_mentioning(&vm_dir)
            .into_iter()
            .filter(|p| p.contains("qemu-system-x86_64"))
            .filter_map(|p| Some(p.split_once(':')?.0.to_owned()))
            .collect()
    };
    let before = qemu_pids();
    assert_eq!(before.len(), 1, "one qemu per ABD: {before:?}");
    sim.kill_agent(&abd_vm).await;
    wait_until(Duration::from_secs(60), || {
        let now = qemu_pids();
        (now.len() == 1 && now != before).then_some(())
    })
    .unwrap_or_else(|| panic!("no new qemu after the kill: {:?}", qemu_pids()));

    // No qemu outlives the simulator, stopped or killed; a restarted one boots the ABD it
    // records as Running again, from the disk it kept.
    sim.stop();
    assert_none_left(&sim_dir);
    let mut sim = Sim::start_qemu(&sim_dir, &base, 1, 1, "64MiB");
    wait_until(Duration::from_secs(60), || {
        (!qemu_pids().is_empty()).then_some(())
    })
    .expect("the restarted simulator did not boot the ABD again");
    sim.kill();
    assert_none_left(&sim_dir);
    eprintln!(
        "sim_abd_qemu: qemu start to agent connected {boot_to_connected:.1?}; backup (incl. \
         ABD provisioning and boot) {:.1}s, restore {:.1}s, whole test {:.1}s; guest report \
         {reported:?}, recorded {assigned}",
        backup_took.as_secs_f64(),
        restore_took.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
