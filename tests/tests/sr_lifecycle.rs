//! `Alike_SR` through its life, against a simulated 3-host pool whose `nfs` SRs really mount
//! the A3's export: created when the pool is added (one PBD per host, all plugged), unplugged
//! everywhere by a clean A3 shutdown, plugged again at the next start and found by its uuid
//! (never created twice), and a failed PBD.plug reported naming the hosts and the fix.

mod xapi_support;

use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use a3_e2e::{ChildGuard, bin, wait_until};
use a3_server::xapi::Session;
use serde_json::Value as Json;
use xapi_support::SimPool;

/// A free 127.0.1.N for an A3 (its NFS needs ports 111 and 2049 on it), other than `not`.
fn free_address(not: Option<IpAddr>) -> IpAddr {
    let first = 2 + std::process::id() % 90;
    (first..250)
        .chain(2..first)
        .map(|n| format!("127.0.1.{n}").parse::<IpAddr>().unwrap())
        .filter(|ip| Some(*ip) != not)
        .find(|ip| {
            TcpListener::bind((*ip, 111)).is_ok()
                && TcpListener::bind((*ip, 2049)).is_ok()
                && std::net::UdpSocket::bind((*ip, 111)).is_ok()
        })
        .expect("a free 127.0.1.N")
}

/// `a3-server serve` on `ip` with the state dir `dir`, waiting until its API is up.
fn start_a3(dir: &Path, ip: IpAddr) -> ChildGuard {
    let _ = std::fs::remove_file(dir.join("api.url"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("a3-server.log"))
        .unwrap();
    let child = ChildGuard::spawn(
        Command::new(bin("a3-server"))
            .args(["serve", "--http-listen", "127.0.0.1:0", "--data-listen"])
            .arg(format!("{ip}:0"))
            .env("A3_STATE_DIR", dir)
            .env_remove("A3_CONFIG")
            .env_remove("A3_API")
            .stdout(Stdio::null())
            .stderr(log),
    );
    let up = wait_until(Duration::from_secs(20), || {
        dir.join("api.url").exists().then_some(())
    });
    assert!(up.is_some(), "a3-server did not start: {}", a3_log(dir));
    child
}

fn a3_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("a3-server.log")).unwrap_or_default()
}

fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("a3-server"))
        .args(args)
        .env("A3_STATE_DIR", dir)
        .env_remove("A3_CONFIG")
        .env_remove("A3_API")
        .output()
        .unwrap()
}

