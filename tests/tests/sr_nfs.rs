//! The A3 SR's NFS server against a client nobody here wrote: Debian's `libnfs-utils`
//! (`nfs-ls`, `nfs-cp`), given `nfs://<ip>/alike/...` URLs without `nfsport`/`mountport`, so
//! that libnfs finds MOUNT and NFS through the portmapper on 111, as XCP-ng's mount does.

use std::net::{IpAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Starts the SR server on a free 127.0.1.N (other tests may hold some), returning the address.
async fn start_sr(
    dir: &Path,
    shutdown: &CancellationToken,
) -> (IpAddr, tokio::task::JoinHandle<()>) {
    let first = 100 + std::process::id() % 100;
    let mut last_error = None;
    for n in (first..200).chain(2..first) {
        let ip: IpAddr = format!("127.0.1.{n}").parse().unwrap();
        match a3_server::sr::start(ip, dir, shutdown.clone()).await {
            Ok(task) => return (ip, task),
            Err(e) => last_error = Some(e),
        }
    }
    panic!("no free 127.0.1.N for the SR server: {last_error:?}");
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (cargo xtask test installs libnfs-utils): {e}")
        })
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A PMAPPROC_GETPORT call over UDP, as `mount.nfs` may send it.
fn getport_udp(ip: IpAddr, prog: u32) -> u32 {
    let sock = UdpSocket::bind((ip, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // xid, CALL, rpc v2, portmap 100000 v2, GETPORT, AUTH_NULL, AUTH_NULL, (prog, 3, TCP, 0)
    let words = [42u32, 0, 2, 100_000, 2, 3, 0, 0, 0, 0, prog, 3, 6, 0];
    let call: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    sock.send_to(&call, (ip, 111)).unwrap();
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).unwrap();
    let reply: Vec<u32> = buf[..n]
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(reply[..6], [42, 1, 0, 0, 0, 0], "GETPORT reply {reply:?}");
    reply[6]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libnfs_lists_and_copies_through_the_portmapper() {
    let sr = tempfile::tempdir().unwrap();
    std::fs::create_dir(sr.path().join("sr-uuid")).unwrap();
    std::fs::write(sr.path().join("hello.txt"), b"hello\n").unwrap();
    let shutdown = CancellationToken::new();
    let (ip, task) = start_sr(sr.path(), &shutdown).await;
    let base = format!("nfs://{ip}{}", a3_server::sr::EXPORT);

    let checks = tokio::task::spawn_blocking(move || {
        assert_eq!(getport_udp(ip, 100_003), 2049);
        assert_eq!(getport_udp(ip, 100_005), 2049);

        let listing = ok("nfs-ls", &[&format!("{base}/")]);
        assert!(listing.contains("hello.txt"), "{listing}");
        assert!(listing.contains("sr-uuid"), "{listing}");

        // A 3 MiB file with no repeating pattern, in and out again.
        let work = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0u32..3 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let local = work.path().join("disk.vhd");
        std::fs::write(&local, &data).unwrap();
        ok(
            "nfs-cp",
            &[local.to_str().unwrap(), &format!("{base}/sr-uuid/disk.vhd")],
        );
        let back = work.path().join("back.vhd");
        ok(
            "nfs-cp",
            &[&format!("{base}/sr-uuid/disk.vhd"), back.to_str().unwrap()],
        );
        assert!(std::fs::read(&back).unwrap() == data, "the copy differs");
        let listing = ok("nfs-ls", &[&format!("{base}/sr-uuid/")]);
        assert!(listing.contains("disk.vhd"), "{listing}");

        // An export other than /alike does not mount.
        let other = run("nfs-ls", &[&format!("nfs://{ip}/other/")]);
        assert!(!other.status.success(), "mounted /other");
    })
    .await;
    // The server is stopped before any assertion failure is reported.
    shutdown.cancel();
    task.await.unwrap();
    checks.unwrap();
    assert_eq!(
        std::fs::read(sr.path().join("sr-uuid/disk.vhd"))
            .unwrap()
            .len(),
        3 << 20
    );
    // It has released its ports: the same address serves again.
    let again = CancellationToken::new();
    let task = a3_server::sr::start(ip, sr.path(), again.clone())
        .await
        .expect("the ports are free after a shutdown");
    again.cancel();
    task.await.unwrap();
}
