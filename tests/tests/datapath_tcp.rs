//! The TLS/TCP fallback of port 2811 (DESIGN.md §4): an agent told to use TCP backs up and
//! restores bit-exact over it, and an agent on `auto` whose QUIC gets no answer (UDP
//! dropped on the way) falls back to TCP by itself.

mod datapath_util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use datapath_util::{A3, assert_same, image, probe, scratch, start_agent};

const MIB: usize = 1 << 20;

fn set_in_config(cfg: &std::path::Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{key} ")))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("{key} = {value}\n"));
    std::fs::write(cfg, out).unwrap();
}

fn data_addr(a3: &A3) -> SocketAddr {
    std::fs::read_to_string(a3.state.join("data.addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The `transport` the A3 lists for `id`.
fn transport(a3: &A3, id: &str) -> Option<String> {
    let list: serde_json::Value = serde_json::from_str(&a3.ok(&["abd", "list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .and_then(|a| a["transport"].as_str().map(str::to_owned))
}

/// Backs `img` up through `abd` and restores it bit-exact.
fn round_trip(a3: &A3, abd: &str, cfg: &std::path::Path, dir: &std::path::Path, img: Vec<u8>) {
    let src = dir.join("disk.img");
    std::fs::write(&src, &img).unwrap();
    let v = a3.backup(abd, &src, abd, None);
    let out = dir.join("restored.img");
    let r = a3.restore(abd, &v, &out);
    assert!(
        r.status.success(),
        "restore: {}\n{}\n{}",
        String::from_utf8_lossy(&r.stderr),
        std::fs::read_to_string(a3.state.with_extension("a3.log")).unwrap_or_default(),
        std::fs::read_to_string(cfg.with_extension("agent.log")).unwrap_or_default()
    );
    assert_same(abd, &std::fs::read(&out).unwrap(), &img);
}

#[test]
fn tcp_transport_backs_up_and_restores_bit_exact() {
    let dir = scratch();
    let a3 = A3::start(&dir.path().join("a3"), "127.0.1.211:0");
    let cfg = a3.enroll("tcp-1", dir.path());
    set_in_config(&cfg, "transport", "\"tcp\"");

    // Enrollment and the session both go over TCP.
    let p = probe(&cfg);
    assert!(
        p.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&p.stderr)
    );
    assert!(
        String::from_utf8_lossy(&p.stdout).contains("accepted by the A3 over TLS/TCP"),
        "{}",
        String::from_utf8_lossy(&p.stdout)
    );
    let _agent = start_agent(&a3, "tcp-1", &cfg);
    assert_eq!(transport(&a3, "tcp-1").as_deref(), Some("TLS/TCP"));

    round_trip(&a3, "tcp-1", &cfg, dir.path(), image(21, 12 * MIB + 777));
}

/// Forwards TCP connections from `listener` to `to`, byte for byte, in threads that end
/// with the test process.
fn forward_tcp(listener: TcpListener, to: SocketAddr) {
    fn pipe(mut from: TcpStream, mut to: TcpStream) {
        let mut buf = [0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(client, server));
            std::thread::spawn(move || pipe(s2, c2));
        }
    });
}

#[test]
fn auto_falls_back_to_tcp_when_quic_gets_no_answer() {
    let dir = scratch();
    let a3 = A3::start(&dir.path().join("a3"), "127.0.1.212:0");
    let real = data_addr(&a3);
    // Another address where UDP is a black hole (a socket nobody reads) and TCP reaches
    // the A3's fallback: what an agent sees behind a firewall that drops UDP.
    let udp_hole = UdpSocket::bind("127.0.1.213:0").unwrap();
    let front = udp_hole.local_addr().unwrap();
    forward_tcp(TcpListener::bind(front).unwrap(), real);

    let cfg = a3.enroll("auto-1", dir.path());
    set_in_config(&cfg, "a3_address", &format!("\"{front}\""));
    let _agent = start_agent(&a3, "auto-1", &cfg);
    assert_eq!(transport(&a3, "auto-1").as_deref(), Some("TLS/TCP"));
    let log = std::fs::read_to_string(cfg.with_extension("agent.log")).unwrap();
    assert!(
        log.contains("trying the TLS/TCP fallback"),
        "the agent says why it fell back:\n{log}"
    );

    round_trip(&a3, "auto-1", &cfg, dir.path(), image(22, 5 * MIB + 3));
    drop(udp_hole);
}