fn sr_status(dir: &Path) -> Json {
    let out = cli(dir, &["sr", "status", "--json"]);
    assert!(
        out.status.success(),
        "sr status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The pool's SRs named Alike_SR, and per SR the (host ref, plugged, server) of its PBDs.
async fn alike_srs(s: &Session) -> Vec<(String, Vec<(String, bool, String)>)> {
    let srs = s.call("SR.get_all_records", &[]).await.unwrap();
    let pbds = s.call("PBD.get_all_records", &[]).await.unwrap();
    let mut out = Vec::new();
    for (r, sr) in srs.as_struct().unwrap() {
        if sr.get_str("name_label") != Some("Alike_SR") {
            continue;
        }
        assert_eq!(sr.get_str("type"), Some("nfs"));
        let mine = pbds
            .as_struct()
            .unwrap()
            .values()
            .filter(|p| p.get_str("SR") == Some(r.as_str()))
            .map(|p| {
                let dc = p.get("device_config").unwrap();
                (
                    p.get_str("host").unwrap().to_owned(),
                    p.get("currently_attached").unwrap().as_bool().unwrap(),
                    format!(
                        "{}:{}",
                        dc.get_str("server").unwrap(),
                        dc.get_str("serverpath").unwrap()
                    ),
                )
            })
            .collect();
        out.push((sr.get_str("uuid").unwrap().to_owned(), mine));
    }
    out
}

/// Polls the pool until every PBD of its one Alike_SR is `plugged`; returns the SR's uuid.
async fn wait_pbds(s: &Session, plugged: bool, what: &str, dir: &Path) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let srs = alike_srs(s).await;
        if srs.len() == 1 && srs[0].1.len() == 3 && srs[0].1.iter().all(|p| p.1 == plugged) {
            return srs[0].0.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the pool's Alike_SRs are {srs:?}\n{}",
            a3_log(dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alike_sr_is_created_once_unplugged_at_shutdown_and_plugged_at_start() {
    let sim = SimPool::start(3, 1);
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    let ip = free_address(None);
    let mut a3 = start_a3(dir, ip);
    let s = sim.session(0).await;

    // Adding the pool (through a supporter) creates Alike_SR, plugged on every host.
    let password = dir.join("password.txt");
    std::fs::write(&password, &sim.password).unwrap();
    let out = cli(
        dir,
        &[
            "host",
            "add",
            &sim.endpoint(1),
            "--user",
            &sim.username,
            "--password-file",
            password.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sr_uuid = wait_pbds(&s, true, "after host add", dir).await;
    let srs = alike_srs(&s).await;
    assert!(
        srs[0].1.iter().all(|p| p.2 == format!("{ip}:/alike")),
        "{srs:?}"
    );
    // NFSSR's layout: the SR is a directory on the export.
    assert!(dir.join("sr").join(&sr_uuid).is_dir());
    let status = sr_status(dir);
    assert_eq!(status[0]["sr_uuid"], sr_uuid.as_str(), "{status}");
    let hosts = status[0]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{status}");
    assert!(hosts.iter().all(|h| h["plugged"] == true), "{status}");
    assert!(status[0]["error"].is_null(), "{status}");
    let table = String::from_utf8(cli(dir, &["sr", "status"]).stdout).unwrap();
    assert!(
        table.contains(&sr_uuid) && table.contains("plugged"),
        "{table}"
    );

    // A clean shutdown unplugs it everywhere.
    assert!(
        a3.terminate(Duration::from_secs(60))
            .is_some_and(|s| s.success()),
        "clean shutdown failed: {}",
        a3_log(dir)
    );
    assert_eq!(wait_pbds(&s, false, "after shutdown", dir).await, sr_uuid);

    // The next start plugs the same SR back (found by uuid, not created again).
    let mut a3 = start_a3(dir, ip);
    assert_eq!(wait_pbds(&s, true, "after restart", dir).await, sr_uuid);
    assert_eq!(sr_status(dir)[0]["sr_uuid"], sr_uuid.as_str());
    assert!(
        a3.terminate(Duration::from_secs(60))
            .is_some_and(|s| s.success())
    );
    wait_pbds(&s, false, "after the second shutdown", dir).await;

    // Started on another address, the A3 cannot be mounted where the PBDs point: the plug
    // fails, and the error names each host and the fix.
    let moved = free_address(Some(ip));
    let _a3 = start_a3(dir, moved);
    let status = wait_until(Duration::from_secs(60), || {
        let st = sr_status(dir);
        st[0]["error"].is_string().then_some(st)
    })
    .unwrap_or_else(|| panic!("no plug error reported: {}", a3_log(dir)));
    let error = status[0]["error"].as_str().unwrap();
    for h in &sim.hosts {
        assert!(
            error.contains(&h.address),
            "host {} unnamed: {error}",
            h.address
        );
    }
    assert!(error.contains("PBD.plug"), "{error}");
    assert!(error.contains(&format!("{ip}:2049")), "{error}");
    assert!(error.contains("sr_address"), "{error}");
    assert!(error.contains("a3-server sr plug"), "{error}");
    let srs = alike_srs(&s).await;
    assert_eq!(srs.len(), 1, "a second Alike_SR was created: {srs:?}");
    assert_eq!(srs[0].0, sr_uuid);
    assert!(srs[0].1.iter().all(|p| !p.1), "{srs:?}");
}
