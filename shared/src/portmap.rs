//! The portmapper (ONC RPC program 100000, version 2, RFC 1833 §3) that points NFS clients
//! at the A3 SR's NFS and MOUNT services: NULL, GETPORT and DUMP, over UDP datagrams or TCP
//! records (RFC 5531 §11).
//!
//! The decoder reads untrusted bytes: it is bounded, allocation-free, and refuses anything
//! that is not a well-formed RPC v2 call. Calls for rpcbind versions 3 and 4 get
//! `PROG_MISMATCH (2, 2)`, on which Linux's `mount.nfs` and `rpcinfo` fall back to version 2.

/// The portmapper's well-known port.
pub const PORT: u16 = 111;
/// The portmapper's RPC program.
pub const PMAP_PROG: u32 = 100_000;
/// The portmapper version served.
pub const PMAP_VERS: u32 = 2;
/// NFS's RPC program.
pub const NFS_PROG: u32 = 100_003;
/// MOUNT's RPC program.
pub const MOUNT_PROG: u32 = 100_005;
/// GETPORT's `prot` for TCP.
pub const IPPROTO_TCP: u32 = 6;
/// GETPORT's `prot` for UDP.
pub const IPPROTO_UDP: u32 = 17;
/// The largest call accepted: a GETPORT with two maximal auth bodies fits.
pub const MAX_CALL: usize = 1024;
/// RPC auth bodies are at most 400 bytes (RFC 5531 §8.2).
const MAX_AUTH: usize = 400;

/// Procedures.
const PROC_NULL: u32 = 0;
const PROC_GETPORT: u32 = 3;
const PROC_DUMP: u32 = 4;

/// `accept_stat` values (RFC 5531 §9).
const SUCCESS: u32 = 0;
const PROG_UNAVAIL: u32 = 1;
const PROG_MISMATCH: u32 = 2;
const PROC_UNAVAIL: u32 = 3;
const GARBAGE_ARGS: u32 = 4;

/// One registered service: what GETPORT answers and DUMP lists.
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

/// The services of an NFS v3 server whose NFS and MOUNT share `nfs_port` over TCP, and the
/// portmapper itself.
pub fn nfs3_mappings(nfs_port: u16) -> [Mapping; 4] {
    let m = |prog, vers, prot, port| Mapping {
        prog,
        vers,
        prot,
        port,
    };
    [
        m(PMAP_PROG, PMAP_VERS, IPPROTO_TCP, PORT),
        m(PMAP_PROG, PMAP_VERS, IPPROTO_UDP, PORT),
        m(NFS_PROG, 3, IPPROTO_TCP, nfs_port),
        m(MOUNT_PROG, 3, IPPROTO_TCP, nfs_port),
    ]
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
    /// GETPORT's (prog, vers, prot), when the body holds them.
    pub getport: Option<(u32, u32, u32)>,
}

/// A bounded big-endian XDR reader over a borrowed buffer.
struct Xdr<'a>(&'a [u8]);

impl Xdr<'_> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*head))
    }

    /// Skips an opaque auth (flavor, length, padded bytes).
    fn skip_auth(&mut self) -> Option<()> {
        let _flavor = self.u32()?;
        let len = self.u32()? as usize;
        if len > MAX_AUTH {
            return None;
        }
        self.0 = self.0.get(len.div_ceil(4) * 4..)?;
        Some(())
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
    let getport = if proc_ == PROC_GETPORT {
        (|| Some((x.u32()?, x.u32()?, x.u32()?)))()
    } else {
        None
    };
    Some(Call {
        xid,
        prog,
        vers,
        proc_,
        getport,
    })
}

