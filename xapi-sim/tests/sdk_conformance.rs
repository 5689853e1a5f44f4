//! Conformance with the official `XenAPI` Python SDK: starts `xapi-sim serve` and runs
//! `tests/sdk/conformance.py` against it; `tests/sdk/control_api.py` drives the `/sim/`
//! control API over HTTPS and watches its effects through the SDK;
//! `tests/sdk/semantics_rules.py` checks the rules real xapi enforces, one by one.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Kills the simulator when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `xapi-sim serve` and what its ready line says.
struct Served {
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
    ready: serde_json::Value,
}

impl Served {
    fn start() -> Served {
        require_sdk();
        let dir = tempfile::tempdir().unwrap();
        let address = common::unique_address().to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_xapi-sim"))
            .args([
                "serve",
                "--hosts",
                "3",
                "--vms",
                "6",
                "--port",
                "0",
                "--disk-size",
                "16MiB",
            ])
            .args(["--address", &address, "--password", "conformance-pw"])
            .arg("--state-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting xapi-sim serve");
        let mut child = KillOnDrop(child);
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
        assert_eq!(ready["hosts"].as_array().unwrap().len(), 3);
        Served {
            _child: child,
            _dir: dir,
            ready,
        }
    }

    /// Host URLs in address order.
    fn urls(&self) -> Vec<String> {
        self.ready["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["url"].as_str().unwrap().to_owned())
            .collect()
    }

    fn credentials(&self) -> [String; 2] {
        ["username", "password"].map(|k| self.ready[k].as_str().unwrap().to_owned())
    }

    fn run(&self, script: &str, args: &[String]) {
        let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("python3")
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{report}");
        assert!(out.status.success(), "{script} failed:\n{report}");
    }
}

fn require_sdk() {
    let probe = Command::new("python3")
        .args(["-c", "import XenAPI"])
        .output()
        .expect("python3 is needed to run the XenAPI SDK conformance test");
    assert!(
        probe.status.success(),
        "the Python XenAPI SDK is not installed: run `cargo xtask test` or `pip install XenAPI` ({})",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
}

#[test]
fn official_xenapi_sdk_sees_a_pool() {
    let s = Served::start();
    let master = s.ready["master"].as_str().unwrap();
    let urls = s.urls();
    let master_url = urls
        .iter()
        .find(|u| u.contains(&format!("//{master}:")))
        .unwrap();
    let supporter_url = urls.iter().find(|u| *u != master_url).unwrap();
    let [user, password] = s.credentials();
    s.run(
        "conformance.py",
        &[supporter_url.clone(), master_url.clone(), user, password],
    );
}

#[test]
fn control_api_over_https() {
    let s = Served::start();
    let mut args = s.urls();
    args.extend(s.credentials());
    s.run("control_api.py", &args);
}

#[test]
fn xapi_rules_hold_through_the_sdk() {
    let s = Served::start();
    let master = s.ready["master"].as_str().unwrap();
    let url = s
        .urls()
        .into_iter()
        .find(|u| u.contains(&format!("//{master}:")))
        .unwrap();
    let [user, password] = s.credentials();
    s.run("semantics_rules.py", &[url, user, password]);
}
