//! The xenstore wire protocol, as spoken over `/dev/xen/xenbus` by a guest: a 16-byte
//! little-endian header `{type, req_id, tx_id, len}` followed by `len` payload bytes.
//!
//! Sans-IO: [`encode_request`] builds the bytes to write, [`Decoder`] turns whatever was read
//! into replies. The server side (the simulator's per-VM xenstore) is [`RequestDecoder`],
//! [`encode_reply`] and [`encode_error`]. The ABD reads its boot config from `vm-data/abd/*` and writes
//! `vm-data/abd/assigned-ip` with it. Relative paths resolve under the domain's home
//! (`/local/domain/<domid>`) on the xenstore side, so the agent never needs its domid.

use thiserror::Error;

/// Header length on the wire.
pub const HEADER_LEN: usize = 16;
/// xenstored refuses payloads above this (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;

/// The message types the ABD uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    /// List the children of a node.
    Directory,
    /// Read a node's value.
    Read,
    /// Write a node's value.
    Write,
    /// The reply to a failed request; the payload names the errno (`ENOENT`, `EACCES`...).
    Error,
}

impl MsgType {
    fn code(self) -> u32 {
        match self {
            MsgType::Directory => 1,
            MsgType::Read => 2,
            MsgType::Write => 11,
            MsgType::Error => 16,
        }
    }

    fn from_code(code: u32) -> Option<MsgType> {
        Some(match code {
            1 => MsgType::Directory,
            2 => MsgType::Read,
            11 => MsgType::Write,
            16 => MsgType::Error,
            _ => return None,
        })
    }
}

/// What went wrong encoding or decoding a message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum XenstoreError {
    /// The payload would exceed what xenstored accepts.
    #[error("xenstore payload of {0} bytes exceeds the {PAYLOAD_MAX}-byte limit")]
    TooLarge(usize),
    /// A path or value holds a NUL byte, which the protocol uses as a separator.
    #[error("xenstore path or value contains a NUL byte: {0:?}")]
    Nul(String),
    /// The reply carries a type this codec does not know.
    #[error("xenstore reply of unknown type {0}")]
    UnknownType(u32),
    /// xenstored answered with an error (`ENOENT` for a missing node).
    #[error("xenstore refused the request: {0}")]
    Refused(String),
    /// The reply's type does not match the request.
    #[error("xenstore answered {got:?} to a {want:?} request")]
    Mismatch {
        /// The request's type.
        want: MsgType,
        /// The reply's type.
        got: MsgType,
    },
}

/// One decoded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The message type.
    pub kind: MsgType,
    /// The request id it answers.
    pub req_id: u32,
    /// The raw payload.
    pub payload: Vec<u8>,
}

impl Reply {
    /// The payload as a read value (xenstored does not NUL-terminate values).
    pub fn into_value(self, want: MsgType) -> Result<Vec<u8>, XenstoreError> {
        self.check(want)?;
        Ok(self.payload)
    }