/// The reply to `call` given the registered services.
#[must_use]
pub fn reply(call: &Call, mappings: &[Mapping]) -> Vec<u8> {
    // xid, REPLY, MSG_ACCEPTED, null verifier (flavor, length)
    let mut out: Vec<u32> = vec![call.xid, 1, 0, 0, 0];
    if call.prog != PMAP_PROG {
        out.push(PROG_UNAVAIL);
    } else if call.vers != PMAP_VERS {
        out.extend([PROG_MISMATCH, PMAP_VERS, PMAP_VERS]);
    } else {
        match (call.proc_, call.getport) {
            (PROC_NULL, _) => out.push(SUCCESS),
            (PROC_GETPORT, Some((prog, vers, prot))) => {
                // 0 means "not registered", as rpcbind answers.
                let port = mappings
                    .iter()
                    .find(|m| (m.prog, m.vers, m.prot) == (prog, vers, prot))
                    .map_or(0, |m| u32::from(m.port));
                out.extend([SUCCESS, port]);
            }
            (PROC_GETPORT, None) => out.push(GARBAGE_ARGS),
            (PROC_DUMP, _) => {
                out.push(SUCCESS);
                for m in mappings {
                    out.extend([1, m.prog, m.vers, m.prot, u32::from(m.port)]);
                }
                out.push(0); // end of list
            }
            _ => out.push(PROC_UNAVAIL),
        }
    }
    out.into_iter().flat_map(u32::to_be_bytes).collect()
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

    fn answer(msg: &[u8]) -> Vec<u32> {
        words(&reply(&decode_call(msg).unwrap(), &nfs3_mappings(2049)))
    }

    #[test]
    fn getport_reports_nfs_and_mount_v3_on_tcp_only() {
        for prog in [NFS_PROG, MOUNT_PROG] {
            let msg = call(2, 3, &[prog, 3, IPPROTO_TCP, 0]);
            assert_eq!(answer(&msg), [7, 1, 0, 0, 0, 0, 2049]);
        }
        let udp = call(2, 3, &[NFS_PROG, 3, IPPROTO_UDP, 0]);
        assert_eq!(answer(&udp), [7, 1, 0, 0, 0, 0, 0]);
        let v4 = call(2, 3, &[NFS_PROG, 4, IPPROTO_TCP, 0]);
        assert_eq!(answer(&v4), [7, 1, 0, 0, 0, 0, 0]);
        let itself = call(2, 3, &[PMAP_PROG, 2, IPPROTO_UDP, 0]);
        assert_eq!(answer(&itself), [7, 1, 0, 0, 0, 0, 111]);
    }

    #[test]
    fn null_dump_and_unknown_procedures() {
        assert_eq!(answer(&call(2, 0, &[])), [7, 1, 0, 0, 0, 0]);
        let dump = answer(&call(2, 4, &[]));
        assert_eq!(dump[..6], [7, 1, 0, 0, 0, 0]);
        assert_eq!(dump[6..11], [1, PMAP_PROG, 2, IPPROTO_TCP, 111]);
        assert_eq!(dump[16..21], [1, NFS_PROG, 3, IPPROTO_TCP, 2049]);
        assert_eq!(dump.len(), 6 + 4 * 5 + 1);
        assert_eq!(dump.last(), Some(&0));
        assert_eq!(answer(&call(2, 5, &[])), [7, 1, 0, 0, 0, 3]);
        let short = call(2, 3, &[NFS_PROG]);
        assert_eq!(answer(&short), [7, 1, 0, 0, 0, 4]);
    }

    #[test]
    fn rpcbind_versions_get_a_mismatch_and_other_programs_are_unavailable() {
        assert_eq!(answer(&call(3, 3, &[])), [7, 1, 0, 0, 0, 2, 2, 2]);
        assert_eq!(answer(&call(4, 4, &[])), [7, 1, 0, 0, 0, 2, 2, 2]);
        let mut nfs = call(2, 0, &[]);
        nfs[12..16].copy_from_slice(&NFS_PROG.to_be_bytes());
        assert_eq!(answer(&nfs), [7, 1, 0, 0, 0, 1]);
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
