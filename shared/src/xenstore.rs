//! The xenstore wire protocol, as spoken over `/dev/xen/xenbus` by a guest: a 16-byte
//! little-endian header `{type, req_id, tx_id, len}` followed by `len` payload bytes.
//!
//! Sans-IO: [`encode_request`] builds the bytes to write, [`Decoder`] turns whatever was read
//! into replies. The ABD reads its boot config from `vm-data/abd/*` and writes
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
}
