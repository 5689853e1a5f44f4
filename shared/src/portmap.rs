//! The portmapper and rpcbind (ONC RPC program 100000, RFC 1833) that point NFS clients at
//! the A3 SR's NFS and MOUNT services, over UDP datagrams or TCP records (RFC 5531 §11):
//!
//! - version 2 (portmap, §3): NULL, GETPORT, DUMP;
//! - versions 3 and 4 (rpcbind, §2): NULL, GETADDR, DUMP, and version 4's GETVERSADDR.
//!
//! libtirpc's clients (`rpcinfo`, `showmount`, `mount.nfs`) ask version 4 first, over TCP;
//! a server that answers only version 2 makes them fall back to GETPORT over UDP.
//!
//! Answers follow Linux rpcbind 1.2.6 (Debian 12), checked call by call against it:
//! - GETADDR looks the service up on the transport the call came in on and ignores the
//!   call's `r_netid`; GETPORT uses its `prot` argument;
//! - GETPORT and GETADDR answer any registered version of the program when the one asked
//!   for is not registered (the client then gets PROG_MISMATCH from the service itself);
//!   GETVERSADDR answers the exact version only;
//! - an unregistered program gets port 0, or the empty universal address;
//! - versions other than 2–4 get `PROG_MISMATCH (2, 4)`;
//! - every service is owned by `superuser`, as rpcbind reports root's registrations.
//!
//! The decoder reads untrusted bytes: it is bounded, allocation-free, and refuses anything
//! that is not a well-formed RPC v2 call.

use std::net::IpAddr;

/// The portmapper's well-known port.
pub const PORT: u16 = 111;
/// The portmapper's RPC program.
pub const PMAP_PROG: u32 = 100_000;
/// The lowest version served: portmap (RFC 1833 §3).
pub const VERS_LOW: u32 = 2;
/// The highest version served: rpcbind version 4 (RFC 1833 §2).
pub const VERS_HIGH: u32 = 4;
/// NFS's RPC program.
pub const NFS_PROG: u32 = 100_003;
/// MOUNT's RPC program.
pub const MOUNT_PROG: u32 = 100_005;
/// GETPORT's `prot` for TCP.
pub const IPPROTO_TCP: u32 = 6;
/// GETPORT's `prot` for UDP.
pub const IPPROTO_UDP: u32 = 17;
/// The largest call accepted: a GETADDR with two maximal auth bodies and its three
/// strings (netid, universal address, owner) fits.
pub const MAX_CALL: usize = 1024;
/// RPC auth bodies are at most 400 bytes (RFC 5531 §8.2).
const MAX_AUTH: usize = 400;
/// The owner rpcbind reports for services that root registered.
const OWNER: &str = "superuser";

/// Procedures (RFC 1833 §2.2 and §3.2).
const PROC_NULL: u32 = 0;
/// Version 2's GETPORT; versions 3 and 4 number GETADDR the same.
const PROC_GETPORT: u32 = 3;
/// DUMP in every version.
const PROC_DUMP: u32 = 4;
/// Version 4 only.
const PROC_GETVERSADDR: u32 = 9;

/// `accept_stat` values (RFC 5531 §9).
const SUCCESS: u32 = 0;
const PROG_UNAVAIL: u32 = 1;
const PROG_MISMATCH: u32 = 2;
const PROC_UNAVAIL: u32 = 3;
const GARBAGE_ARGS: u32 = 4;

/// The transport a call came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A TCP record.
    Tcp,
    /// A UDP datagram.
    Udp,
}

impl Transport {
    fn prot(self) -> u32 {
        match self {
            Transport::Tcp => IPPROTO_TCP,
            Transport::Udp => IPPROTO_UDP,
        }
    }
}

/// One registered service: what GETPORT and GETADDR answer and DUMP lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// RPC program.
    pub prog: u32,
    /// Program version.
    pub vers: u32,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub prot: u32,
    /// The port it listens on.
    pub port: u16,
}

/// The services registered at one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    addr: IpAddr,
    mappings: Vec<Mapping>,
}