    /// The payload of a `Directory` reply: NUL-separated child names.
    pub fn into_children(self) -> Result<Vec<String>, XenstoreError> {
        self.check(MsgType::Directory)?;
        Ok(self
            .payload
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    fn check(&self, want: MsgType) -> Result<(), XenstoreError> {
        match self.kind {
            MsgType::Error => {
                let text = self.payload.split(|&b| b == 0).next().unwrap_or_default();
                Err(XenstoreError::Refused(
                    String::from_utf8_lossy(text).into_owned(),
                ))
            }
            got if got != want => Err(XenstoreError::Mismatch { want, got }),
            _ => Ok(()),
        }
    }
}

/// The bytes of one request. `Directory` and `Read` take a path; `Write` a path and a value
/// (the path is NUL-terminated, the value is not).
pub fn encode_request(
    kind: MsgType,
    req_id: u32,
    path: &str,
    value: Option<&[u8]>,
) -> Result<Vec<u8>, XenstoreError> {
    if path.contains('\0') {
        return Err(XenstoreError::Nul(path.to_owned()));
    }
    let mut payload = Vec::with_capacity(path.len() + 1 + value.map_or(0, <[u8]>::len));
    payload.extend_from_slice(path.as_bytes());
    payload.push(0);
    if let Some(value) = value {
        if value.contains(&0) {
            return Err(XenstoreError::Nul(
                String::from_utf8_lossy(value).into_owned(),
            ));
        }
        payload.extend_from_slice(value);
    }
    if payload.len() > PAYLOAD_MAX {
        return Err(XenstoreError::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&kind.code().to_le_bytes());
    out.extend_from_slice(&req_id.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // no transaction
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Splits a byte stream into replies; feed it whatever `read` returned.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Appends bytes read from the transport.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, if one has arrived.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, XenstoreError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let word = |i: usize| u32::from_le_bytes(self.buf[i..i + 4].try_into().expect("4 bytes"));
        let (code, req_id, len) = (word(0), word(4), word(12) as usize);
        if len > PAYLOAD_MAX {
            return Err(XenstoreError::TooLarge(len));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let kind = MsgType::from_code(code).ok_or(XenstoreError::UnknownType(code))?;
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Reply {
            kind,
            req_id,
            payload,
        }))
    }
}

/// One request as a server receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The message type.
    pub kind: MsgType,
    /// The id the reply must carry.
    pub req_id: u32,
    /// The transaction id (0: none); the reply carries it back.
    pub tx_id: u32,
    /// The node path (relative paths resolve under the domain's home).
    pub path: String,
    /// The value of a `Write`.
    pub value: Option<Vec<u8>>,
}

/// What a server reads off the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A request this codec serves.
    Request(Request),
    /// A well-framed message that cannot be served (unknown type, bad path): answer it with
    /// [`encode_error`] and carry on, as xenstored does.
    Refused {
        /// The id the error reply must carry.
        req_id: u32,
        /// The transaction id.
        tx_id: u32,
        /// Why, as an errno name (`EINVAL`, `ENOSYS`).
        errno: &'static str,
    },
}

/// Splits a byte stream into requests; the server-side twin of [`Decoder`].
#[derive(Debug, Default)]
pub struct RequestDecoder {
    buf: Vec<u8>,
}

impl RequestDecoder {
    /// Appends bytes read from the transport.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete request, if one has arrived. An `Err` (a length above
    /// [`PAYLOAD_MAX`]) means the stream can no longer be framed: close it.
    pub fn next_request(&mut self) -> Result<Option<Incoming>, XenstoreError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let word = |i: usize| u32::from_le_bytes(self.buf[i..i + 4].try_into().expect("4 bytes"));
        let (code, req_id, tx_id, len) = (word(0), word(4), word(8), word(12) as usize);
        if len > PAYLOAD_MAX {
            return Err(XenstoreError::TooLarge(len));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload: Vec<u8> = self
            .buf
            .drain(..HEADER_LEN + len)
            .skip(HEADER_LEN)
            .collect();
        let refused = |errno| {
            Ok(Some(Incoming::Refused {
                req_id,
                tx_id,
                errno,
            }))
        };
        let kind = match MsgType::from_code(code) {
            Some(MsgType::Error) | None => return refused("ENOSYS"),
            Some(kind) => kind,
        };
        // The path runs to the first NUL; a Write's value is everything after it.
        let Some(nul) = payload.iter().position(|&b| b == 0) else {
            return refused("EINVAL");
        };
        let Ok(path) = std::str::from_utf8(&payload[..nul]) else {
            return refused("EINVAL");
        };
        let rest = &payload[nul + 1..];
        let value = match kind {
            MsgType::Write => Some(rest.to_vec()),
            _ if rest.is_empty() => None,
            _ => return refused("EINVAL"),
        };
        if path.is_empty() {
            return refused("EINVAL");
        }
        Ok(Some(Incoming::Request(Request {
            kind,
            req_id,
            tx_id,
            path: path.to_owned(),
            value,
        })))
    }
}

