//! The simulator's process backend for ABD VMs (CONTRACTS.md C2), end to end: `xapi-sim
//! serve --abd-agent` runs each started ABD VM as an `abd-agent` process that reads its
//! boot config from the VM's `xenstore_data` over the per-VM xenstore socket, connects to a
//! real A3 from the address it was given, reports it back into the VM record, reads a
//! hot-plugged snapshot disk by device id for a backup, and stops with its VM, its
//! simulator, or a `/sim/` kill, leaving no process behind.

mod datapath_util;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::Duration;

use a3_e2e::{ChildGuard, bin};
use a3_server::xapi::{Credentials, Endpoint, Session, Timeouts, Transport};
use a3_shared::xapi_wire::Value;
use datapath_util::A3;
use serde_json::Value as Json;

const PASSWORD: &str = "abd-process-secret";

/// A `xapi-sim serve --abd-agent` process on a state dir that outlives it.
struct Sim {
    child: ChildGuard,
    _stdout: BufReader<ChildStdout>,
    dir: PathBuf,
    address: String,
    port: u16,
}

impl Sim {
    fn start(dir: &Path, address: &str) -> Sim {
        let mut child = ChildGuard::spawn(
            Command::new(bin("xapi-sim"))
                .args(["serve", "--hosts", "1", "--vms", "2", "--port", "0"])
                .args(["--address", address, "--password", PASSWORD])
                .args(["--disk-size", "6MiB", "--state-dir"])
                .arg(dir)
                .arg("--abd-agent")
                .arg(bin("abd-agent"))
                .stdout(Stdio::piped())
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.with_extension("sim.log"))
                        .unwrap(),
                ),
        );
        let mut stdout = BufReader::new(child.child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Json = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("xapi-sim did not print its ready line ({e}): {line:?}"));
        Sim {
            child,
            _stdout: stdout,
            dir: dir.to_owned(),
            address: ready["master"].as_str().unwrap().to_owned(),
            port: ready["port"].as_u64().unwrap() as u16,
        }
    }

    async fn session(&self) -> Session {
        let transport = Transport::new(
            Endpoint::new(&self.address, self.port),
            None,
            Timeouts::default(),
        )
        .unwrap();
        let creds = Credentials {
            username: "root".into(),
            password: PASSWORD.into(),
        };
        Session::login(transport, creds).await.unwrap()
    }

    /// A `/sim/` control request.
    async fn control(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        let (tls, _) = a3_server::xapi::tls::pinned_client_config(None);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .build()
            .unwrap();
        let url = format!("https://{}:{}/sim/{path}", self.address, self.port);
        let resp = http
            .request(method, &url)
            .basic_auth("root", Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        resp
    }

    /// The directory the backend keeps for a running ABD.
    fn vm_dir(&self, uuid: &str) -> PathBuf {
        self.dir.join("abd").join(uuid)
    }
}

