//! XAPI's wire encodings: XML-RPC and JSON-RPC, sans-IO.
//!
//! Who does what:
//! - [`Value`] is an XAPI value; [`Response`] is xapi's `{Status, Value | ErrorDescription}`
//!   envelope.
//! - [`xmlrpc`] reads and writes XML-RPC calls and responses (`POST /`).
//! - [`jsonrpc`] reads and writes JSON-RPC calls and responses (`POST /jsonrpc`).
//!
//! The A3's XAPI client and the pool simulator both build on these pure functions. Every
//! decoder takes untrusted bytes, never panics, and bounds nesting at [`MAX_DEPTH`].
//!
//! ```
//! use a3_shared::xapi_wire::{Response, Value, decode_response, encode_call};
//!
//! let body = encode_call("session.login_with_password", &["root".into(), "pw".into()]);
//! assert!(body.contains("<methodName>session.login_with_password</methodName>"));
//! let reply = b"<methodResponse><params><param><value><struct>\
//!     <member><name>Status</name><value>Success</value></member>\
//!     <member><name>Value</name><value>OpaqueRef:s</value></member>\
//!     </struct></value></param></params></methodResponse>";
//! assert_eq!(decode_response(reply).unwrap(), Response::Success(Value::from("OpaqueRef:s")));
//! ```

pub mod jsonrpc;
mod value;
mod xml_tree;
pub mod xmlrpc;

pub use jsonrpc::{
    JsonCall, JsonRpcVersion, JsonValue, decode_json_call, decode_json_response, encode_json_call,
    encode_json_response,
};
pub use value::{Struct, Value};
pub use xmlrpc::{decode_call, decode_response, encode_call, encode_response};

/// How deeply values may nest (arrays and structs inside each other). XAPI's deepest
/// values (event snapshots of records holding maps) need fewer than 8 levels.
pub const MAX_DEPTH: usize = 64;

/// The null reference.
pub const NULL_REF: &str = "OpaqueRef:NULL";

/// The outcome of an XAPI call, as carried in xapi's response struct.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `{Status: "Success", Value: …}`.
    Success(Value),
    /// `{Status: "Failure", ErrorDescription: [code, params…]}`.
    Failure(Vec<String>),
}

impl Response {
    /// A failure with this error code and parameters.
    pub fn failure<I, S>(code: &str, params: I) -> Response
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut desc = vec![code.to_owned()];
        desc.extend(params.into_iter().map(Into::into));
        Response::Failure(desc)
    }

    /// The response as the struct xapi puts on the wire.
    pub fn to_value(&self) -> Value {
        match self {
            Response::Success(v) => [("Status", Value::from("Success")), ("Value", v.clone())]
                .into_iter()
                .collect(),
            Response::Failure(desc) => [
                ("Status", Value::from("Failure")),
                (
                    "ErrorDescription",
                    Value::Array(desc.iter().map(Value::from).collect()),
                ),
            ]
            .into_iter()
            .collect(),
        }
    }

    /// Reads xapi's response struct.
    pub fn from_value(value: Value) -> Result<Response, WireError> {
        let Value::Struct(mut members) = value else {
            return Err(WireError::BadEnvelope(format!(
                "the response is a {}, not a {{Status, …}} struct",
                value.kind()
            )));
        };
        let status = members
            .get("Status")
            .and_then(Value::as_str)
            .ok_or_else(|| WireError::BadEnvelope("the response has no Status".into()))?;
        match status {
            "Success" => members
                .remove("Value")
                .map(Response::Success)
                .ok_or_else(|| WireError::BadEnvelope("a Success response has no Value".into())),
            "Failure" => {
                let desc = members
                    .get("ErrorDescription")
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        WireError::BadEnvelope("a Failure response has no ErrorDescription".into())
                    })?;
                let desc: Vec<String> = desc
                    .iter()
                    .map(|v| match v {
                        Value::String(s) | Value::DateTime(s) => Ok(s.clone()),
                        Value::Int(i) => Ok(i.to_string()),
                        other => Err(WireError::BadEnvelope(format!(
                            "ErrorDescription holds a {}, not a string",
                            other.kind()
                        ))),
                    })
                    .collect::<Result<_, _>>()?;
                if desc.is_empty() {
                    return Err(WireError::BadEnvelope(
                        "the ErrorDescription is empty".into(),
                    ));
                }
                Ok(Response::Failure(desc))
            }
            other => Err(WireError::BadEnvelope(format!(
                "unknown Status {other:?}; expected Success or Failure"
            ))),
        }
    }

    /// `Ok(value)` or `Err(error description)`.
    pub fn into_result(self) -> Result<Value, Vec<String>> {
        match self {
            Response::Success(v) => Ok(v),
            Response::Failure(d) => Err(d),
        }
    }
}

