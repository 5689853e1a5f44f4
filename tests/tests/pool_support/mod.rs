//! Set-up of the pool-workflow tests: `xapi-sim serve --abd-agent` (ABD VMs run as agent
//! processes), an A3 on its own loopback address with a small ABD template XVA, the CLI,
//! XAPI sessions, the simulator's `/sim/` control and inventory.

#![allow(dead_code)] // each test file uses a different part

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use a3_e2e::{ChildGuard, bin};
use a3_server::xapi::{Credentials, Endpoint, Session, Timeouts, Transport};
use a3_shared::xapi_wire::Value;
use serde_json::Value as Json;

/// The simulator's password.
pub const PASSWORD: &str = "pool-e2e-secret";

/// `(sim base address, A3 address)` no other test of this binary or another uses.
pub fn addresses() -> (String, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let a = 100 + pid % 100;
    let b = ((pid / 100) % 25) * 10 + n % 10;
    (
        format!("127.{}.{b}.11", a + 50),
        format!("127.1.{}.{}", a, b + 1),
    )
}

/// A running `xapi-sim serve --abd-agent`.
pub struct Sim {
    child: ChildGuard,
    _stdout: BufReader<ChildStdout>,
    /// Its state dir.
    pub dir: PathBuf,
    /// The master's address.
    pub address: String,
    /// The XAPI port.
    pub port: u16,
}

impl Sim {
    /// Starts a pool of `hosts` hosts and `vms` VMs of `disk` bytes each.
    pub fn start(dir: &Path, base: &str, hosts: usize, vms: usize, disk: &str) -> Sim {
        let agent = bin("abd-agent");
        let abd = [OsStr::new("--abd-agent"), agent.as_os_str()];
        Sim::start_with(dir, base, 0, hosts, vms, disk, &abd)
    }

    /// Starts a stopped pool again from its state dir, on the same address and port.
    pub fn restart(&mut self, base: &str, hosts: usize, vms: usize, disk: &str) {
        let agent = bin("abd-agent");
        let abd = [OsStr::new("--abd-agent"), agent.as_os_str()];
        *self = Sim::start_with(&self.dir, base, self.port, hosts, vms, disk, &abd);
    }

    /// Starts a pool whose ABD VMs boot their disk under qemu (`--abd-backend qemu`).
    pub fn start_qemu(dir: &Path, base: &str, hosts: usize, vms: usize, disk: &str) -> Sim {
        let abd = [OsStr::new("--abd-backend"), OsStr::new("qemu")];
        Sim::start_with(dir, base, 0, hosts, vms, disk, &abd)
    }

