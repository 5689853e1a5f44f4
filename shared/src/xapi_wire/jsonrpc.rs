//! XAPI's JSON-RPC encoding (`POST /jsonrpc`, `Content-Type: application/json`).
//!
//! This is the shape xapi and Xen Orchestra speak. Success is
//! `{"jsonrpc":"2.0","result":…,"id":…}`. A failure in version 2.0 is xapi's error
//! object `{"code":1,"message":CODE,"data":[params…]}`; xapi always uses code 1 and keeps
//! the XAPI error code in `message`. A version 1.0 request (no `jsonrpc` member) gets
//! `{"result":null,"error":[CODE, params…],"id":…}`, which is what hosts before
//! XenServer 7.3 sent. Ints are JSON numbers here, unlike XML-RPC.

use serde_json::{Map, Number};

use super::value::{Struct, Value};
use super::{MAX_DEPTH, Response, WireError};

/// A JSON document, as request ids are.
pub use serde_json::Value as JsonValue;

/// The error code xapi puts in every JSON-RPC 2.0 error object; the XAPI code itself is
/// the message.
pub const XAPI_JSON_ERROR_CODE: i64 = 1;

/// Which JSON-RPC dialect a request used; the reply must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonRpcVersion {
    /// No `jsonrpc` member: errors are bare arrays.
    V1,
    /// `"jsonrpc": "2.0"`: errors are `{code, message, data}` objects.
    V2,
}

/// A decoded JSON-RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonCall {
    /// `Class.method`.
    pub method: String,
    /// Positional parameters.
    pub params: Vec<Value>,
    /// The request id, echoed in the reply.
    pub id: serde_json::Value,
    /// The dialect, echoed in the reply.
    pub version: JsonRpcVersion,
}

/// Encodes a JSON-RPC 2.0 request.
pub fn encode_json_call(method: &str, params: &[Value], id: u64) -> String {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "method": method,
        "params": params.iter().map(to_json).collect::<Vec<_>>(),
        "id": id,
    });
    body.to_string()
}

/// Decodes a JSON-RPC request. A single object as `params` is one struct parameter, as
/// rpclib sends it.
pub fn decode_json_call(input: &[u8]) -> Result<JsonCall, WireError> {
    let doc = parse(input)?;
    let obj = doc
        .as_object()
        .ok_or_else(|| WireError::BadEnvelope("a JSON-RPC request is an object".into()))?;
    let version = match obj.get("jsonrpc") {
        None => JsonRpcVersion::V1,
        Some(v) if v == "2.0" => JsonRpcVersion::V2,
        Some(v) => {
            return Err(WireError::BadEnvelope(format!(
                "unsupported JSON-RPC version {v}; use \"2.0\""
            )));
        }
    };
    let method = obj
        .get("method")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| WireError::BadEnvelope("the request has no string \"method\"".into()))?
        .to_owned();
    let params = match obj.get("params") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|p| from_json_at(p, 0))
            .collect::<Result<_, _>>()?,
        Some(single @ serde_json::Value::Object(_)) => vec![from_json_at(single, 0)?],
        Some(other) => {
            return Err(WireError::BadEnvelope(format!(
                "\"params\" must be an array, not {other}"
            )));
        }
    };
    Ok(JsonCall {
        method,
        params,
        id: obj.get("id").cloned().unwrap_or(serde_json::Value::Null),
        version,
    })
}

