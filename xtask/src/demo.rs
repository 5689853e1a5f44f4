//! `cargo xtask demo`: the product on its embedded default, a simulated pool.
//!
//! It starts `xapi-sim` (3 hosts), the A3, adds the pool through a *supporter* host (the A3
//! follows `HOST_IS_SLAVE` to the master), lists what it discovered, then runs the data
//! path: an enrolled ABD agent backs up a VM disk into the deduplicating store over QUIC,
//! the guest writes some blocks, a second backup sends only what changed, and both versions
//! restore bit-for-bit. Everything listens on loopback only. The state stays in
//! `target/demo/` for a look; `--keep-running` leaves the servers up.
//!
//! Until the pool integration lands, the ABD is an `abd-agent` process on this machine and
//! reads the VM's disk as exported through the pool's HTTP handler, rather than through a
//! VBD hot-plugged into an ABD VM.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::setup::{self, workspace_root};

/// The simulated hosts' first loopback address; the others follow (.12, .13).
const SIM_ADDRESS: &str = "127.0.0.11";
/// The A3's data port address, as the ABDs dial it.
const A3_DATA: &str = "127.0.1.1:0";
/// The simulated pool's root password.
const SIM_PASSWORD: &str = "demo-password";
/// The demo's ABD.
const ABD_ID: &str = "demo-abd";

/// A child process stopped when the demo ends, unless the user keeps it running.
struct Server {
    name: &'static str,
    child: Child,
    keep: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.keep {
            // SIGTERM first: the A3 shuts down cleanly on it.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            eprintln!("demo: {} did not stop on SIGTERM; killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the demo.
pub fn run(keep_running: bool) -> anyhow::Result<()> {
    setup::cargo(&["build", "--workspace", "--bins"])?;
    let bin = |name: &str| workspace_root().join("target/debug").join(name);
    let root = workspace_root().join("target/demo");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("cannot clear {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;

    step("Starting a simulated XCP-ng pool: 3 hosts on 127.0.0.11-13");
    let mut sim_child = Command::new(bin("xapi-sim"))
        .args(["serve", "--hosts", "3", "--vms", "4", "--port", "0"])
        .args(["--address", SIM_ADDRESS, "--password", SIM_PASSWORD])
        .arg("--state-dir")
        .arg(root.join("sim"))
        .stdout(Stdio::piped())
        .stderr(fs::File::create(root.join("sim.log"))?)
        .spawn()
        .context("cannot start xapi-sim")?;
    let mut ready = String::new();
    BufReader::new(sim_child.stdout.take().context("sim stdout")?).read_line(&mut ready)?;
    let sim = Server {
        name: "xapi-sim",
        child: sim_child,
        keep: keep_running,
    };
    let ready: Value = serde_json::from_str(&ready).with_context(|| {
        format!(
            "xapi-sim did not start; see {}",
            root.join("sim.log").display()
        )
    })?;
    let port = ready["port"].as_u64().context("ready line: port")?;
    let hosts = ready["hosts"].as_array().context("ready line: hosts")?;
    for h in hosts {
        println!(
            "  host {}  {}",
            h["address"].as_str().unwrap_or("?"),
            h["url"].as_str().unwrap_or("?")
        );
    }
    println!("  master: {}", ready["master"].as_str().unwrap_or("?"));

    step("Starting the A3");
    let a3_state = root.join("a3");
    let a3 = Server {
        name: "a3-server",
        child: Command::new(bin("a3-server"))
            .arg("--state-dir")
            .arg(&a3_state)
            .args([
                "serve",
                "--http-listen",
                "127.0.0.1:0",
                "--data-listen",
                A3_DATA,
            ])
            .stderr(fs::File::create(root.join("a3.log"))?)
            .spawn()
            .context("cannot start a3-server")?,
        keep: keep_running,
    };
    let api = wait_for_file(&a3_state.join("api.url"), Duration::from_secs(30))?;
    let data = wait_for_file(&a3_state.join("data.addr"), Duration::from_secs(30))?;
    println!("  API: {}  data port (QUIC): {}", api.trim(), data.trim());

    let a3_cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(bin("a3-server"))
            .arg("--state-dir")
            .arg(&a3_state)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("cannot run a3-server {}", args.join(" ")))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!("a3-server {} failed:\n{text}", args.join(" "));
        }
        Ok(text)
    };
    let show = |args: &[&str]| -> anyhow::Result<()> {
        println!("$ a3-server {}", args.join(" "));
        print!("{}", a3_cli(args)?);
        Ok(())
    };