fn frame(code: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    for word in [code, req_id, tx_id, payload.len() as u32] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// The bytes of a successful reply to `req`: a `Read` takes the value, a `Directory` the
/// child names (NUL-separated, as xenstored sends them), a `Write` nothing (`OK`).
pub fn encode_reply(req: &Request, body: ReplyBody<'_>) -> Result<Vec<u8>, XenstoreError> {
    let payload = match body {
        ReplyBody::Value(v) => v.to_vec(),
        ReplyBody::Children(names) => {
            let mut p = Vec::new();
            for name in names {
                if name.contains('\0') {
                    return Err(XenstoreError::Nul(name.clone()));
                }
                p.extend_from_slice(name.as_bytes());
                p.push(0);
            }
            p
        }
        ReplyBody::Ok => b"OK\0".to_vec(),
    };
    if payload.len() > PAYLOAD_MAX {
        return Err(XenstoreError::TooLarge(payload.len()));
    }
    Ok(frame(req.kind.code(), req.req_id, req.tx_id, &payload))
}

/// What a successful reply carries.
#[derive(Debug, Clone, Copy)]
pub enum ReplyBody<'a> {
    /// A node's value (`Read`).
    Value(&'a [u8]),
    /// Child names (`Directory`).
    Children(&'a [String]),
    /// The acknowledgement of a `Write`.
    Ok,
}

/// The bytes of an error reply naming `errno` (`ENOENT`, `EACCES`, `EINVAL`...).
pub fn encode_error(req_id: u32, tx_id: u32, errno: &str) -> Vec<u8> {
    let mut payload = errno.as_bytes().to_vec();
    payload.push(0);
    frame(MsgType::Error.code(), req_id, tx_id, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u32, req_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [code, req_id, 0, payload.len() as u32] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn read_request_is_header_then_nul_terminated_path() {
        let bytes = encode_request(MsgType::Read, 7, "vm-data/abd/a3", None).unwrap();
        assert_eq!(&bytes[0..4], &2u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &7u32.to_le_bytes());
        assert_eq!(&bytes[8..12], &0u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &15u32.to_le_bytes());
        assert_eq!(&bytes[16..], b"vm-data/abd/a3\0");
    }

    #[test]
    fn write_request_carries_the_value_without_terminator() {
        let bytes = encode_request(
            MsgType::Write,
            1,
            "vm-data/abd/assigned-ip",
            Some(b"10.0.2.15"),
        )
        .unwrap();
        assert_eq!(&bytes[0..4], &11u32.to_le_bytes());
        assert_eq!(&bytes[16..], b"vm-data/abd/assigned-ip\x0010.0.2.15");
    }

    #[test]
    fn nul_and_oversize_are_refused() {
        assert!(matches!(
            encode_request(MsgType::Read, 1, "a\0b", None),
            Err(XenstoreError::Nul(_))
        ));
        let big = "x".repeat(PAYLOAD_MAX);
        assert!(matches!(
            encode_request(MsgType::Read, 1, &big, None),
            Err(XenstoreError::TooLarge(_))
        ));
    }

    #[test]
    fn decoder_waits_for_a_whole_message_split_anywhere() {
        let mut stream = reply(2, 3, b"10.0.2.2:2811");
        stream.extend(reply(1, 4, b"a3\0name\0ip\0"));
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        for byte in &stream {
            dec.feed(std::slice::from_ref(byte));
            while let Some(r) = dec.next_reply().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].req_id, 3);
        assert_eq!(
            got[0].clone().into_value(MsgType::Read).unwrap(),
            b"10.0.2.2:2811"
        );
        assert_eq!(
            got[1].clone().into_children().unwrap(),
            vec!["a3", "name", "ip"]
        );
    }

    #[test]
    fn error_reply_names_the_errno() {
        let mut dec = Decoder::default();
        dec.feed(&reply(16, 1, b"ENOENT\0"));
        let r = dec.next_reply().unwrap().unwrap();
        assert_eq!(
            r.into_value(MsgType::Read),
            Err(XenstoreError::Refused("ENOENT".into()))
        );
    }

    #[test]
    fn unknown_type_and_mismatch_are_errors() {
        let mut dec = Decoder::default();
        dec.feed(&reply(99, 1, b""));
        assert_eq!(dec.next_reply(), Err(XenstoreError::UnknownType(99)));
        let r = Reply {
            kind: MsgType::Write,
            req_id: 1,
            payload: b"OK\0".to_vec(),
        };
        assert!(matches!(
            r.into_value(MsgType::Read),
            Err(XenstoreError::Mismatch { .. })
        ));
    }

    #[test]
    fn server_decodes_what_the_client_encodes_split_anywhere() {
        let mut stream = encode_request(MsgType::Directory, 1, "vm-data/abd", None).unwrap();
        stream.extend(
            encode_request(
                MsgType::Write,
                2,
                "vm-data/abd/assigned-ip",
                Some(b"127.0.4.2/24"),
            )
            .unwrap(),
        );
        stream.extend(encode_request(MsgType::Read, 3, "vm-data/abd/a3", None).unwrap());
        let mut dec = RequestDecoder::default();
        let mut got = Vec::new();
        for byte in &stream {
            dec.feed(std::slice::from_ref(byte));
            while let Some(r) = dec.next_request().unwrap() {
                got.push(r);
            }
        }
        let Incoming::Request(w) = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(got.len(), 3);
        assert_eq!(
            (w.kind, w.req_id, w.path.as_str()),
            (MsgType::Write, 2, "vm-data/abd/assigned-ip")
        );
        assert_eq!(w.value.as_deref(), Some(&b"127.0.4.2/24"[..]));
        let Incoming::Request(r) = &got[2] else {
            panic!("{got:?}")
        };
        assert_eq!(
            (r.kind, r.path.as_str(), r.value.as_deref()),
            (MsgType::Read, "vm-data/abd/a3", None)
        );
    }

    #[test]
    fn client_decodes_what_the_server_encodes() {
        let req = |kind, req_id| Request {
            kind,
            req_id,
            tx_id: 0,
            path: "p".into(),
            value: None,
        };
        let mut dec = Decoder::default();
        dec.feed(
            &encode_reply(&req(MsgType::Read, 5), ReplyBody::Value(b"10.0.2.2:2811")).unwrap(),
        );
        let names = vec!["a3".to_owned(), "ip".to_owned()];
        dec.feed(&encode_reply(&req(MsgType::Directory, 6), ReplyBody::Children(&names)).unwrap());
        dec.feed(&encode_reply(&req(MsgType::Write, 7), ReplyBody::Ok).unwrap());
        dec.feed(&encode_error(8, 0, "EACCES"));
        let value = dec.next_reply().unwrap().unwrap();
        assert_eq!(
            (value.req_id, value.into_value(MsgType::Read).unwrap()),
            (5, b"10.0.2.2:2811".to_vec())
        );
        assert_eq!(
            dec.next_reply().unwrap().unwrap().into_children().unwrap(),
            names
        );
        assert!(
            dec.next_reply()
                .unwrap()
                .unwrap()
                .into_value(MsgType::Write)
                .is_ok()
        );
        assert_eq!(
            dec.next_reply().unwrap().unwrap().into_value(MsgType::Read),
            Err(XenstoreError::Refused("EACCES".into()))
        );
    }

    #[test]
    fn server_refuses_bad_requests_without_losing_the_stream() {
        let mut dec = RequestDecoder::default();
        dec.feed(&reply(99, 1, b"x\0")); // unknown type
        dec.feed(&reply(2, 2, b"no-terminator")); // path without NUL
        dec.feed(&reply(2, 3, b"a\0junk")); // a Read with a value
        dec.feed(&reply(16, 4, b"ENOENT\0")); // an error is not a request
        dec.feed(&reply(2, 5, b"\xff\0")); // not UTF-8
        let errnos: Vec<_> = std::iter::from_fn(|| dec.next_request().unwrap())
            .map(|i| match i {
                Incoming::Refused { req_id, errno, .. } => (req_id, errno),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            errnos,
            [
                (1, "ENOSYS"),
                (2, "EINVAL"),
                (3, "EINVAL"),
                (4, "ENOSYS"),
                (5, "EINVAL")
            ]
        );
        dec.feed(&reply(2, 1, &vec![b'x'; PAYLOAD_MAX + 1]));
        assert_eq!(
            dec.next_request(),
            Err(XenstoreError::TooLarge(PAYLOAD_MAX + 1))
        );
    }
}