impl Registry {
    /// An NFS v3 server at `addr` whose NFS and MOUNT share `nfs_port` over TCP, and the
    /// portmapper itself (versions 4, 3 and 2 over TCP and UDP, listed as rpcbind lists them).
    pub fn nfs3(addr: IpAddr, nfs_port: u16) -> Registry {
        let m = |prog, vers, prot, port| Mapping {
            prog,
            vers,
            prot,
            port,
        };
        let mut mappings = Vec::new();
        for prot in [IPPROTO_TCP, IPPROTO_UDP] {
            for vers in (VERS_LOW..=VERS_HIGH).rev() {
                mappings.push(m(PMAP_PROG, vers, prot, PORT));
            }
        }
        mappings.push(m(NFS_PROG, 3, IPPROTO_TCP, nfs_port));
        mappings.push(m(MOUNT_PROG, 3, IPPROTO_TCP, nfs_port));
        Registry { addr, mappings }
    }

    /// The registered services.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// `prog`'s service over `prot`: version `vers`, else (when `any_version`) another one.
    fn find(&self, prog: u32, vers: u32, prot: u32, any_version: bool) -> Option<&Mapping> {
        let mut on_prot = self
            .mappings
            .iter()
            .filter(|m| m.prog == prog && m.prot == prot);
        let exact = on_prot.clone().find(|m| m.vers == vers);
        if any_version {
            exact.or_else(|| on_prot.next())
        } else {
            exact
        }
    }

    /// The RFC 5665 network id of `prot` at this address.
    fn netid(&self, prot: u32) -> &'static str {
        match (prot == IPPROTO_TCP, self.addr.is_ipv6()) {
            (true, false) => "tcp",
            (false, false) => "udp",
            (true, true) => "tcp6",
            (false, true) => "udp6",
        }
    }
}

/// The RFC 5665 universal address of `addr`:`port`: the address, then the port's high and
/// low bytes in decimal (`127.0.1.5.8.1` for 127.0.1.5:2049).
pub fn universal_address(addr: IpAddr, port: u16) -> String {
    format!("{addr}.{}.{}", port >> 8, port & 0xff)
}

/// One decoded RPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The transaction id, echoed in the reply.
    pub xid: u32,
    /// The program called.
    pub prog: u32,
    /// Its version.
    pub vers: u32,
    /// The procedure.
    pub proc_: u32,
    /// The arguments of a lookup procedure.
    pub args: Args,
}

/// The arguments of the calls that have some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args {
    /// The procedure takes none, or is not served.
    None,
    /// Version 2's GETPORT: `struct mapping`'s program, version and protocol.
    Mapping {
        /// Program asked for.
        prog: u32,
        /// Version asked for.
        vers: u32,
        /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
        prot: u32,
    },
    /// GETADDR or GETVERSADDR: `struct rpcb`'s program and version (its netid, address and
    /// owner are read but not used, as rpcbind does).
    Rpcb {
        /// Program asked for.
        prog: u32,
        /// Version asked for.
        vers: u32,
    },
    /// A lookup procedure whose arguments do not decode.
    Garbage,
}

/// A bounded big-endian XDR reader over a borrowed buffer.
struct Xdr<'a>(&'a [u8]);

impl Xdr<'_> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    /// Skips a variable-length opaque or string of at most `max` bytes (length, padded bytes).
    fn skip_opaque(&mut self, max: usize) -> Option<()> {
        let len = self.u32()? as usize;
        if len > max {
            return None;
        }
        self.0 = self.0.get(len.div_ceil(4) * 4..)?;
        Some(())
    }

    /// Skips an opaque auth (flavor, then its body).
    fn skip_auth(&mut self) -> Option<()> {
        let _flavor = self.u32()?;
        self.skip_opaque(MAX_AUTH)
    }

    fn mapping(&mut self) -> Option<Args> {
        let (prog, vers, prot, _port) = (self.u32()?, self.u32()?, self.u32()?, self.u32()?);
        Some(Args::Mapping { prog, vers, prot })
    }

    fn rpcb(&mut self) -> Option<Args> {
        let (prog, vers) = (self.u32()?, self.u32()?);
        for _netid_addr_owner in 0..3 {
            self.skip_opaque(MAX_CALL)?;
        }
        Some(Args::Rpcb { prog, vers })
    }
}