    let supporter = format!(
        "{}:{port}",
        hosts
            .iter()
            .filter_map(|h| h["address"].as_str())
            .find(|a| Some(*a) != ready["master"].as_str())
            .context("the pool has no supporter")?
    );
    step(&format!(
        "Adding the pool through a supporter ({supporter}): the A3 follows HOST_IS_SLAVE to the master"
    ));
    let pw = root.join("pool-password");
    fs::write(&pw, SIM_PASSWORD)?;
    show(&[
        "host",
        "add",
        &supporter,
        "--user",
        "root",
        "--password-file",
        pw.to_str().context("path")?,
    ])?;
    show(&["pool", "list"])?;
    show(&["host", "list"])?;
    show(&["vm", "list"])?;

    step("Enrolling an ABD and starting its agent (one-time token, client certificate)");
    let agent_cfg = root.join("abd.toml");
    show(&[
        "abd",
        "enroll",
        "--id",
        ABD_ID,
        "--out",
        agent_cfg.to_str().context("path")?,
    ])?;
    let agent = Server {
        name: "abd-agent",
        child: Command::new(bin("abd-agent"))
            .arg("run")
            .arg("--config")
            .arg(&agent_cfg)
            .stderr(fs::File::create(root.join("agent.log"))?)
            .spawn()
            .context("cannot start abd-agent")?,
        keep: keep_running,
    };
    wait_until(Duration::from_secs(30), "the agent to connect", || {
        let list: Value = serde_json::from_str(&a3_cli(&["abd", "list", "--json"]).ok()?).ok()?;
        let connected = list
            .as_array()?
            .iter()
            .any(|a| a["id"] == ABD_ID && a["connected"] == true);
        connected.then_some(())
    })?;
    show(&["abd", "list"])?;

    // The first demo VM's first disk, as the pool exports it.
    let sim_api = SimApi::new(&ready)?;
    let (vm_name, vdi) = sim_api.first_vm_disk()?;
    let disk_name = format!("{vm_name}-disk0");
    let before = root.join(format!("{disk_name}-v1.raw"));
    step(&format!(
        "Backing up {vm_name}'s first disk (VDI {vdi}) through the ABD"
    ));
    sim_api.export_vdi(&vdi, &before)?;
    let backup = |image: &Path| -> anyhow::Result<String> {
        let path = image.to_str().context("path")?;
        let version = a3_cli(&[
            "disk", "backup", "--abd", ABD_ID, "--path", path, "--disk", &disk_name,
        ])?;
        let version = version.trim().to_owned();
        println!("  version {version}");
        Ok(version)
    };
    let v1 = backup(&before)?;

    step("The guest writes 1 MiB; the next backup sends only the changed blocks");
    let size = fs::metadata(&before)?.len();
    let patch: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    sim_api.write_vdi(&vdi, size / 3, &patch)?;
    let after = root.join(format!("{disk_name}-v2.raw"));
    sim_api.export_vdi(&vdi, &after)?;
    let v2 = backup(&after)?;
    show(&["disk", "versions", "--disk", &disk_name])?;

    step("Restoring both versions and checking them bit-for-bit");
    for (version, original) in [(&v1, &before), (&v2, &after)] {
        let out = root.join(format!("restored-{version}.raw"));
        let out_str = out.to_str().context("path")?;
        a3_cli(&[
            "disk", "restore", version, "--abd", ABD_ID, "--path", out_str,
        ])?;
        if fs::read(&out)? != fs::read(original)? {
            bail!(
                "version {version} did not restore bit-for-bit: compare {} with {}",
                out.display(),
                original.display()
            );
        }
        println!(
            "  version {version}: {} bytes, identical to the disk it was taken from",
            size
        );
    }
    show(&["store", "stats"])?;

