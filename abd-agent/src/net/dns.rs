//! A small DNS client: A queries over UDP to exactly the configured servers, on their
//! ports (the boot config's `dns=ip[:port]`), never the network's own forwarder.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

/// Where the resolvers are written for tools that read it (the agent itself asks directly).
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Tries per server.
const TRIES: u32 = 2;

/// The addresses `name` has, and which server answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The A records.
    pub addrs: Vec<Ipv4Addr>,
    /// The server that answered.
    pub server: SocketAddr,
}

/// Resolves `name` (A records) through `servers` in order, `timeout` per try.
pub async fn resolve_a(
    name: &str,
    servers: &[SocketAddr],
    timeout: Duration,
) -> anyhow::Result<Answer> {
    if servers.is_empty() {
        bail!("no DNS servers configured (set dns= in the boot config)");
    }
    let mut failures = Vec::new();
    for &server in servers {
        match ask(name, server, timeout).await {
            Ok(addrs) => return Ok(Answer { addrs, server }),
            Err(e) => failures.push(format!("{server}: {e:#}")),
        }
    }
    bail!("{}", failures.join("; "))
}

async fn ask(name: &str, server: SocketAddr, timeout: Duration) -> anyhow::Result<Vec<Ipv4Addr>> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    socket
        .connect(server)
        .await
        .context("no route to the server")?;
    let id = query_id();
    let query = encode_query(name, id)?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..TRIES {
        socket.send(&query).await.context("send")?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(e).context("receive (is a DNS server listening there?)"),
                Ok(Ok(n)) => match decode_answer(&buf[..n], id) {
                    Ok(Some(addrs)) => return Ok(addrs),
                    Ok(None) => continue, // a stray or stale reply
                    Err(e) => return Err(e),
                },
            }
        }
    }
    bail!("no answer in {} tries of {} ms", TRIES, timeout.as_millis())
}

/// A recursive A query for `name`.
pub fn encode_query(name: &str, id: u16) -> anyhow::Result<Vec<u8>> {
    let mut fqdn = Name::from_ascii(name).with_context(|| format!("{name:?} is not a DNS name"))?;
    fqdn.set_fqdn(true);
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(fqdn, RecordType::A));
    Ok(msg.to_vec()?)
}

/// The A records of a reply to query `id`; `None` for a message that is not that reply.
pub fn decode_answer(bytes: &[u8], id: u16) -> anyhow::Result<Option<Vec<Ipv4Addr>>> {
    let Ok(msg) = Message::from_vec(bytes) else {
        return Ok(None);
    };
    if msg.metadata.id != id || msg.metadata.message_type != MessageType::Response {
        return Ok(None);
    }
    match msg.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => bail!("the name does not exist (NXDOMAIN)"),
        code => bail!("the server answered {code}"),
    }
    let addrs: Vec<Ipv4Addr> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    if addrs.is_empty() {
        bail!("the server knows the name but has no IPv4 address (A record) for it");
    }
    Ok(Some(addrs))
}

fn query_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

/// Writes `/etc/resolv.conf` for tools that read it. Servers on another port than 53 cannot
/// be written there; they are listed as comments (the agent asks them directly).
pub fn write_resolv_conf(servers: &[SocketAddr]) -> anyhow::Result<()> {
    std::fs::write(RESOLV_CONF, resolv_conf(servers))
        .with_context(|| format!("cannot write {RESOLV_CONF}"))
}

fn resolv_conf(servers: &[SocketAddr]) -> String {
    let mut out = String::from("# written by abd-agent from the boot config's dns=\n");
    for s in servers {
        if s.port() == 53 {
            out.push_str(&format!("nameserver {}\n", s.ip()));
        } else {
            out.push_str(&format!(
                "# nameserver {s} (port {} is not expressible here)\n",
                s.port()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(query: &[u8], code: ResponseCode, addr: Option<Ipv4Addr>) -> Vec<u8> {
        let q = Message::from_vec(query).unwrap();
        let mut msg = Message::response(q.metadata.id, OpCode::Query);
        msg.metadata.response_code = code;
        msg.add_query(q.queries[0].clone());
        if let Some(addr) = addr {
            msg.add_answer(hickory_proto::rr::Record::from_rdata(
                q.queries[0].name().clone(),
                60,
                RData::A(addr.into()),
            ));
        }
        msg.to_vec().unwrap()
    }

    #[test]
    fn answer_is_matched_to_its_query() {
        let q = encode_query("a3", 77).unwrap();
        let a = response(&q, ResponseCode::NoError, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(
            decode_answer(&a, 77).unwrap(),
            Some(vec![Ipv4Addr::new(10, 0, 2, 2)])
        );
        assert_eq!(
            decode_answer(&a, 78).unwrap(),
            None,
            "another query's reply"
        );
        assert_eq!(decode_answer(&q, 77).unwrap(), None, "a query is no reply");
        assert_eq!(decode_answer(b"junk", 77).unwrap(), None);
    }

    #[test]
    fn errors_say_what_the_server_answered() {
        let q = encode_query("missing.example", 5).unwrap();
        let nx = response(&q, ResponseCode::NXDomain, None);
        assert!(format!("{:#}", decode_answer(&nx, 5).unwrap_err()).contains("NXDOMAIN"));
        let empty = response(&q, ResponseCode::NoError, None);
        assert!(format!("{:#}", decode_answer(&empty, 5).unwrap_err()).contains("A record"));
    }

    #[test]
    fn resolv_conf_lists_port_53_servers() {
        let text = resolv_conf(&[
            "10.0.2.2:53".parse().unwrap(),
            "10.0.2.2:5353".parse().unwrap(),
        ]);
        assert!(text.contains("nameserver 10.0.2.2\n"));
        assert!(text.contains("# nameserver 10.0.2.2:5353"));
    }

    #[tokio::test]
    async fn resolves_through_the_given_server_and_port_only() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let answering = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = server.recv_from(&mut buf).unwrap();
            let reply = response(
                &buf[..n],
                ResponseCode::NoError,
                Some(Ipv4Addr::new(192, 0, 2, 7)),
            );
            server.send_to(&reply, from).unwrap();
        });
        let got = resolve_a("a3", &[addr], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.addrs, [Ipv4Addr::new(192, 0, 2, 7)]);
        assert_eq!(got.server, addr);
        answering.join().unwrap();

        // A server that never answers: the error names it and the tries.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = resolve_a(
            "a3",
            &[silent.local_addr().unwrap()],
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("no answer"), "{err:#}");
    }
}