/// Encodes a reply to a request with this `id` and `version`.
pub fn encode_json_response(
    response: &Response,
    id: &serde_json::Value,
    version: JsonRpcVersion,
) -> String {
    let body = match (response, version) {
        (Response::Success(v), JsonRpcVersion::V2) => {
            serde_json::json!({"jsonrpc": "2.0", "result": to_json(v), "id": id})
        }
        (Response::Success(v), JsonRpcVersion::V1) => {
            serde_json::json!({"result": to_json(v), "error": null, "id": id})
        }
        (Response::Failure(desc), JsonRpcVersion::V2) => {
            let (code, params) = desc.split_first().map_or(("", &[][..]), |(c, p)| (c, p));
            serde_json::json!({
                "jsonrpc": "2.0",
                "error": {"code": XAPI_JSON_ERROR_CODE, "message": code, "data": params},
                "id": id,
            })
        }
        (Response::Failure(desc), JsonRpcVersion::V1) => {
            serde_json::json!({"result": null, "error": desc, "id": id})
        }
    };
    body.to_string()
}

/// Decodes a reply in either dialect.
pub fn decode_json_response(input: &[u8]) -> Result<Response, WireError> {
    let doc = parse(input)?;
    let obj = doc
        .as_object()
        .ok_or_else(|| WireError::BadEnvelope("a JSON-RPC response is an object".into()))?;
    match obj.get("error") {
        None | Some(serde_json::Value::Null) => {
            let result = obj.get("result").ok_or_else(|| {
                WireError::BadEnvelope("the response has neither \"result\" nor \"error\"".into())
            })?;
            Ok(Response::Success(from_json_at(result, 0)?))
        }
        Some(serde_json::Value::Array(desc)) => {
            non_empty(Response::Failure(error_strings(desc.iter())?))
        }
        Some(serde_json::Value::Object(err)) => {
            let code = err
                .get("message")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| {
                    WireError::BadEnvelope("the error object has no string \"message\"".into())
                })?;
            let params = match err.get("data") {
                Some(serde_json::Value::Array(items)) => error_strings(items.iter())?,
                _ => Vec::new(),
            };
            let mut desc = vec![code.to_owned()];
            desc.extend(params);
            Ok(Response::Failure(desc))
        }
        Some(other) => Err(WireError::BadEnvelope(format!(
            "\"error\" must be an object or an array, not {other}"
        ))),
    }
}

/// Converts a value to JSON. A non-finite float, which JSON cannot hold, becomes its text.
pub fn to_json(value: &Value) -> serde_json::Value {
    match value {
        Value::String(s) | Value::DateTime(s) => serde_json::Value::String(s.clone()),
        Value::Int(i) => serde_json::Value::Number(Number::from(*i)),
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Double(d) => Number::from_f64(*d)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| serde_json::Value::String(d.to_string())),
        Value::Array(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Struct(members) => serde_json::Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect::<Map<_, _>>(),
        ),
    }
}

/// Converts JSON to a value. `null`, which xapi returns for void methods, becomes the
/// empty string that XML-RPC carries in the same place.
pub fn from_json(json: &serde_json::Value) -> Result<Value, WireError> {
    from_json_at(json, 0)
}

fn from_json_at(json: &serde_json::Value, depth: usize) -> Result<Value, WireError> {
    if depth >= MAX_DEPTH {
        return Err(WireError::TooDeep { limit: MAX_DEPTH });
    }
    Ok(match json {
        serde_json::Value::Null => Value::String(String::new()),
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| from_json_at(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        serde_json::Value::Object(members) => Value::Struct(
            members
                .iter()
                .map(|(k, v)| Ok((k.clone(), from_json_at(v, depth + 1)?)))
                .collect::<Result<Struct, WireError>>()?,
        ),
    })
}

fn parse(input: &[u8]) -> Result<serde_json::Value, WireError> {
    serde_json::from_slice(input).map_err(|e| WireError::Json(e.to_string()))
}

fn error_strings<'a>(
    items: impl Iterator<Item = &'a serde_json::Value>,
) -> Result<Vec<String>, WireError> {
    items
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            other => Err(WireError::BadEnvelope(format!(
                "error parameters are strings, not {other}"
            ))),
        })
        .collect()
}

