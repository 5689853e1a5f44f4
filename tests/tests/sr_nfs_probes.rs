//! XCP-ng's SM probes an NFS server before it mounts it (xapi-project/sm `libs/sm/nfs.py`:
//! `rpcinfo -s`, `showmount --no-headers -e`); libtirpc's `rpcinfo` and `showmount` run them
//! here against an A3 in a network namespace whose UDP port 111 is blocked, the only test
//! where the A3 runs in a namespace of its own.
//!
//! A file of its own, so a process of its own: a child forked here holds copies of every
//! socket of its process until it execs, and would keep another test's closed listener bound.

use a3_e2e::tool_ok;
use std::io::ErrorKind;
use std::net::{IpAddr, UdpSocket};

use tokio_util::sync::CancellationToken;

/// Runs `f` on a thread of its own in a new network namespace where only `lo` is up and an
/// nftables rule counts and drops every UDP datagram to port 111. Sockets opened by that
/// thread, by threads it starts and by processes it runs all live in the namespace, so the
/// A3 there may take any 127.0.1.N; the namespace goes when the thread ends.
fn in_netns_without_udp_111<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        // unshare(2) moves the calling thread only; the test harness's threads stay put.
        // SAFETY: plain system call with no memory arguments.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!(
                "unshare(CLONE_NEWNET): {} (the test needs root)",
                std::io::Error::last_os_error()
            );
        }
        tool_ok("ip", &["link", "set", "lo", "up"]);
        tool_ok("nft", &["add", "table", "inet", "a3test"]);
        let chain = "{ type filter hook output priority 0 ; }";
        tool_ok("nft", &["add", "chain", "inet", "a3test", "out", chain]);
        tool_ok(
            "nft",
            &[
                "add", "rule", "inet", "a3test", "out", "udp", "dport", "111", "counter", "drop",
            ],
        );
        f()
    });
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// UDP datagrams to port 111 the namespace's rule has dropped so far.
fn udp_111_dropped() -> u64 {
    let rules = tool_ok("nft", &["list", "chain", "inet", "a3test", "out"]);
    let count = rules
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .unwrap_or_else(|| panic!("no packet counter in {rules}"));
    count.parse().unwrap()
}

/// `program args`, killed after a minute: a probe that hangs fails the test instead of
/// hanging it.
fn probe(program: &str, args: &[&str]) -> String {
    let mut all = vec!["60", program];
    all.extend(args);
    tool_ok("timeout", &all)
}

/// The rows of a table printed by `rpcinfo`, split on whitespace, without its header.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// What SM runs before it mounts an NFS SR, and the other libtirpc probes, all answered over
/// TCP: not one datagram reaches UDP port 111.
#[test]
fn sm_probes_answer_over_tcp_alone() {
    let sr = tempfile::tempdir().unwrap();
    let dir = sr.path().to_owned();
    in_netns_without_udp_111(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ip: IpAddr = "127.0.1.5".parse().unwrap();
            let shutdown = CancellationToken::new();
            let task = a3_server::sr::start(ip, &dir, shutdown.clone())
                .await
                .expect("the SR server starts in its own namespace");
            let checks = tokio::task::spawn_blocking(move || {
                let host = ip.to_string();
                let listed = rows(&probe("rpcinfo", &["-p", &host]));
                for row in [
                    ["100000", "4", "tcp", "111", "portmapper"],
                    ["100000", "2", "udp", "111", "portmapper"],
                    ["100003", "3", "tcp", "2049", "nfs"],
                    ["100005", "3", "tcp", "2049", "mountd"],
                ] {
                    assert!(listed.iter().any(|r| r == &row), "rpcinfo -p: {listed:?}");
                }

                // SM's parse: the line naming nfs, its second column split on commas.
                let services = probe("rpcinfo", &["-s", &host]);
                let nfs = services
                    .lines()
                    .find(|l| l.find("nfs").is_some_and(|at| at > 0))
                    .unwrap_or_else(|| panic!("rpcinfo -s lists no nfs: {services}"));
                let nfs: Vec<&str> = nfs.split_whitespace().collect();
                assert_eq!(nfs, ["100003", "3", "tcp", "nfs", "superuser"]);
                let pmap = rows(&services)
                    .into_iter()
                    .find(|r| r[0] == "100000")
                    .unwrap();
                let mut versions: Vec<&str> = pmap[1].split(',').collect();
                versions.sort();
                assert_eq!(versions, ["2", "3", "4"], "rpcinfo -s: {services}");

                for (service, prog) in [("nfs", 100_003), ("mountd", 100_005)] {
                    let ready = probe("rpcinfo", &["-t", &host, service, "3"]);
                    assert_eq!(
                        ready.trim(),
                        format!("program {prog} version 3 ready and waiting")
                    );
                }

                let exports = probe("showmount", &["--no-headers", "-e", &host]);
                let first = exports.split_whitespace().next();
                assert_eq!(first, Some(a3_server::sr::EXPORT), "showmount: {exports}");

                assert_eq!(udp_111_dropped(), 0, "a probe fell back to UDP 111");
                // The rule does see UDP to 111: the kernel refuses a datagram sent here (so a
                // probe trying UDP fails at once, it does not hang) and counts it.
                let sock = UdpSocket::bind((ip, 0)).unwrap();
                let sent = sock.send_to(&[0; 40], (ip, 111));
                assert_eq!(sent.map_err(|e| e.kind()), Err(ErrorKind::PermissionDenied));
                assert_eq!(udp_111_dropped(), 1);
            })
            .await;
            shutdown.cancel();
            task.await.unwrap();
            checks.unwrap();
        });
    });
}