/// Decodes an RPC call message (a UDP datagram, or a TCP record's body). `None` for anything
/// that is not a well-formed RPC v2 call; the caller drops it.
pub fn decode_call(msg: &[u8]) -> Option<Call> {
    if msg.len() > MAX_CALL {
        return None;
    }
    let mut x = Xdr(msg);
    let xid = x.u32()?;
    if x.u32()? != 0 || x.u32()? != 2 {
        return None; // not a CALL, or not RPC version 2
    }
    let (prog, vers, proc_) = (x.u32()?, x.u32()?, x.u32()?);
    x.skip_auth()?;
    x.skip_auth()?;
    let args = match (prog, vers, proc_) {
        (PMAP_PROG, 2, PROC_GETPORT) => x.mapping().unwrap_or(Args::Garbage),
        (PMAP_PROG, 3 | 4, PROC_GETPORT) | (PMAP_PROG, 4, PROC_GETVERSADDR) => {
            x.rpcb().unwrap_or(Args::Garbage)
        }
        _ => Args::None,
    };
    Some(Call {
        xid,
        prog,
        vers,
        proc_,
        args,
    })
}

/// A big-endian XDR writer.
struct Out(Vec<u8>);

impl Out {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn string(&mut self, s: &str) {
        // Our strings (netids, universal addresses, the owner) are a few dozen bytes.
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }
}

/// The reply to `call`, which came in over `transport`, given the registered services.
#[must_use]
pub fn reply(call: &Call, registry: &Registry, transport: Transport) -> Vec<u8> {
    let mut out = Out(Vec::with_capacity(64));
    // xid, REPLY, MSG_ACCEPTED, null verifier (flavor, length)
    for word in [call.xid, 1, 0, 0, 0] {
        out.u32(word);
    }
    if call.prog != PMAP_PROG {
        out.u32(PROG_UNAVAIL);
        return out.0;
    }
    if !(VERS_LOW..=VERS_HIGH).contains(&call.vers) {
        for word in [PROG_MISMATCH, VERS_LOW, VERS_HIGH] {
            out.u32(word);
        }
        return out.0;
    }
    let uaddr = |m: Option<&Mapping>| m.map(|m| universal_address(registry.addr, m.port));
    match (call.vers, call.proc_, call.args) {
        (_, PROC_NULL, _) => out.u32(SUCCESS),
        (_, PROC_GETPORT, Args::Garbage) | (4, PROC_GETVERSADDR, Args::Garbage) => {
            out.u32(GARBAGE_ARGS)
        }
        (2, PROC_GETPORT, Args::Mapping { prog, vers, prot }) => {
            let port = registry.find(prog, vers, prot, true).map_or(0, |m| m.port);
            out.u32(SUCCESS);
            out.u32(port.into());
        }
        (3 | 4, PROC_GETPORT, Args::Rpcb { prog, vers }) => {
            out.u32(SUCCESS);
            out.string(
                &uaddr(registry.find(prog, vers, transport.prot(), true)).unwrap_or_default(),
            );
        }
        (4, PROC_GETVERSADDR, Args::Rpcb { prog, vers }) => {
            out.u32(SUCCESS);
            out.string(
                &uaddr(registry.find(prog, vers, transport.prot(), false)).unwrap_or_default(),
            );
        }
        (2, PROC_DUMP, _) => {
            out.u32(SUCCESS);
            for m in &registry.mappings {
                for word in [1, m.prog, m.vers, m.prot, u32::from(m.port)] {
                    out.u32(word);
                }
            }
            out.u32(0); // end of list
        }
        (3 | 4, PROC_DUMP, _) => {
            out.u32(SUCCESS);
            for m in &registry.mappings {
                out.u32(1);
                out.u32(m.prog);
                out.u32(m.vers);
                out.string(registry.netid(m.prot));
                out.string(&universal_address(registry.addr, m.port));
                out.string(OWNER);
            }
            out.u32(0); // end of list
        }
        _ => out.u32(PROC_UNAVAIL),
    }
    out.0
}

/// Why a TCP record cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record is split in fragments, which no portmapper client does.
    #[error("RPC record in several fragments")]
    Fragmented,
    /// The record is longer than [`MAX_CALL`].
    #[error("RPC record of {0} bytes, more than {MAX_CALL}")]
    TooLong(usize),
}

/// The body length announced by a TCP record mark (one last fragment, at most [`MAX_CALL`]).
pub fn record_len(mark: [u8; 4]) -> Result<usize, RecordError> {
    let mark = u32::from_be_bytes(mark);
    let len = (mark & 0x7fff_ffff) as usize;
    if mark & 0x8000_0000 == 0 {
        Err(RecordError::Fragmented)
    } else if len > MAX_CALL {
        Err(RecordError::TooLong(len))
    } else {
        Ok(len)
    }
}