fn non_empty(r: Response) -> Result<Response, WireError> {
    match &r {
        Response::Failure(d) if d.is_empty() => Err(WireError::BadEnvelope(
            "the error description is empty".into(),
        )),
        _ => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xapi_v2_error_shape() {
        let r = Response::Failure(vec![
            "HANDLE_INVALID".into(),
            "VM".into(),
            "OpaqueRef:x".into(),
        ]);
        let enc = encode_json_response(&r, &serde_json::json!(7), JsonRpcVersion::V2);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&enc).unwrap(),
            serde_json::json!({
                "jsonrpc": "2.0",
                "error": {"code": 1, "message": "HANDLE_INVALID", "data": ["VM", "OpaqueRef:x"]},
                "id": 7,
            })
        );
        assert_eq!(decode_json_response(enc.as_bytes()).unwrap(), r);
    }

    #[test]
    fn v1_error_shape() {
        let r = Response::Failure(vec!["SESSION_INVALID".into(), "OpaqueRef:s".into()]);
        let enc = encode_json_response(&r, &serde_json::json!("a"), JsonRpcVersion::V1);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&enc).unwrap(),
            serde_json::json!({"result": null, "error": ["SESSION_INVALID", "OpaqueRef:s"], "id": "a"})
        );
        assert_eq!(decode_json_response(enc.as_bytes()).unwrap(), r);
    }

    #[test]
    fn success_round_trip_keeps_types() {
        let v: Value = [
            ("memory_static_max", Value::Int(1 << 30)),
            ("is_a_template", Value::Bool(false)),
            ("progress", Value::Double(0.25)),
            ("VBDs", Value::from(vec!["OpaqueRef:a", "OpaqueRef:b"])),
            ("other_config", Value::empty_struct()),
        ]
        .into_iter()
        .collect();
        let r = Response::Success(v);
        let enc = encode_json_response(&r, &serde_json::json!(1), JsonRpcVersion::V2);
        assert_eq!(decode_json_response(enc.as_bytes()).unwrap(), r);
    }

    #[test]
    fn call_round_trip_and_shapes() {
        let params = vec![Value::from("root"), Value::from("pw")];
        let enc = encode_json_call("session.login_with_password", &params, 3);
        let call = decode_json_call(enc.as_bytes()).unwrap();
        assert_eq!(call.method, "session.login_with_password");
        assert_eq!(call.params, params);
        assert_eq!(call.id, serde_json::json!(3));
        assert_eq!(call.version, JsonRpcVersion::V2);

        let v1 = decode_json_call(br#"{"method":"a.b","params":[1],"id":null}"#).unwrap();
        assert_eq!(v1.version, JsonRpcVersion::V1);
        assert_eq!(v1.params, vec![Value::Int(1)]);
        let by_obj =
            decode_json_call(br#"{"jsonrpc":"2.0","method":"a.b","params":{"k":"v"},"id":1}"#)
                .unwrap();
        assert_eq!(by_obj.params.len(), 1);
        assert_eq!(by_obj.params[0].get_str("k"), Some("v"));
    }

    #[test]
    fn void_result_is_empty_string() {
        assert_eq!(
            decode_json_response(br#"{"jsonrpc":"2.0","result":null,"id":1}"#).unwrap(),
            Response::Success(Value::from(""))
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        for doc in [
            &b""[..],
            b"[]",
            b"{}",
            br#"{"jsonrpc":"2.0","error":"x","id":1}"#,
            br#"{"jsonrpc":"2.0","error":{"code":1},"id":1}"#,
            br#"{"error":[],"id":1}"#,
            br#"{"error":[{}],"id":1}"#,
        ] {
            assert!(
                decode_json_response(doc).is_err(),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        for doc in [
            &br#"{"params":[]}"#[..],
            br#"{"jsonrpc":"1.5","method":"a"}"#,
            br#"{"method":"a","params":"x"}"#,
        ] {
            assert!(
                decode_json_call(doc).is_err(),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(matches!(
            from_json(&serde_json::from_str(&deep).unwrap()),
            Err(WireError::TooDeep { .. })
        ));
    }
}
