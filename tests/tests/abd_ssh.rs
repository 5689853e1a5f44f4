//! The ABD agent's SSH server against the A3's SSH client (`a3_server::ssh`), both real,
//! on loopback: the agent runs as a process with `--ssh-listen 127.0.0.1:0` and the A3's
//! key in its config; the A3 runs `status` and `diag --json`, a wrong key and a wrong
//! host-key pin are refused, an unknown command exits 127.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use a3_e2e::{ChildGuard, bin, wait_until};
use a3_server::ssh::{A3Key, SshError, Target, exec};

const ID: &str = "abd-ssh-test";
const LIMIT: Duration = Duration::from_secs(60);

/// Starts the agent with `key` authorized; returns it, its SSH address and host key.
fn start_agent(dir: &Path, key: &A3Key) -> (ChildGuard, SocketAddr, String) {
    let cfg = dir.join("agent.toml");
    // Port 9 (discard) on loopback: no A3 there, so the agent keeps retrying, which is
    // all `status` and `diag` need.
    std::fs::write(
        &cfg,
        format!(
            "id = \"{ID}\"\na3_address = \"127.0.0.1:9\"\nserver_name = \"localhost\"\n\
             ca_pin = \"{}\"\ntoken = \"unused\"\nssh_key = \"{}\"\n",
            "ab".repeat(32),
            key.public_line()
        ),
    )
    .unwrap();
    let log = dir.join("agent.log");
    let agent = ChildGuard::spawn(
        Command::new(bin("abd-agent"))
            .args(["run", "--config"])
            .arg(&cfg)
            .args(["--ssh-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let (addr, hostkey) = wait_until(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).ok()?;
        let addr = text
            .split("ssh: serving the A3 on ")
            .nth(1)?
            .split(';')
            .next()?
            .parse()
            .ok()?;
        let hostkey = text
            .lines()
            .find_map(|l| l.strip_prefix("abd-ssh-hostkey: "))?
            .trim()
            .to_owned();
        Some((addr, hostkey))
    })
    .unwrap_or_else(|| {
        panic!(
            "the agent never served SSH:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    (agent, addr, hostkey)
}

#[test]
fn the_a3_runs_commands_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = A3Key::load_or_create(&dir.path().join("a3")).unwrap();
    let (_agent, addr, hostkey) = start_agent(dir.path(), &key);
    assert!(hostkey.starts_with("SHA256:"), "{hostkey}");
    let target = Target {
        abd: ID.into(),
        addr,
        host_key: Some(hostkey.clone()),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let status = exec(&key, &target, "status", LIMIT).await.unwrap();
        assert_eq!(status.status, 0, "{}", status.stdout);
        assert!(
            status.stdout.contains(&format!("ABD {ID}")),
            "{}",
            status.stdout
        );
        assert!(status.stdout.contains("not connected"), "{}", status.stdout);

        // No A3 on 127.0.0.1:9, so the quic line fails and diag exits 1; the report is
        // whole and its reverse-path line sees this very SSH server.
        let diag = exec(&key, &target, "diag --json", LIMIT).await.unwrap();
        let checks: serde_json::Value = serde_json::from_str(&diag.stdout)
            .unwrap_or_else(|e| panic!("diag --json: {e}:\n{}", diag.stdout));
        let line = |name: &str| {
            checks
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["check"] == name)
                .unwrap_or_else(|| panic!("no {name} line: {checks:#}"))
                .clone()
        };
        assert_eq!(line("reverse path")["status"], "pass", "{checks:#}");
        assert_eq!(line("quic")["status"], "fail", "{checks:#}");
        assert_eq!(diag.status, 1);

        let unknown = exec(&key, &target, "rm -rf /", LIMIT).await.unwrap();
        assert_eq!(unknown.status, 127);
        assert!(
            unknown.stdout.contains("diag [--json]"),
            "{}",
            unknown.stdout
        );

        let logs = exec(&key, &target, "logs", LIMIT).await.unwrap();
        assert!(logs.stdout.contains("ssh: exec"), "{}", logs.stdout);

        let reboot = exec(&key, &target, "reboot", LIMIT).await.unwrap();
        assert_eq!(
            reboot.status, 1,
            "a process must not reboot: {}",
            reboot.stdout
        );

        let stranger = A3Key::load_or_create(&dir.path().join("other")).unwrap();
        match exec(&stranger, &target, "status", LIMIT).await {
            Err(e @ SshError::Refused { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(ID) && msg.contains(&addr.to_string()), "{msg}");
            }
            other => panic!("a stranger's key must be refused, got {other:?}"),
        }

        let wrong_pin = Target {
            host_key: Some(key.fingerprint()),
            ..target.clone()
        };
        match exec(&key, &wrong_pin, "status", LIMIT).await {
            Err(e @ SshError::HostKey { .. }) => {
                assert!(e.to_string().contains(&hostkey), "{e}");
            }
            other => panic!("a wrong host key pin must be refused, got {other:?}"),
        }

        let nobody = Target {
            addr: "127.0.0.1:1".parse().unwrap(),
            ..target.clone()
        };
        match exec(&key, &nobody, "status", LIMIT).await {
            Err(e @ SshError::Connect { .. }) => {
                assert!(e.to_string().contains("firewalls"), "{e}");
            }
            other => panic!("a closed port must fail to connect, got {other:?}"),
        }
    });
}
