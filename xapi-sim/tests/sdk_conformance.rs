//! Conformance with the official `XenAPI` Python SDK: starts `xapi-sim serve` and runs
//! `tests/sdk/conformance.py` against it.

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

#[test]
fn official_xenapi_sdk_sees_a_pool() {
    let probe = Command::new("python3")
        .args(["-c", "import XenAPI"])
        .output()
        .expect("python3 is needed to run the XenAPI SDK conformance test");
    assert!(
        probe.status.success(),
        "the Python XenAPI SDK is not installed: run `cargo xtask test` or `pip install XenAPI` ({})",
        String::from_utf8_lossy(&probe.stderr).trim()
    );

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
    let hosts = ready["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3);
    let master = ready["master"].as_str().unwrap();
    let url_of = |pred: &dyn Fn(&str) -> bool| {
        hosts
            .iter()
            .find(|h| pred(h["address"].as_str().unwrap()))
            .map(|h| h["url"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let master_url = url_of(&|a| a == master);
    let supporter_url = url_of(&|a| a != master);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/conformance.py");
    let out = Command::new("python3")
        .arg(script)
        .args([&supporter_url, &master_url])
        .args([
            ready["username"].as_str().unwrap(),
            ready["password"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "XenAPI SDK conformance failed:\n{report}"
    );
}