    fn start_with(
        dir: &Path,
        base: &str,
        port: u16,
        hosts: usize,
        vms: usize,
        disk: &str,
        abd: &[&OsStr],
    ) -> Sim {
        std::fs::create_dir_all(dir).unwrap();
        let mut child = ChildGuard::spawn(
            Command::new(bin("xapi-sim"))
                .args(["serve", "--hosts", &hosts.to_string()])
                .args(["--vms", &vms.to_string(), "--port", &port.to_string()])
                .args(["--address", base, "--password", PASSWORD])
                .args(["--disk-size", disk, "--state-dir"])
                .arg(dir)
                .args(abd)
                .stdout(Stdio::piped())
                .stderr(log_file(&dir.with_extension("sim.log"))),
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

    /// Stops the simulator as `xapi-sim serve` is stopped (SIGTERM); panics if it lingers.
    pub fn stop(&mut self) {
        let status = self.child.terminate(Duration::from_secs(120));
        assert!(
            status.is_some(),
            "xapi-sim did not stop within 120 s of SIGTERM"
        );
    }

    /// Kills the simulator with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// `address:port` of the master.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    /// A session on the master.
    pub async fn session(&self) -> Session {
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

    /// `METHOD /sim/{path}` with an optional body; the JSON answer.
    pub async fn control(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let http = http_client();
        let url = format!("https://{}:{}/sim/{path}", self.address, self.port);
        let req = match method {
            "GET" => http.get(url),
            "PUT" => http.put(url).body(body),
            "DELETE" => http.delete(url),
            _ => http.post(url).body(body),
        }
        .basic_auth("root", Some(PASSWORD));
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    /// Every object of every class.
    pub async fn inventory(&self) -> Json {
        let (status, body) = self.control("GET", "inventory", vec![]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// A VDI's bytes.
    pub async fn vdi_data(&self, vdi: &str) -> Vec<u8> {
        let (status, body) = self
            .control("GET", &format!("vdis/{vdi}/data"), vec![])
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        body
    }

    /// Writes into a VDI as a running guest would (CBT records it).
    pub async fn write_vdi(&self, vdi: &str, offset: u64, data: Vec<u8>) {
        let (status, body) = self
            .control("PUT", &format!("vdis/{vdi}/data?offset={offset}"), data)
            .await;
        assert!(status < 300, "{}", String::from_utf8_lossy(&body));
    }

    /// SIGKILLs an ABD VM's agent process behind XAPI's back; the pid it had.
    pub async fn kill_agent(&self, vm_uuid: &str) -> u32 {
        let (status, body) = self
            .control("POST", &format!("vms/{vm_uuid}/kill"), vec![])
            .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Json = serde_json::from_slice(&body).unwrap();
        let pid = answer["pid"].as_u64();
        pid.unwrap_or_else(|| panic!("no pid in the kill answer: {answer}")) as u32
    }

    /// The VM a restore of `name` made as a new VM ("NAME (restored …)"), if any.
    pub async fn restored_vm(&self, name: &str) -> Option<Json> {
        let prefix = format!("{name} (restored ");
        objects(&self.inventory().await, "VM")
            .into_iter()
            .find(|v| {
                v["name_label"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
    }

    /// Destroys a VM and its disks, as a test clears a restored VM away.
    pub async fn destroy_vm(&self, uuid: &str) {
        let s = self.session().await;
        let r = a3_server::xapi::ops::by_uuid(&s, "VM", uuid).await.unwrap();
        a3_server::xapi::ops::destroy_vm(&s, &r, false)
            .await
            .unwrap();
    }

    /// The directory the process backend keeps for a running ABD VM (its xenstore socket,
    /// its plugged disks under `dev/`).
    pub fn abd_dir(&self, vm_uuid: &str) -> PathBuf {
        self.dir.join("abd").join(vm_uuid)
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// Writes a small ABD template XVA (the real `ova.xml`, a 1 MiB disk) to `path`.
pub fn template_xva(path: &Path) {
    template_xva_version(path, abd_image::recipe::TEMPLATE_VERSION);
}

/// A small template XVA tagged `abd_template_version` = `version`, as a newer build of the
/// A3 would carry.
pub fn template_xva_version(path: &Path, version: &str) {
    let file = std::fs::File::create(path).unwrap();
    let size = 1 << 20;
    let mut ova = abd_image::template::template_ova(size);
    let Value::Struct(top) = &mut ova else {
        panic!("ova.xml is a struct")
    };
    let Some(Value::Array(objects)) = top.get_mut("objects") else {
        panic!("ova.xml has objects")
    };
    for o in objects.iter_mut() {
        let is_vm = o.get_str("class") == Some("VM");
        if let (true, Value::Struct(o)) = (is_vm, o)
            && let Some(Value::Struct(vm)) = o.get_mut("snapshot")
            && let Some(Value::Struct(other)) = vm.get_mut("other_config")
        {
            other.insert(
                abd_image::template::VERSION_KEY.to_owned(),
                Value::String(version.to_owned()),
            );
        }
    }
    let mut xva = a3_shared::xva::XvaWriter::new(file, &ova).unwrap();
    xva.write_disk(abd_image::template::DISK_REF, size, |off, buf| {
        buf.fill((off >> 20) as u8 + 1);
        Ok(())
    })
    .unwrap();
    xva.finish().unwrap();
}

/// An HTTP client for the simulator's `/sim/` (HTTPS, any certificate: the test made the
/// simulator) and the A3's API (plain HTTP on loopback), with no proxy.
fn http_client() -> reqwest::Client {
    let (tls, _) = a3_server::xapi::tls::pinned_client_config(None);
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A running A3 on its own loopback address.
pub struct A3 {
    /// Its state dir.
    pub state: PathBuf,
    /// Its address.
    pub ip: String,
    /// The server.
    pub child: ChildGuard,
}

impl A3 {
    /// Writes the config (template, DNS) and starts `a3-server serve`.
    pub fn start(state: &Path, ip: &str) -> A3 {
        A3::start_configured(state, ip, "")
    }

    /// [`A3::start`], with `extra` lines appended to the config.
    pub fn start_configured(state: &Path, ip: &str, extra: &str) -> A3 {
        let config = A3::config(state, ip, extra);
        A3::start_with(state, ip, &config, &format!("{ip}:0"))
    }

    /// [`A3::start`] with the crash-point build, aborting at `point`
    /// ([`a3_e2e::start_a3_crashing`]).
    pub fn start_crashing(state: &Path, ip: &str, point: &str) -> A3 {
        let config = state.with_extension("toml");
        std::fs::write(&config, A3::config(state, ip, "")).unwrap();
        A3 {
            state: state.to_owned(),
            ip: ip.to_owned(),
            child: a3_e2e::start_a3_crashing(state, &format!("{ip}:0"), Some(&config), point),
        }
    }

    /// The config text (template, DNS) plus `extra`; writes the template beside the state
    /// dir (inside, it would be the test's file among the A3's owner-only ones).
    fn config(state: &Path, ip: &str, extra: &str) -> String {
        std::fs::create_dir_all(state).unwrap();
        let xva = A3::template_path(state);
        if !xva.exists() {
            template_xva(&xva);
        }
        format!(
            "abd_template = {:?}\ndns = [\"{ip}:53\", \"127.0.0.53\"]\nabd_boot_timeout_secs = 60\n{extra}",
            xva.display().to_string()
        )
    }

    /// The template XVA the config of the A3 on `state` names.
    pub fn template_path(state: &Path) -> PathBuf {
        state.with_extension("xva")
    }

    /// Starts `a3-server serve` on `ip` with the config file text `config` and port 2811 on
    /// `data_listen`.
    pub fn start_with(state: &Path, ip: &str, config_text: &str, data_listen: &str) -> A3 {
        std::fs::create_dir_all(state).unwrap();
        let config = state.with_extension("toml");
        std::fs::write(&config, config_text).unwrap();
        A3 {
            state: state.to_owned(),
            ip: ip.to_owned(),
            child: a3_e2e::start_a3(state, data_listen, Some(&config)),
        }
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        a3_e2e::a3_log(&self.state)
    }

    /// Runs the CLI.
    pub fn cli(&self, args: &[&str]) -> Output {
        a3_e2e::a3_cli(&self.state, args)
    }

    /// Runs the CLI, asserting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        a3_e2e::a3_ok(&self.state, args)
    }

    /// Runs the CLI with `--json`, asserting success.
    pub fn json(&self, args: &[&str]) -> Json {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Adds the simulated pool; its uuid.
    pub fn add_pool(&self, sim: &Sim) -> String {
        let pw = self.state.with_extension("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let added = self.json(&[
            "host",
            "add",
            &sim.endpoint(),
            "--user",
            "root",
            "--password-file",
            pw.to_str().unwrap(),
        ]);
        added["pool"]["uuid"].as_str().unwrap().to_owned()
    }

    /// The ABD VMs.
    pub fn abd_vms(&self) -> Vec<Json> {
        self.json(&["abd", "list", "--vms"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// `GET path` on the A3's API, with the token when `authorized`: (status, body).
    pub async fn http_get(&self, path: &str, authorized: bool) -> (u16, String) {
        let url = std::fs::read_to_string(self.state.join("api.url")).unwrap();
        let mut req = http_client().get(format!("{}{path}", url.trim()));
        if authorized {
            let token = std::fs::read_to_string(self.state.join("api.token")).unwrap();
            req = req.bearer_auth(token.trim());
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Runs `backup run` to its end; Ok(stdout) or Err(stderr).
    pub fn backup(&self, vms: &[&str], concurrency: usize) -> Result<String, String> {
        let mut args = vec!["backup", "run"];
        args.extend_from_slice(vms);
        let c = concurrency.to_string();
        args.extend_from_slice(&["--concurrency", &c]);
        let out = self.cli(&args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The versions of a VM, oldest first.
    pub fn versions(&self, vm: &str) -> Vec<Json> {
        self.json(&["version", "list", vm])
            .as_array()
            .unwrap()
            .clone()
    }
}

/// The pool's `Alike_SR`, which the A3 creates on host add: an `nfs` SR on the A3's own
/// export. Panics (failing the test) when it does not appear within the deadline.
pub async fn alike_sr(sim: &Sim) -> String {
    let s = sim.session().await;
    let found = wait_until_async(Duration::from_secs(30), || async {
        let v = s
            .call("SR.get_by_name_label", &[Value::from("Alike_SR")])
            .await
            .ok()?;
        v.as_array()?.first()?.as_str().map(str::to_owned)
    })
    .await;
    let sr = found.expect("the A3 made no Alike_SR in the pool within 30 s");
    let ty = s
        .call("SR.get_type", &[Value::from(sr.as_str())])
        .await
        .unwrap();
    assert_eq!(ty.as_str(), Some("nfs"), "Alike_SR must be the A3's NFS SR");
    sr
}

/// Polls an async condition every 50 ms until it gives `Some`, or `None` after `timeout`.
pub async fn wait_until_async<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The user VMs of the simulated pool (not templates, snapshots, dom0s or ABDs):
/// `(uuid, name)`, by name.
pub fn user_vms(inv: &Json) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = objects(inv, "VM")
        .into_iter()
        .filter(|vm| {
            vm["is_a_template"] == false
                && vm["is_a_snapshot"] == false
                && vm["is_control_domain"] == false
                && vm["other_config"]["a3_abd"].is_null()
        })
        .map(|vm| {
            (
                vm["uuid"].as_str().unwrap().to_owned(),
                vm["name_label"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The records of a class in the `/sim/inventory` answer.
pub fn objects(inv: &Json, class: &str) -> Vec<Json> {
    match &inv["objects"][class] {
        Json::Object(m) => m.values().cloned().collect(),
        Json::Array(a) => a.clone(),
        _ => Vec::new(),
    }
}

/// What the A3 left behind in the pool: snapshots, VBDs tagged by a run, snapshot disks
/// with data, superseded CBT metadata, disks a run made that no VM uses (persistent ABDs and the latest CBT metadata of a
/// disk are not leftovers).
pub fn leftovers(inv: &Json) -> Vec<String> {
    let mut out = Vec::new();
    for vm in objects(inv, "VM") {
        if vm["is_a_snapshot"] != false {
            out.push(format!("the snapshot {}", vm["name_label"]));
        }
    }
    for vbd in objects(inv, "VBD") {
        if !vbd["other_config"]["a3_run"].is_null() {
            out.push(format!("a VBD of run {}", vbd["other_config"]["a3_run"]));
        }
    }
    // A disk's CBT chain needs the metadata of its latest backup only: older ones are
    // superseded.
    let mut bases: std::collections::HashMap<String, usize> = Default::default();
    for vdi in objects(inv, "VDI") {
        if vdi["is_a_snapshot"] == true && vdi["type"] != "cbt_metadata" {
            out.push(format!("the snapshot disk with data {}", vdi["name_label"]));
        }
        if vdi["type"] == "cbt_metadata" {
            *bases.entry(vdi["snapshot_of"].to_string()).or_default() += 1;
        } else if !vdi["other_config"]["a3_run"].is_null()
            && vdi["VBDs"].as_array().is_some_and(Vec::is_empty)
        {
            out.push(format!("the unused disk {}", vdi["name_label"]));
        }
    }
    for (of, n) in bases {
        if n > 1 {
            out.push(format!("{n} CBT metadata disks of the disk {of}"));
        }
    }
    out
}

/// Asserts the pool holds nothing the A3 left behind ([`leftovers`]).
pub fn assert_nothing_left(inv: &Json) {
    let left = leftovers(inv);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Waits until the pool holds nothing the A3 left behind: after a restart, the
/// reconciler removes what interrupted runs left, once they are marked failed.
pub async fn wait_nothing_left(sim: &Sim, timeout: Duration) {
    let clean = wait_until_async(timeout, || async {
        leftovers(&sim.inventory().await).is_empty().then_some(())
    })
    .await;
    if clean.is_none() {
        assert_nothing_left(&sim.inventory().await);
    }
}

/// Deterministic incompressible bytes (xorshift).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The disks of a VM in the inventory: `(userdevice, vdi uuid, size)` by userdevice.
pub fn disks_of(inv: &Json, vm_uuid: &str) -> Vec<(String, String, u64)> {
    let vm = objects(inv, "VM")
        .into_iter()
        .find(|v| v["uuid"] == vm_uuid)
        .unwrap();
    let vbds = objects(inv, "VBD");
    let vdis = inv["objects"]["VDI"].clone();
    let mut out: Vec<_> = vm["VBDs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            let vbd = vbds
                .iter()
                .find(|b| b["uuid"].is_string() && vbd_ref_is(inv, b, r))?;
            if vbd["type"] != "Disk" {
                return None;
            }
            let vdi = &vdis[vbd["VDI"].as_str()?];
            Some((
                vbd["userdevice"].as_str()?.to_owned(),
                vdi["uuid"].as_str()?.to_owned(),
                vdi["virtual_size"]
                    .as_u64()
                    .or_else(|| vdi["virtual_size"].as_str()?.parse().ok())?,
            ))
        })
        .collect();
    out.sort();
    out
}

fn vbd_ref_is(inv: &Json, vbd: &Json, r: &Json) -> bool {
    inv["objects"]["VBD"][r.as_str().unwrap_or("")]["uuid"] == vbd["uuid"]
}

/// The VM record of `uuid`.
pub fn vm_by_uuid(inv: &Json, uuid: &str) -> Json {
    objects(inv, "VM")
        .into_iter()
        .find(|v| v["uuid"] == uuid)
        .unwrap()
}

/// A number XAPI sends as a JSON number or a string.
pub fn num(v: &Json) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}