    step("Done");
    println!("  state dir: {}", root.display());
    println!("  logs: {}/{{sim,a3,agent}}.log", root.display());
    if keep_running {
        println!("  the servers keep running; A3 API at {}", api.trim());
        println!(
            "  try: target/debug/a3-server --state-dir {} vm list",
            a3_state.display()
        );
    }
    drop(agent);
    drop(a3);
    drop(sim);
    Ok(())
}

fn step(what: &str) {
    println!("\n== {what}");
}

fn wait_for_file(path: &Path, timeout: Duration) -> anyhow::Result<String> {
    wait_until(timeout, &format!("{}", path.display()), || {
        fs::read_to_string(path)
            .ok()
            .filter(|s| !s.trim().is_empty())
    })
}

fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The simulator's control API (`/sim/`), standing in for the guest and the hypervisor.
struct SimApi {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl SimApi {
    fn new(ready: &Value) -> anyhow::Result<SimApi> {
        let base = ready["hosts"][0]["url"]
            .as_str()
            .context("ready line: url")?
            .trim_end_matches('/')
            .to_owned();
        let user = ready["username"].as_str().unwrap_or("root");
        let pw = ready["password"].as_str().unwrap_or(SIM_PASSWORD);
        use base64::Engine;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        );
        // The simulator is our own child on loopback with a fresh self-signed certificate.
        let tls = ureq::tls::TlsConfig::builder()
            .disable_verification(true)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .build()
            .new_agent();
        Ok(SimApi { base, auth, agent })
    }

    /// The first demo VM (by name) and the uuid of its first disk (by `userdevice`).
    fn first_vm_disk(&self) -> anyhow::Result<(String, String)> {
        let inv = self
            .agent
            .get(format!("{}/sim/inventory", self.base))
            .header("Authorization", &self.auth)
            .call()
            .context("reading the simulator's inventory")?
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()?;
        let inv: Value = serde_json::from_str(&inv).context("the simulator's inventory")?;
        let objects = &inv["objects"];
        let mut vms: Vec<(&str, &Value)> = objects["VM"]
            .as_object()
            .context("inventory: VM")?
            .values()
            .filter(|vm| {
                vm["is_a_template"] == false
                    && vm["is_a_snapshot"] == false
                    && vm["is_control_domain"] == false
            })
            .filter_map(|vm| Some((vm["name_label"].as_str()?, vm)))
            .collect();
        vms.sort_by_key(|(name, _)| *name);
        let (name, vm) = vms.first().context("the simulated pool has no VM")?;
        let mut disks: Vec<(&str, &str)> = vm["VBDs"]
            .as_array()
            .context("VM.VBDs")?
            .iter()
            .filter_map(|r| objects["VBD"].get(r.as_str()?))
            .filter(|vbd| vbd["type"] == "Disk")
            .filter_map(|vbd| {
                let vdi = objects["VDI"].get(vbd["VDI"].as_str()?)?;
                Some((vbd["userdevice"].as_str()?, vdi["uuid"].as_str()?))
            })
            .collect();
        disks.sort();
        let (_, vdi) = disks.first().context("the first VM has no disk")?;
        Ok(((*name).to_owned(), (*vdi).to_owned()))
    }

    fn export_vdi(&self, vdi: &str, to: &Path) -> anyhow::Result<()> {
        let mut resp = self
            .agent
            .get(format!("{}/sim/vdis/{vdi}/data", self.base))
            .header("Authorization", &self.auth)
            .call()
            .with_context(|| format!("reading VDI {vdi} from the simulator"))?;
        let mut reader = resp.body_mut().as_reader();
        let mut file = fs::File::create(to)?;
        std::io::copy(&mut reader, &mut file)?;
        Ok(())
    }

    fn write_vdi(&self, vdi: &str, offset: u64, data: &[u8]) -> anyhow::Result<()> {
        self.agent
            .put(format!("{}/sim/vdis/{vdi}/data?offset={offset}", self.base))
            .header("Authorization", &self.auth)
            .send(data)
            .with_context(|| format!("writing VDI {vdi} through the simulator"))?;
        Ok(())
    }
}
