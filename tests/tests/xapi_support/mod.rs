//! Set-up shared by the XAPI end-to-end tests: a simulated pool (`xapi-sim serve`) and an
//! A3 (`a3-server serve`) as processes, the A3's CLI, the simulator's `/sim/` control API,
//! and XAPI sessions through the A3's own client.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use a3_e2e::{ChildGuard, bin, wait_until};
use a3_server::xapi::records::VmRecord;
use a3_server::xapi::{Credentials, Endpoint, Fingerprint, Session, Timeouts, Transport};
use serde_json::Value as Json;

/// A base address no other test (in this or another test binary) uses:
/// `127.<200+pid%50>.<…>.11`, the hosts taking .11, .12, …
fn unique_base() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!(
        "127.{}.{}.11",
        200 + pid % 50,
        ((pid / 50) % 25) * 10 + n % 10
    )
}

/// Writes a child's output into `path`, and prints it if the test fails.
struct LogFile(PathBuf);

impl Drop for LogFile {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("---- {} ----\n{text}", self.0.display());
        }
    }
}

/// One simulated host as the ready line describes it.
pub struct SimHost {
    /// Its address.
    pub address: String,
    /// Its uuid.
    pub uuid: String,
    /// Its certificate's SHA-256.
    pub fingerprint: Fingerprint,
}

/// A running `xapi-sim serve`.
pub struct SimPool {
    _log: LogFile,
    child: ChildGuard,
    _stdout: BufReader<ChildStdout>,
    /// The state directory.
    pub dir: tempfile::TempDir,
    /// The port every host listens on.
    pub port: u16,
    /// The hosts, in address order (host 0 is the first master).
    pub hosts: Vec<SimHost>,
    /// The XAPI user.
    pub username: String,
    /// The XAPI password.
    pub password: String,
}

impl SimPool {
    /// Starts a pool of `hosts` hosts and `vms` demo VMs.
    pub fn start(hosts: usize, vms: usize) -> SimPool {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("xapi-sim.log");
        let mut child = ChildGuard::spawn(
            Command::new(bin("xapi-sim"))
                .args([
                    "serve",
                    "--hosts",
                    &hosts.to_string(),
                    "--vms",
                    &vms.to_string(),
                ])
                .args(["--port", "0", "--address", &unique_base()])
                .args(["--password", "e2e-secret", "--disk-size", "1MiB"])
                .arg("--state-dir")
                .arg(dir.path())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let log = LogFile(log);
        let mut stdout = BufReader::new(child.child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Json = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("xapi-sim did not print its ready line ({e}): {line:?}"));
        let hosts = ready["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| SimHost {
                address: h["address"].as_str().unwrap().to_owned(),
                uuid: h["uuid"].as_str().unwrap().to_owned(),
                fingerprint: h["fingerprint"].as_str().unwrap().parse().unwrap(),
            })
            .collect();
        SimPool {
            _log: log,
            child,
            _stdout: stdout,
            dir,
            port: ready["port"].as_u64().unwrap() as u16,
            hosts,
            username: ready["username"].as_str().unwrap().to_owned(),
            password: ready["password"].as_str().unwrap().to_owned(),
        }
    }

    /// Host `i` as the A3's CLI takes it: `address:port`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("{}:{}", self.hosts[i].address, self.port)
    }

    /// `POST /sim/{path}` through host `via` (a host cannot take itself down).
    pub async fn control(&self, via: usize, path: &str) -> Json {
        let (tls, _) = a3_server::xapi::tls::pinned_client_config(None);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let url = format!("https://{}/sim/{path}", self.endpoint(via));
        let resp = http
            .post(&url)
            .basic_auth(&self.username, Some(&self.password))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = resp.status();
        let body: Json = resp.json().await.unwrap();
        assert!(status.is_success(), "POST {url}: {status} {body}");
        body
    }

    /// An XAPI session on host `i` through the A3's client (first contact: no pin).
    pub async fn session(&self, i: usize) -> Session {
        let endpoint = Endpoint::new(&self.hosts[i].address, self.port);
        let transport = Transport::new(endpoint, None, Timeouts::default()).unwrap();
        Session::login(transport, self.credentials()).await.unwrap()
    }

    /// The pool's credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            username: self.username.clone(),
            password: self.password.clone(),
        }
    }
}

/// A halted demo VM's ref (one that can be cloned).
pub async fn halted_vm(session: &Session) -> String {
    session
        .get_all_records::<VmRecord>()
        .await
        .unwrap()
        .into_iter()
        .find(|(_, v)| {
            v.power_state == "Halted"
                && !v.is_a_template
                && !v.is_a_snapshot
                && !v.is_control_domain
        })
        .map(|(r, _)| r)
        .expect("the demo pool has a halted VM")
}

/// A running `a3-server serve` with its own state dir.
pub struct A3 {
    _log: LogFile,
    child: ChildGuard,
    /// The state dir.
    pub dir: tempfile::TempDir,
}

impl A3 {
    /// Starts the server and waits until its API is up.
    pub fn start() -> A3 {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a3-server.log");
        let child = ChildGuard::spawn(
            Command::new(bin("a3-server"))
                .args([
                    "serve",
                    "--http-listen",
                    "127.0.0.1:0",
                    "--data-listen",
                    "127.0.0.1:0",
                ])
                .env("A3_STATE_DIR", dir.path())
                .env_remove("A3_CONFIG")
                .env_remove("A3_API")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap()),
        );
        let a3 = A3 {
            _log: LogFile(log),
            child,
            dir,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            a3.dir.path().join("api.url").exists().then_some(())
        });
        assert!(ready.is_some(), "a3-server did not publish its API URL");
        a3
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The CLI command, to run with a deadline.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("a3-server"));
        cmd.args(args)
            .env("A3_STATE_DIR", self.dir.path())
            .env_remove("A3_CONFIG")
            .env_remove("A3_API");
        cmd
    }

    /// Runs a CLI command with `--json`, asserting it succeeds.
    pub fn json(&self, args: &[&str]) -> Json {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "a3-server {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A password file in a private place.
    pub fn password_file(&self, password: &str) -> PathBuf {
        let path = self.dir.path().join("password.txt");
        std::fs::write(&path, format!("{password}\n")).unwrap();
        path
    }

    /// `host add ENDPOINT --user U --password-file F --json`.
    pub fn add_host(&self, endpoint: &str, user: &str, password: &str) -> Output {
        let file = self.password_file(password);
        self.cli(&[
            "host",
            "add",
            endpoint,
            "--user",
            user,
            "--password-file",
            file.to_str().unwrap(),
            "--json",
        ])
    }

    /// Adds a pool by `endpoint`, asserting success; the `AddedPool` JSON.
    pub fn add_pool(&self, sim: &SimPool, i: usize) -> Json {
        let out = self.add_host(&sim.endpoint(i), &sim.username, &sim.password);
        assert!(
            out.status.success(),
            "host add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The names of the VMs the A3's catalog lists.
    pub fn vm_names(&self) -> Vec<String> {
        self.json(&["vm", "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The state dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
