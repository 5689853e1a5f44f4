//! `cargo xtask demo`: the product on its embedded default, a simulated pool.
//!
//! It starts `xapi-sim` (3 hosts, 4 VMs) with its process backend, so that ABD VMs run as
//! `abd-agent` processes, and the A3 on 127.0.1.1. It adds the pool through a *supporter*
//! host (the A3 follows `HOST_IS_SLAVE` to the master); the A3 creates `Alike_SR` (its own
//! NFS export) and imports the ABD template built by `cargo xtask image`. Then two VMs are
//! backed up at once through two ABDs, a guest writes, an incremental sends only what CBT
//! says changed, and a VM is restored as a new VM whose disks are checked bit-for-bit.
//! Everything listens on loopback only. The state stays in `target/demo/` for a look;
//! `--keep-running` leaves the servers up.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::setup::{self, target_dir, workspace_root};

/// The simulated hosts' first loopback address; the others follow (.12, .13).
const SIM_ADDRESS: &str = "127.0.0.11";
/// The A3's data port address, as the ABDs dial it.
const A3_DATA: &str = "127.0.1.1:0";
/// The simulated pool's root password.
const SIM_PASSWORD: &str = "demo-password";

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
    let bin = |name: &str| setup::target_dir().join("debug").join(name);
    let xva = target_dir().join("abd-image/abd.xva");
    if !xva.exists() {
        step("Building the ABD template (cargo xtask image), once");
        crate::image::build()?;
    }
    let root = workspace_root().join("target/demo");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("cannot clear {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;

    step("Starting a simulated XCP-ng pool: 3 hosts on 127.0.0.11-13, ABD VMs run as processes");
    let mut sim_child = Command::new(bin("xapi-sim"))
        .args(["serve", "--hosts", "3", "--vms", "4", "--port", "0"])
        .args(["--address", SIM_ADDRESS, "--password", SIM_PASSWORD])
        .arg("--state-dir")
        .arg(root.join("sim"))
        .arg("--abd-agent")
        .arg(bin("abd-agent"))
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

    step("Starting the A3 on 127.0.1.1 (QUIC data port, NFS for Alike_SR)");
    let a3_state = root.join("a3");
    let config = root.join("a3.toml");
    fs::write(
        &config,
        format!("abd_template = {:?}\n", xva.display().to_string()),
    )?;
    let a3 = Server {
        name: "a3-server",
        child: Command::new(bin("a3-server"))
            .arg("--state-dir")
            .arg(&a3_state)
            .arg("--config")
            .arg(&config)
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
            bail!(
                "a3-server {} failed:\n{text}\n(A3 log: {})",
                args.join(" "),
                root.join("a3.log").display()
            );
        }
        Ok(text)
    };
    let show = |args: &[&str]| -> anyhow::Result<String> {
        println!("$ a3-server {}", args.join(" "));
        let out = a3_cli(args)?;
        print!("{out}");
        Ok(out)
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
    let pw = pw.to_str().context("path")?;
    show(&[
        "host",
        "add",
        &supporter,
        "--user",
        "root",
        "--password-file",
        pw,
    ])?;
    show(&["pool", "list"])?;
    show(&["host", "list"])?;
    show(&["vm", "list"])?;
    let pools: Value = serde_json::from_str(&a3_cli(&["pool", "list", "--json"])?)?;
    let pool = pools[0]["uuid"]
        .as_str()
        .context("pool list: no pool")?
        .to_owned();

    step("Alike_SR (served by the A3 over NFS) and the hidden ABD template");
    let sim_api = SimApi::new(&ready)?;
    let template = wait_until(Duration::from_secs(120), "the ABD template", || {
        let inv = sim_api.inventory().ok()?;
        vms(&inv)
            .into_iter()
            .find(|vm| {
                vm["is_a_template"] == true
                    && vm["other_config"]["abd_template_version"].is_string()
            })
            .cloned()
    })
    .with_context(|| format!("see {}", root.join("a3.log").display()))?;
    show(&["sr", "status"])?;
    println!(
        "  template: {} (version {}, HideFromXenCenter={})",
        template["name_label"].as_str().unwrap_or("?"),
        template["other_config"]["abd_template_version"]
            .as_str()
            .unwrap_or("?"),
        template["other_config"]["HideFromXenCenter"]
            .as_str()
            .unwrap_or("?")
    );

    step("One static ABD address for the pool; a second ABD falls back to DHCP");
    show(&["abd", "ips", "set", "--pool", &pool, "127.0.3.1/8"])?;

    let inv = sim_api.inventory()?;
    let mut guests: Vec<(String, String)> = vms(&inv)
        .into_iter()
        .filter(|vm| {
            vm["is_a_template"] == false
                && vm["is_a_snapshot"] == false
                && vm["is_control_domain"] == false
        })
        .filter_map(|vm| {
            Some((
                vm["name_label"].as_str()?.to_owned(),
                vm["uuid"].as_str()?.to_owned(),
            ))
        })
        .collect();
    guests.sort();
    let [(name_a, uuid_a), (name_b, _), ..] = guests.as_slice() else {
        bail!("the simulated pool has fewer than two VMs");
    };
    step(&format!(
        "Backing up {name_a} and {name_b} at once: two ABDs from the template"
    ));
    show(&["backup", "run", name_a, name_b, "--concurrency", "2"])?;
    show(&["abd", "list", "--vms"])?;

    step(&format!(
        "{name_a}'s guest writes 1 MiB; the incremental reads only what CBT marks changed"
    ));
    let disks = disks_of(&inv, uuid_a)?;
    let (_, first_vdi) = disks.first().context("the VM has no disk")?;
    let patch: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    sim_api.write_vdi(first_vdi, 5 << 20, &patch)?;
    let mut originals = Vec::new();
    for (device, vdi) in &disks {
        let path = root.join(format!("{name_a}-{device}.raw"));
        sim_api.export_vdi(vdi, &path)?;
        originals.push((device.clone(), path));
    }
    show(&["backup", "run", name_a, "--concurrency", "1"])?;
    let jobs: Value = serde_json::from_str(&a3_cli(&["job", "list", "--json"])?)?;
    let last_job = jobs
        .as_array()
        .and_then(|j| j.iter().filter_map(|j| j["job"]["id"].as_u64()).max())
        .context("job list: no job")?;
    show(&["job", "log", &last_job.to_string()])?;
    show(&["version", "list", name_a])?;
    let latest = versions_latest(&a3_cli(&["version", "list", name_a, "--json"])?)?;

    step(&format!(
        "Restoring {name_a}'s latest version as a new VM and checking its disks bit-for-bit"
    ));
    show(&["restore", &latest])?;
    let inv = sim_api.inventory()?;
    let prefix = format!("{name_a} (restored ");
    let restored = vms(&inv)
        .into_iter()
        .find(|vm| {
            vm["name_label"]
                .as_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .context("no restored VM in the pool")?;
    let restored_uuid = restored["uuid"].as_str().context("restored VM uuid")?;
    let restored_disks = disks_of(&inv, restored_uuid)?;
    if restored_disks.len() != originals.len() {
        bail!(
            "the restored VM has {} disks, the original {}",
            restored_disks.len(),
            originals.len()
        );
    }
    for ((device, vdi), (_, original)) in restored_disks.iter().zip(&originals) {
        let path = root.join(format!("restored-{device}.raw"));
        sim_api.export_vdi(vdi, &path)?;
        if fs::read(&path)? != fs::read(original)? {
            bail!(
                "disk {device} did not restore bit-for-bit: compare {} with {}",
                path.display(),
                original.display()
            );
        }
        println!(
            "  disk {device}: {} bytes, identical to the backed-up disk",
            fs::metadata(&path)?.len()
        );
    }
    show(&["store", "stats"])?;

    step("Done");
    println!("  state dir: {}", root.display());
    println!("  logs: {}/{{sim,a3}}.log", root.display());
    if keep_running {
        println!("  the servers keep running; A3 API at {}", api.trim());
        println!(
            "  try: target/debug/a3-server --state-dir {} abd list --vms",
            a3_state.display()
        );
    }
    // The A3 first: a clean shutdown unplugs Alike_SR through the pool.
    drop(a3);
    drop(sim);
    Ok(())
}

/// The id of the newest version in `version list --json` output.
fn versions_latest(json: &str) -> anyhow::Result<String> {
    let versions: Value = serde_json::from_str(json).context("version list --json")?;
    let latest = versions
        .as_array()
        .and_then(|v| v.last())
        .context("the VM has no version")?;
    Ok(latest["id"].to_string())
}

/// Every VM record of a `/sim/inventory`.
fn vms(inv: &Value) -> Vec<&Value> {
    inv["objects"]["VM"]
        .as_object()
        .map(|m| m.values().collect())
        .unwrap_or_default()
}

/// A VM's disks as `(userdevice, VDI uuid)`, by userdevice.
fn disks_of(inv: &Value, vm_uuid: &str) -> anyhow::Result<Vec<(String, String)>> {
    let objects = &inv["objects"];
    let vm = vms(inv)
        .into_iter()
        .find(|vm| vm["uuid"] == vm_uuid)
        .with_context(|| format!("VM {vm_uuid} is not in the pool"))?;
    let mut disks: Vec<(String, String)> = vm["VBDs"]
        .as_array()
        .context("VM.VBDs")?
        .iter()
        .filter_map(|r| objects["VBD"].get(r.as_str()?))
        .filter(|vbd| vbd["type"] == "Disk")
        .filter_map(|vbd| {
            let vdi = objects["VDI"].get(vbd["VDI"].as_str()?)?;
            Some((
                vbd["userdevice"].as_str()?.to_owned(),
                vdi["uuid"].as_str()?.to_owned(),
            ))
        })
        .collect();
    disks.sort();
    Ok(disks)
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

    /// Every object of the pool (`GET /sim/inventory`).
    fn inventory(&self) -> anyhow::Result<Value> {
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
        serde_json::from_str(&inv).context("the simulator's inventory")
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