/// `body` as one TCP record (a last-fragment mark, then the bytes).
#[must_use]
pub fn record(body: &[u8]) -> Vec<u8> {
    // Replies are at most a few hundred bytes, far below the 2^31 a mark can carry.
    let mark = 0x8000_0000 | (body.len() as u32 & 0x7fff_ffff);
    let mut out = mark.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A3: &str = "127.0.1.5";

    /// XDR words of a string: length, then the bytes padded to 4.
    fn string(s: &str) -> Vec<u32> {
        let mut bytes = s.as_bytes().to_vec();
        bytes.resize(s.len().next_multiple_of(4), 0);
        let mut words = vec![s.len() as u32];
        words.extend(
            bytes
                .chunks(4)
                .map(|c| u32::from_be_bytes(c.try_into().unwrap())),
        );
        words
    }

    /// `struct rpcb` as libtirpc sends it in GETADDR.
    fn rpcb(prog: u32, vers: u32, netid: &str) -> Vec<u32> {
        let mut words = vec![prog, vers];
        words.extend(string(netid));
        words.extend(string("127.0.1.5.0.111"));
        words.extend(string("libtirpc"));
        words
    }

    fn call(vers: u32, proc_: u32, args: &[u32]) -> Vec<u8> {
        // xid 7, CALL, rpc 2, portmap, AUTH_UNIX with a 4-byte body, null verifier
        let mut words = vec![7, 0, 2, PMAP_PROG, vers, proc_, 1, 4, 0xdead, 0, 0];
        words.extend(args);
        words.into_iter().flat_map(u32::to_be_bytes).collect()
    }

    fn words(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn registry() -> Registry {
        Registry::nfs3(A3.parse().unwrap(), 2049)
    }

    fn answer_over(msg: &[u8], transport: Transport) -> Vec<u32> {
        words(&reply(&decode_call(msg).unwrap(), &registry(), transport))
    }

    fn answer(msg: &[u8]) -> Vec<u32> {
        answer_over(msg, Transport::Tcp)
    }

    /// A successful reply's body after the accepted-reply header, which is checked.
    fn body(reply: &[u32]) -> &[u32] {
        assert_eq!(reply[..6], [7, 1, 0, 0, 0, SUCCESS], "reply {reply:?}");
        &reply[6..]
    }

    /// Reads an XDR string off the front of `w`.
    fn take_string(w: &mut &[u32]) -> String {
        let len = w[0] as usize;
        let bytes: Vec<u8> = w[1..1 + len.div_ceil(4)]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        *w = &w[1 + len.div_ceil(4)..];
        String::from_utf8(bytes[..len].to_vec()).unwrap()
    }

    /// A GETADDR reply's universal address.
    fn uaddr(reply: &[u32]) -> String {
        let mut w = body(reply);
        let s = take_string(&mut w);
        assert!(w.is_empty(), "trailing words {w:?}");
        s
    }

    #[test]
    fn universal_addresses() {
        let v4: IpAddr = A3.parse().unwrap();
        assert_eq!(universal_address(v4, 2049), "127.0.1.5.8.1");
        assert_eq!(universal_address(v4, 111), "127.0.1.5.0.111");
        assert_eq!(universal_address("::1".parse().unwrap(), 2049), "::1.8.1");
    }

    #[test]
    fn getport_reports_nfs_and_mount_on_tcp_and_any_version_as_rpcbind_does() {
        for prog in [NFS_PROG, MOUNT_PROG] {
            let msg = call(2, 3, &[prog, 3, IPPROTO_TCP, 0]);
            assert_eq!(body(&answer(&msg)), [2049]);
        }
        let udp = call(2, 3, &[NFS_PROG, 3, IPPROTO_UDP, 0]);
        assert_eq!(body(&answer(&udp)), [0]);
        // Another version of a registered program gets its port; NFS then says PROG_MISMATCH.
        let v4 = call(2, 3, &[NFS_PROG, 4, IPPROTO_TCP, 0]);
        assert_eq!(body(&answer(&v4)), [2049]);
        let unknown = call(2, 3, &[100_021, 4, IPPROTO_TCP, 0]);
        assert_eq!(body(&answer(&unknown)), [0]);
        // GETPORT names its protocol; the transport it came over does not matter.
        let itself = call(2, 3, &[PMAP_PROG, 2, IPPROTO_UDP, 0]);
        assert_eq!(body(&answer_over(&itself, Transport::Tcp)), [111]);
    }

    #[test]
    fn getaddr_answers_universal_addresses_on_the_calls_transport() {
        for vers in [3, 4] {
            for prog in [NFS_PROG, MOUNT_PROG] {
                let msg = call(vers, 3, &rpcb(prog, 3, "tcp"));
                assert_eq!(uaddr(&answer(&msg)), "127.0.1.5.8.1", "v{vers} {prog}");
                // NFS and MOUNT are not on UDP.
                assert_eq!(uaddr(&answer_over(&msg, Transport::Udp)), "");
            }
            // r_netid is ignored, as rpcbind does: the transport decides.
            let udp_netid = call(vers, 3, &rpcb(NFS_PROG, 3, "udp"));
            assert_eq!(uaddr(&answer(&udp_netid)), "127.0.1.5.8.1");
            let itself = call(vers, 3, &rpcb(PMAP_PROG, 2, "udp"));
            assert_eq!(
                uaddr(&answer_over(&itself, Transport::Udp)),
                "127.0.1.5.0.111"
            );
            // Any version of a registered program; nothing for an unregistered one.
            let nfs4 = call(vers, 3, &rpcb(NFS_PROG, 4, "tcp"));
            assert_eq!(uaddr(&answer(&nfs4)), "127.0.1.5.8.1");
            let nlm = call(vers, 3, &rpcb(100_021, 4, "tcp"));
            assert_eq!(uaddr(&answer(&nlm)), "");
        }
        // Version 4's GETVERSADDR wants the exact version; version 3 has no procedure 9.
        let exact = call(4, 9, &rpcb(NFS_PROG, 3, "tcp"));
        assert_eq!(uaddr(&answer(&exact)), "127.0.1.5.8.1");
        let other = call(4, 9, &rpcb(NFS_PROG, 4, "tcp"));
        assert_eq!(uaddr(&answer(&other)), "");
        assert_eq!(
            answer(&call(3, 9, &rpcb(NFS_PROG, 3, "tcp"))),
            [7, 1, 0, 0, 0, PROC_UNAVAIL]
        );
    }

    #[test]
    fn ipv6_registry_reports_tcp6_and_udp6() {
        let reg = Registry::nfs3("::1".parse().unwrap(), 2049);
        let msg = call(4, 3, &rpcb(NFS_PROG, 3, "tcp6"));
        let got = words(&reply(&decode_call(&msg).unwrap(), &reg, Transport::Tcp));
        assert_eq!(uaddr(&got), "::1.8.1");
        assert_eq!(reg.netid(IPPROTO_TCP), "tcp6");
        assert_eq!(reg.netid(IPPROTO_UDP), "udp6");
    }

    #[test]
    fn dump_v2_lists_every_mapping() {
        let dump = answer(&call(2, 4, &[]));
        let mut entries: Vec<[u32; 4]> = Vec::new();
        let mut w = body(&dump);
        while w[0] == 1 {
            entries.push(w[1..5].try_into().unwrap());
            w = &w[5..];
        }
        assert_eq!(w, [0]);
        assert_eq!(
            entries,
            [
                [PMAP_PROG, 4, IPPROTO_TCP, 111],
                [PMAP_PROG, 3, IPPROTO_TCP, 111],
                [PMAP_PROG, 2, IPPROTO_TCP, 111],
                [PMAP_PROG, 4, IPPROTO_UDP, 111],
                [PMAP_PROG, 3, IPPROTO_UDP, 111],
                [PMAP_PROG, 2, IPPROTO_UDP, 111],
                [NFS_PROG, 3, IPPROTO_TCP, 2049],
                [MOUNT_PROG, 3, IPPROTO_TCP, 2049],
            ]
        );
    }

    #[test]
    fn dump_v3_and_v4_list_rpcb_entries() {
        for vers in [3, 4] {
            let dump = answer_over(&call(vers, 4, &[]), Transport::Udp);
            let mut w = body(&dump);
            let mut entries = Vec::new();
            while w[0] == 1 {
                let (prog, v) = (w[1], w[2]);
                w = &w[3..];
                let netid = take_string(&mut w);
                let addr = take_string(&mut w);
                let owner = take_string(&mut w);
                entries.push((prog, v, netid, addr, owner));
            }
            assert_eq!(w, [0], "v{vers}: end of list");
            let e = |prog, v, netid: &str, addr: &str| {
                (prog, v, netid.into(), addr.into(), "superuser".into())
            };
            assert_eq!(
                entries,
                [
                    e(PMAP_PROG, 4, "tcp", "127.0.1.5.0.111"),
                    e(PMAP_PROG, 3, "tcp", "127.0.1.5.0.111"),
                    e(PMAP_PROG, 2, "tcp", "127.0.1.5.0.111"),
                    e(PMAP_PROG, 4, "udp", "127.0.1.5.0.111"),
                    e(PMAP_PROG, 3, "udp", "127.0.1.5.0.111"),
                    e(PMAP_PROG, 2, "udp", "127.0.1.5.0.111"),
                    e(NFS_PROG, 3, "tcp", "127.0.1.5.8.1"),
                    e(MOUNT_PROG, 3, "tcp", "127.0.1.5.8.1"),
                ],
                "v{vers}"
            );
        }
    }

    #[test]
    fn null_and_unknown_procedures() {
        for vers in [2, 3, 4] {
            assert_eq!(answer(&call(vers, 0, &[])), [7, 1, 0, 0, 0, SUCCESS]);
            // SET, and GETTIME in versions 3 and 4, are not served.
            for proc_ in [1, 6, 99] {
                assert_eq!(
                    answer(&call(vers, proc_, &[])),
                    [7, 1, 0, 0, 0, PROC_UNAVAIL]
                );
            }
        }
    }

    #[test]
    fn other_versions_get_a_mismatch_and_other_programs_are_unavailable() {
        for vers in [1, 5] {
            assert_eq!(
                answer(&call(vers, 3, &[])),
                [7, 1, 0, 0, 0, PROG_MISMATCH, 2, 4]
            );
        }
        let mut nfs = call(2, 0, &[]);
        nfs[12..16].copy_from_slice(&NFS_PROG.to_be_bytes());
        assert_eq!(answer(&nfs), [7, 1, 0, 0, 0, PROG_UNAVAIL]);
    }

    #[test]
    fn lookups_with_bad_arguments_are_garbage() {
        let short = call(2, 3, &[NFS_PROG, 3, IPPROTO_TCP]);
        assert_eq!(answer(&short), [7, 1, 0, 0, 0, GARBAGE_ARGS]);
        let full = rpcb(NFS_PROG, 3, "tcp");
        for cut in 0..full.len() {
            for (vers, proc_) in [(3, 3), (4, 3), (4, 9)] {
                let msg = call(vers, proc_, &full[..cut]);
                assert_eq!(
                    answer(&msg),
                    [7, 1, 0, 0, 0, GARBAGE_ARGS],
                    "v{vers} proc {proc_} cut at {cut}"
                );
            }
        }
        let mut huge_netid = rpcb(NFS_PROG, 3, "tcp");
        huge_netid[2] = u32::MAX;
        assert_eq!(
            answer(&call(4, 3, &huge_netid)),
            [7, 1, 0, 0, 0, GARBAGE_ARGS]
        );
    }

    #[test]
    fn refuses_malformed_calls() {
        let good = call(2, 3, &[NFS_PROG, 3, IPPROTO_TCP, 0]);
        for cut in 0..44 {
            assert_eq!(decode_call(&good[..cut]), None, "cut at {cut}");
        }
        let mut huge_auth = good.clone();
        huge_auth[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_call(&huge_auth), None);
        let mut reply_msg = good.clone();
        reply_msg[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(decode_call(&reply_msg), None);
        assert_eq!(decode_call(&vec![0; MAX_CALL + 1]), None);
    }

    #[test]
    fn records() {
        assert_eq!(record_len([0x80, 0, 0, 56]), Ok(56));
        assert_eq!(record_len([0, 0, 0, 56]), Err(RecordError::Fragmented));
        assert_eq!(
            record_len([0xff; 4]),
            Err(RecordError::TooLong(0x7fff_ffff))
        );
        assert_eq!(record(b"abcd"), [0x80, 0, 0, 4, b'a', b'b', b'c', b'd']);
    }
}