/// Why bytes could not be read as an XAPI message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// The body is not UTF-8.
    #[error("XAPI message is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// The XML is malformed.
    #[error("malformed XML near byte {offset}: {message}")]
    Xml {
        /// Where the parser stopped.
        offset: u64,
        /// The parser's message.
        message: String,
    },
    /// The document ended before its root element was closed (or was empty).
    #[error("XAPI message is truncated or empty")]
    Truncated,
    /// Text or elements follow the root element.
    #[error("unexpected content outside the root element")]
    TrailingContent,
    /// An entity other than the five predefined ones or a character reference.
    #[error("unknown XML entity &{0};")]
    UnknownEntity(String),
    /// Values nest deeper than the limit.
    #[error("XAPI message nests deeper than {limit} levels")]
    TooDeep {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// An element that the XML-RPC grammar does not allow here.
    #[error("XML-RPC: expected <{expected}>, found <{found}>")]
    UnexpectedElement {
        /// What the grammar allows.
        expected: &'static str,
        /// What the message has.
        found: String,
    },
    /// A required element is missing.
    #[error("XML-RPC: <{inside}> has no <{name}>")]
    MissingElement {
        /// The missing element.
        name: &'static str,
        /// Its parent.
        inside: String,
    },
    /// Text mixed with structure.
    #[error("XML-RPC: unexpected text inside <{inside}>")]
    UnexpectedText {
        /// The element holding the text.
        inside: String,
    },
    /// A value type XAPI does not use (`base64`, `nil`, …).
    #[error("XML-RPC: value type <{0}> is not used by XAPI")]
    UnknownType(String),
    /// A scalar whose text does not parse.
    #[error("XML-RPC: {text:?} is not a valid {kind}")]
    BadScalar {
        /// The scalar type.
        kind: &'static str,
        /// The offending text.
        text: String,
    },
    /// An XML-RPC `<fault>`, which xapi itself never sends.
    #[error("XML-RPC fault {code}: {message} (not an XAPI response; is this really a XAPI host?)")]
    Fault {
        /// `faultCode`.
        code: i64,
        /// `faultString`.
        message: String,
    },
    /// Well-formed, but not the envelope XAPI uses.
    #[error("not an XAPI message: {0}")]
    BadEnvelope(String),
    /// Malformed JSON.
    #[error("malformed JSON: {0}")]
    Json(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip() {
        for r in [
            Response::Success(Value::from("OpaqueRef:x")),
            Response::failure("VM_BAD_POWER_STATE", ["OpaqueRef:v", "halted", "running"]),
        ] {
            assert_eq!(Response::from_value(r.to_value()).unwrap(), r);
        }
        assert!(Response::from_value(Value::from("x")).is_err());
        let odd: Value = [("Status", "Maybe")].into_iter().collect();
        assert!(Response::from_value(odd).is_err());
    }

    #[test]
    fn errors_read_well() {
        let e = decode_response(b"<methodResponse><fault/></methodResponse>").unwrap_err();
        assert_eq!(e.to_string(), "XML-RPC: <fault> has no <value>");
    }
}