/// Polls `f` every 50 ms until it yields, panicking with `what` after `secs` seconds.
async fn until<T, F: Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The enrollment file `a3-server abd enroll` writes, as `key = "value"` pairs.
fn enroll(a3: &A3, id: &str, dir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(a3.enroll(id, dir)).unwrap();
    text.lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// Where the A3 sees `id` connected from, if it is.
fn connected_from(a3: &A3, id: &str) -> Option<String> {
    let list: Json = serde_json::from_str(&a3.ok(&["abd", "list", "--json"])).unwrap();
    list.as_array()?
        .iter()
        .find(|a| a["id"] == id)
        .and_then(|a| a["connected_from"].as_str().map(str::to_owned))
}

/// Creates and starts an ABD VM whose boot config comes from `enrolled`, with `ip`.
async fn start_abd(
    s: &Session,
    name: &str,
    enrolled: &BTreeMap<String, String>,
    ip: &str,
) -> String {
    let mut data = BTreeMap::new();
    for (key, field) in [
        ("a3", "a3_address"),
        ("name", "server_name"),
        ("id", "id"),
        ("token", "token"),
        ("ca", "ca_pin"),
    ] {
        data.insert(
            format!("vm-data/abd/{key}"),
            Value::from(enrolled[field].as_str()),
        );
    }
    data.insert("vm-data/abd/ip".into(), Value::from(ip));
    data.insert("vm-data/abd/dns".into(), Value::from("127.0.0.53"));
    let mut rec = BTreeMap::new();
    rec.insert("name_label".to_owned(), Value::from(name));
    rec.insert("xenstore_data".to_owned(), Value::Struct(data));
    let vm = s.call("VM.create", &[Value::Struct(rec)]).await.unwrap();
    let vm = vm.as_str().unwrap().to_owned();
    s.call(
        "VM.start",
        &[vm.as_str().into(), false.into(), false.into()],
    )
    .await
    .unwrap();
    vm
}

async fn str_call(s: &Session, method: &str, args: &[Value]) -> String {
    let v = s.call(method, args).await.unwrap();
    v.as_str()
        .unwrap_or_else(|| panic!("{method}: {v:?}"))
        .to_owned()
}

async fn xenstore_key(s: &Session, vm: &str, key: &str) -> Option<String> {
    let data = s.call("VM.get_xenstore_data", &[vm.into()]).await.unwrap();
    data.get_str(key).map(str::to_owned)
}

/// Pids of agent processes serving VMs of the simulator in `sim_dir`.
fn agent_pids(sim_dir: &Path) -> Vec<u32> {
    let needle = format!("{}/abd/", sim_dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abd_vms_run_as_agent_processes() {
    let scratch = datapath_util::scratch();
    let pid = std::process::id();
    let static_ip = format!("127.0.3.{}", 20 + pid % 200);
    let a3 = A3::start(
        &scratch.path().join("a3"),
        &format!("127.0.1.{}:0", 60 + pid % 60),
    );
    let fixed = enroll(&a3, "abd-fixed", scratch.path());
    let leased = enroll(&a3, "abd-leased", scratch.path());
    let sim_dir = scratch.path().join("sim");
    std::fs::create_dir_all(&sim_dir).unwrap();
    let sim_addr = format!("127.0.2.{}", 20 + pid % 200);
    let sim = Sim::start(&sim_dir, &sim_addr);
    let s = sim.session().await;

    // Two ABDs: a static address from the A3's list, and DHCP from the simulator.
    let vm_fixed = start_abd(&s, "ABD fixed", &fixed, &format!("{static_ip}/24")).await;
    let vm_leased = start_abd(&s, "ABD leased", &leased, "dhcp").await;
    let from = until(60, "the static ABD connects", || async {
        connected_from(&a3, "abd-fixed")
    })
    .await;
    assert!(
        from.starts_with(&format!("{static_ip}:")),
        "connected from {from}"
    );
    let assigned = until(30, "assigned-ip of the static ABD", || {
        xenstore_key(&s, &vm_fixed, "vm-data/abd/assigned-ip")
    })
    .await;
    assert_eq!(assigned, format!("{static_ip}/24"));
    let lease = until(60, "assigned-ip of the DHCP ABD", || {
        xenstore_key(&s, &vm_leased, "vm-data/abd/assigned-ip")
    })
    .await;
    assert!(
        lease.starts_with("127.0.4.") && lease.ends_with("/24"),
        "{lease}"
    );
    let lease_ip = lease.trim_end_matches("/24").to_owned();
    let from = until(60, "the DHCP ABD connects", || async {
        connected_from(&a3, "abd-leased")
    })
    .await;
    assert!(
        from.starts_with(&format!("{lease_ip}:")),
        "connected from {from}"
    );

    // Hot-plug a snapshot of a demo VM's disk, read-only, as xvdb of the static ABD.
    let demo = s
        .call("VM.get_by_name_label", &["demo-vm-001".into()])
        .await
        .unwrap();
    let demo_vm = demo.as_array().unwrap()[0].as_str().unwrap().to_owned();
    let demo_vbds = s
        .call("VM.get_VBDs", &[demo_vm.as_str().into()])
        .await
        .unwrap();
    let demo_vbd = demo_vbds.as_array().unwrap()[0]
        .as_str()
        .unwrap()
        .to_owned();
    let disk = str_call(&s, "VBD.get_VDI", &[demo_vbd.as_str().into()]).await;
    let snap = str_call(
        &s,
        "VDI.snapshot",
        &[disk.as_str().into(), Value::Struct(BTreeMap::new())],
    )
    .await;
    let snap_uuid = str_call(&s, "VDI.get_uuid", &[snap.as_str().into()]).await;
    let mut vbd_rec = BTreeMap::new();
    for (k, v) in [
        ("VM", Value::from(vm_fixed.as_str())),
        ("VDI", Value::from(snap.as_str())),
        ("userdevice", Value::from("1")),
        ("mode", Value::from("RO")),
        ("type", Value::from("Disk")),
        ("bootable", Value::Bool(false)),
        ("empty", Value::Bool(false)),
    ] {
        vbd_rec.insert(k.to_owned(), v);
    }
    let vbd = str_call(&s, "VBD.create", &[Value::Struct(vbd_rec)]).await;
    s.call("VBD.plug", &[vbd.as_str().into()]).await.unwrap();
    let fixed_uuid = str_call(&s, "VM.get_uuid", &[vm_fixed.as_str().into()]).await;
    let xvdb = sim.vm_dir(&fixed_uuid).join("dev/xvdb");
    until(30, "dev/xvdb appears", || async {
        xvdb.exists().then_some(())
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&xvdb).unwrap().permissions().mode() & 0o777,
        0o444
    );

    // Back it up by device id through the A3, restore it, and compare with the VDI.
    let version = a3.backup("abd-fixed", Path::new("xvdb"), "demo-disk", None);
    let restored = scratch.path().join("restored.img");
    let out = a3.restore("abd-fixed", &version, &restored);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = sim
        .control(reqwest::Method::GET, &format!("vdis/{snap_uuid}/data"))
        .await
        .bytes()
        .await
        .unwrap();
    let got = std::fs::read(&restored).unwrap();
    assert_eq!(got.len(), want.len());
    assert!(
        got == want[..],
        "the restored disk differs from the snapshot VDI"
    );

    // Restore onto a blank VDI plugged read-write as xvdc: unplug writes it back.
    let sr = str_call(&s, "VDI.get_SR", &[snap.as_str().into()]).await;
    let mut vdi_rec = BTreeMap::new();
    vdi_rec.insert("name_label".to_owned(), Value::from("restore target"));
    vdi_rec.insert("SR".to_owned(), Value::from(sr.as_str()));
    vdi_rec.insert("virtual_size".to_owned(), Value::Int(want.len() as i64));
    let blank = str_call(&s, "VDI.create", &[Value::Struct(vdi_rec)]).await;
    let blank_uuid = str_call(&s, "VDI.get_uuid", &[blank.as_str().into()]).await;
    let mut rw_rec = BTreeMap::new();
    for (k, v) in [
        ("VM", Value::from(vm_fixed.as_str())),
        ("VDI", Value::from(blank.as_str())),
        ("userdevice", Value::from("2")),
        ("mode", Value::from("RW")),
        ("type", Value::from("Disk")),
    ] {
        rw_rec.insert(k.to_owned(), v);
    }
    let rw_vbd = str_call(&s, "VBD.create", &[Value::Struct(rw_rec)]).await;
    s.call("VBD.plug", &[rw_vbd.as_str().into()]).await.unwrap();
    let xvdc = sim.vm_dir(&fixed_uuid).join("dev/xvdc");
    until(30, "dev/xvdc appears", || async {
        xvdc.exists().then_some(())
    })
    .await;
    let out = a3.restore("abd-fixed", &version, Path::new("xvdc"));
    assert!(
        out.status.success(),
        "restore to xvdc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.call("VBD.unplug", &[rw_vbd.as_str().into()])
        .await
        .unwrap();
    until(30, "dev/xvdc disappears", || async {
        (!xvdc.exists()).then_some(())
    })
    .await;
    let written = sim
        .control(reqwest::Method::GET, &format!("vdis/{blank_uuid}/data"))
        .await
        .bytes()
        .await
        .unwrap();
    assert!(
        written == want,
        "the VDI restored through xvdc differs from the snapshot"
    );
    s.call("VBD.destroy", &[rw_vbd.as_str().into()])
        .await
        .unwrap();

    s.call("VBD.unplug", &[vbd.as_str().into()]).await.unwrap();
    until(30, "dev/xvdb disappears", || async {
        (!xvdb.exists()).then_some(())
    })
    .await;
    s.call("VBD.destroy", &[vbd.as_str().into()]).await.unwrap();

    // kill -9 behind XAPI's back: the VM restarts its agent, which reconnects.
    let killed = sim
        .control(reqwest::Method::POST, &format!("vms/{fixed_uuid}/kill"))
        .await
        .json::<Json>()
        .await
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    until(30, "the killed agent is gone and another runs", || async {
        let pids = agent_pids(&sim_dir);
        (!pids.contains(&killed) && pids.len() == 2).then_some(())
    })
    .await;
    until(60, "the restarted agent reconnects", || async {
        connected_from(&a3, "abd-fixed").filter(|f| f.starts_with(&format!("{static_ip}:")))
    })
    .await;

    // A simulator restart: its agents go with it, and come back with the same lease.
    drop(s);
    let Sim { mut child, .. } = sim;
    child
        .terminate(Duration::from_secs(30))
        .expect("xapi-sim stops on SIGTERM");
    assert_eq!(
        agent_pids(&sim_dir),
        Vec::<u32>::new(),
        "agents outlived the simulator"
    );
    let sim = Sim::start(&sim_dir, &sim_addr);
    let s = sim.session().await;
    until(60, "both agents respawn", || async {
        (agent_pids(&sim_dir).len() == 2).then_some(())
    })
    .await;
    let again = until(60, "the DHCP ABD reconnects", || async {
        connected_from(&a3, "abd-leased").filter(|f| f.starts_with(&format!("{lease_ip}:")))
    })
    .await;
    assert!(again.starts_with("127.0.4."));

    // Shutdown stops the processes, frees the lease and removes the VM's directory.
    s.call("VM.clean_shutdown", &[vm_fixed.as_str().into()])
        .await
        .unwrap();
    s.call("VM.hard_shutdown", &[vm_leased.as_str().into()])
        .await
        .unwrap();
    until(30, "no agent runs after shutdown", || async {
        agent_pids(&sim_dir).is_empty().then_some(())
    })
    .await;
    until(10, "the VM directory is removed", || async {
        (!sim.vm_dir(&fixed_uuid).exists()).then_some(())
    })
    .await;
    until(30, "the A3 sees both ABDs gone", || async {
        (connected_from(&a3, "abd-fixed").is_none() && connected_from(&a3, "abd-leased").is_none())
            .then_some(())
    })
    .await;
}
