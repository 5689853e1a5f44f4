//! XAPI's XML-RPC encoding (`POST /`, `Content-Type: text/xml`).
//!
//! Writing follows what xapi itself sends: strings and ints are bare `<value>` text (XAPI
//! carries its 64-bit ints as decimal strings), floats `<double>`, bools
//! `<boolean>1</boolean>`, datetimes `<dateTime.iso8601>`. Reading accepts every form a
//! client library may send: `<string>`, `<i4>`/`<int>`/`<i8>` (read as `Int`), whitespace
//! between elements, and the empty `<value/>` (an empty string).

use std::fmt::Write as _;

use super::value::{Struct, Value};
use super::xml_tree::{self, Element};
use super::{MAX_DEPTH, Response, WireError};

/// The XML declaration xapi puts before every document.
const XML_DECL: &str = "<?xml version=\"1.0\"?>";

/// Element nesting allowed in a document: every value level costs at most three elements
/// (`value` → `struct` → `member`), plus the envelope.
const MAX_XML_DEPTH: usize = 3 * MAX_DEPTH + 8;

/// Encodes a method call; `params` usually start with the session ref.
pub fn encode_call(method: &str, params: &[Value]) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(XML_DECL);
    out.push_str("<methodCall><methodName>");
    escape_into(&mut out, method);
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        encode_value_into(&mut out, p);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>");
    out
}

/// Decodes a method call into its method name and parameters.
pub fn decode_call(input: &[u8]) -> Result<(String, Vec<Value>), WireError> {
    let root = xml_tree::parse(input, MAX_XML_DEPTH)?;
    expect_name(&root, "methodCall")?;
    if root.has_text() {
        return Err(WireError::UnexpectedText {
            inside: root.name.clone(),
        });
    }
    let mut method = None;
    let mut params = Vec::new();
    for el in root.elements() {
        match el.name.as_str() {
            "methodName" if method.is_none() => {
                expect_no_children(el)?;
                method = Some(el.text().trim().to_owned());
            }
            "params" if params.is_empty() => params = decode_params(el)?,
            other => {
                return Err(WireError::UnexpectedElement {
                    expected: "methodName or params",
                    found: other.to_owned(),
                });
            }
        }
    }
    let method = method.ok_or(WireError::MissingElement {
        name: "methodName",
        inside: "methodCall".into(),
    })?;
    Ok((method, params))
}

/// Encodes a response the way xapi does: always a `{Status, Value | ErrorDescription}`
/// struct, never an XML-RPC `<fault>`.
pub fn encode_response(response: &Response) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(XML_DECL);
    // Written by hand rather than as a `Struct` so that `Status` comes first, as in xapi.
    out.push_str("<methodResponse><params><param><value><struct><member><name>Status</name>");
    match response {
        Response::Success(v) => {
            out.push_str("<value>Success</value></member><member><name>Value</name>");
            encode_value_into(&mut out, v);
        }
        Response::Failure(desc) => {
            out.push_str("<value>Failure</value></member><member><name>ErrorDescription</name>");
            encode_value_into(
                &mut out,
                &Value::Array(desc.iter().map(Value::from).collect()),
            );
        }
    }
    out.push_str("</member></struct></value></param></params></methodResponse>");
    out
}

/// Decodes a response. A `<fault>` (which xapi never sends, but a proxy might) is an
/// error rather than a `Response`.
pub fn decode_response(input: &[u8]) -> Result<Response, WireError> {
    let root = xml_tree::parse(input, MAX_XML_DEPTH)?;
    expect_name(&root, "methodResponse")?;
    if root.has_text() {
        return Err(WireError::UnexpectedText {
            inside: root.name.clone(),
        });
    }
    let mut it = root.elements();
    let body = it.next().ok_or(WireError::MissingElement {
        name: "params",
        inside: "methodResponse".into(),
    })?;
    if let Some(extra) = it.next() {
        return Err(WireError::UnexpectedElement {
            expected: "nothing after params",
            found: extra.name.clone(),
        });
    }
    match body.name.as_str() {
        "params" => {
            let mut params = decode_params(body)?;
            if params.len() != 1 {
                return Err(WireError::BadEnvelope(format!(
                    "a response carries exactly one param, this one has {}",
                    params.len()
                )));
            }
            Response::from_value(params.remove(0))
        }
        "fault" => {
            let fault = decode_value(body.only_child("value")?, 0)?;
            Err(WireError::Fault {
                code: fault.get("faultCode").and_then(Value::as_i64).unwrap_or(0),
                message: fault.get_str("faultString").unwrap_or("").to_owned(),
            })
        }
        other => Err(WireError::UnexpectedElement {
            expected: "params or fault",
            found: other.to_owned(),
        }),
    }
}

/// Encodes one value as a `<value>` element (used by XVA's `ova.xml` too).
pub fn encode_value(value: &Value) -> String {
    let mut out = String::new();
    encode_value_into(&mut out, value);
    out
}

/// Decodes one `<value>` element document (the form of `task.result` and `ova.xml`).
pub fn decode_value_document(input: &[u8]) -> Result<Value, WireError> {
    let root = xml_tree::parse(input, MAX_XML_DEPTH)?;
    decode_value(&root, 0)
}

fn decode_params(params: &Element) -> Result<Vec<Value>, WireError> {
    if params.has_text() {
        return Err(WireError::UnexpectedText {
            inside: params.name.clone(),
        });
    }
    params
        .elements()
        .map(|param| {
            expect_name(param, "param")?;
            decode_value(param.only_child("value")?, 0)
        })
        .collect()
}

fn decode_value(el: &Element, depth: usize) -> Result<Value, WireError> {
    expect_name(el, "value")?;
    if depth >= MAX_DEPTH {
        return Err(WireError::TooDeep { limit: MAX_DEPTH });
    }
    let mut typed = el.elements();
    let Some(inner) = typed.next() else {
        // A bare value is a string (and how xapi sends ints); `<value/>` is "".
        return Ok(Value::String(el.text()));
    };
    let inner = if typed.next().is_some() || el.has_text() {
        return Err(WireError::UnexpectedText {
            inside: "value".into(),
        });
    } else {
        inner
    };
    let scalar = |el: &Element| -> Result<String, WireError> {
        expect_no_children(el)?;
        Ok(el.text())
    };
    Ok(match inner.name.as_str() {
        "string" => Value::String(scalar(inner)?),
        "i4" | "int" | "i8" => {
            let s = scalar(inner)?;
            Value::Int(s.trim().parse().map_err(|_| WireError::BadScalar {
                kind: "int",
                text: s,
            })?)
        }
        "double" => {
            let s = scalar(inner)?;
            Value::Double(s.trim().parse().map_err(|_| WireError::BadScalar {
                kind: "double",
                text: s,
            })?)
        }
        "boolean" => {
            let s = scalar(inner)?;
            Value::Bool(match s.trim() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    return Err(WireError::BadScalar {
                        kind: "boolean",
                        text: s,
                    });
                }
            })
        }
        "dateTime.iso8601" => Value::DateTime(scalar(inner)?.trim().to_owned()),
        "array" => {
            let data = inner.only_child("data")?;
            if data.has_text() {
                return Err(WireError::UnexpectedText {
                    inside: "data".into(),
                });
            }
            Value::Array(
                data.elements()
                    .map(|v| decode_value(v, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        "struct" => {
            if inner.has_text() {
                return Err(WireError::UnexpectedText {
                    inside: "struct".into(),
                });
            }
            let mut members = Struct::new();
            for member in inner.elements() {
                let (name, value) = decode_member(member, depth)?;
                members.insert(name, value);
            }
            Value::Struct(members)
        }
        other => return Err(WireError::UnknownType(other.to_owned())),
    })
}

fn decode_member(member: &Element, depth: usize) -> Result<(String, Value), WireError> {
    expect_name(member, "member")?;
    if member.has_text() {
        return Err(WireError::UnexpectedText {
            inside: "member".into(),
        });
    }
    let mut name = None;
    let mut value = None;
    for el in member.elements() {
        match el.name.as_str() {
            "name" if name.is_none() => {
                expect_no_children(el)?;
                name = Some(el.text());
            }
            "value" if value.is_none() => value = Some(decode_value(el, depth + 1)?),
            other => {
                return Err(WireError::UnexpectedElement {
                    expected: "name or value",
                    found: other.to_owned(),
                });
            }
        }
    }
    match (name, value) {
        (Some(n), Some(v)) => Ok((n, v)),
        (None, _) => Err(WireError::MissingElement {
            name: "name",
            inside: "member".into(),
        }),
        (Some(_), None) => Err(WireError::MissingElement {
            name: "value",
            inside: "member".into(),
        }),
    }
}

fn expect_name(el: &Element, name: &'static str) -> Result<(), WireError> {
    if el.name == name {
        Ok(())
    } else {
        Err(WireError::UnexpectedElement {
            expected: name,
            found: el.name.clone(),
        })
    }
}

fn expect_no_children(el: &Element) -> Result<(), WireError> {
    match el.elements().next() {
        None => Ok(()),
        Some(child) => Err(WireError::UnexpectedElement {
            expected: "text",
            found: child.name.clone(),
        }),
    }
}

fn encode_value_into(out: &mut String, value: &Value) {
    out.push_str("<value>");
    match value {
        Value::String(s) => escape_into(out, s),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Bool(b) => out.push_str(if *b {
            "<boolean>1</boolean>"
        } else {
            "<boolean>0</boolean>"
        }),
        Value::Double(d) => {
            let _ = write!(out, "<double>{d}</double>");
        }
        Value::DateTime(s) => {
            out.push_str("<dateTime.iso8601>");
            escape_into(out, s);
            out.push_str("</dateTime.iso8601>");
        }
        Value::Array(items) => {
            out.push_str("<array><data>");
            for item in items {
                encode_value_into(out, item);
            }
            out.push_str("</data></array>");
        }
        Value::Struct(members) => {
            out.push_str("<struct>");
            for (name, v) in members {
                out.push_str("<member><name>");
                escape_into(out, name);
                out.push_str("</name>");
                encode_value_into(out, v);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// Escapes text content. `\r` is written as a character reference because XML parsers
/// turn a raw one into `\n`.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A login reply as xapi sends it, byte for byte.
    const XAPI_LOGIN_REPLY: &str = "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name><value>OpaqueRef:0a1b2c3d-4e5f-6789-abcd-ef0123456789</value></member></struct></value></param></params></methodResponse>";

    /// An error reply as xapi sends it.
    const XAPI_HOST_IS_SLAVE: &str = "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name><value><array><data><value>HOST_IS_SLAVE</value><value>127.0.0.11</value></data></array></value></member></struct></value></param></params></methodResponse>";

    #[test]
    fn decodes_xapi_success_and_reencodes_identically() {
        let r = decode_response(XAPI_LOGIN_REPLY.as_bytes()).unwrap();
        assert_eq!(
            r,
            Response::Success(Value::from(
                "OpaqueRef:0a1b2c3d-4e5f-6789-abcd-ef0123456789"
            ))
        );
        assert_eq!(encode_response(&r), XAPI_LOGIN_REPLY);
    }

    #[test]
    fn decodes_xapi_failure_and_reencodes_identically() {
        let r = decode_response(XAPI_HOST_IS_SLAVE.as_bytes()).unwrap();
        assert_eq!(
            r,
            Response::Failure(vec!["HOST_IS_SLAVE".into(), "127.0.0.11".into()])
        );
        assert_eq!(encode_response(&r), XAPI_HOST_IS_SLAVE);
    }

    #[test]
    fn ints_are_bare_strings_on_the_wire() {
        assert_eq!(encode_value(&Value::Int(42)), "<value>42</value>");
        assert_eq!(
            decode_value_document(b"<value>42</value>").unwrap(),
            Value::from("42")
        );
        for doc in [
            "<value><i4>42</i4></value>",
            "<value><int> 42 </int></value>",
            "<value><i8>42</i8></value>",
        ] {
            assert_eq!(
                decode_value_document(doc.as_bytes()).unwrap(),
                Value::Int(42)
            );
        }
    }

    #[test]
    fn scalar_encodings() {
        assert_eq!(
            encode_value(&Value::Bool(true)),
            "<value><boolean>1</boolean></value>"
        );
        assert_eq!(
            encode_value(&Value::Double(0.5)),
            "<value><double>0.5</double></value>"
        );
        assert_eq!(
            encode_value(&Value::DateTime("20240101T12:34:56Z".into())),
            "<value><dateTime.iso8601>20240101T12:34:56Z</dateTime.iso8601></value>"
        );
        assert_eq!(decode_value_document(b"<value/>").unwrap(), Value::from(""));
        assert_eq!(
            decode_value_document(b"<value></value>").unwrap(),
            Value::from("")
        );
        assert_eq!(
            decode_value_document(b"<value><string/></value>").unwrap(),
            Value::from("")
        );
        assert_eq!(
            decode_value_document(b"<value><boolean>0</boolean></value>").unwrap(),
            Value::Bool(false)
        );
        assert_eq!(
            decode_value_document(
                b"<value><dateTime.iso8601>20240101T12:34:56Z</dateTime.iso8601></value>"
            )
            .unwrap(),
            Value::DateTime("20240101T12:34:56Z".into())
        );
    }

    #[test]
    fn escaping_round_trips() {
        let s = "a<b>&c \"q\" 'x' \r\n\t é";
        let enc = encode_value(&Value::from(s));
        assert_eq!(enc, "<value>a&lt;b&gt;&amp;c \"q\" 'x' &#13;\n\t é</value>");
        assert_eq!(
            decode_value_document(enc.as_bytes()).unwrap(),
            Value::from(s)
        );
    }

    #[test]
    fn whitespace_between_elements_is_ignored_but_string_content_kept() {
        let doc = b"<?xml version='1.0'?>\n<methodCall>\n  <methodName>VM.get_record</methodName>\n  <params>\n    <param>\n      <value><string>  OpaqueRef:a  </string></value>\n    </param>\n    <param>\n      <value>\n        <struct>\n          <member>\n            <name>k</name>\n            <value><array>\n <data>\n <value><int>1</int></value>\n </data>\n </array></value>\n          </member>\n        </struct>\n      </value>\n    </param>\n  </params>\n</methodCall>\n";
        let (method, params) = decode_call(doc).unwrap();
        assert_eq!(method, "VM.get_record");
        assert_eq!(params[0], Value::from("  OpaqueRef:a  "));
        assert_eq!(
            params[1],
            [("k", Value::Array(vec![Value::Int(1)]))]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn call_round_trip() {
        let params = vec![
            Value::from("OpaqueRef:s"),
            [
                ("name_label", Value::from("x & y")),
                ("virtual_size", Value::from("1073741824")),
                ("sharable", Value::Bool(false)),
                ("other_config", Value::empty_struct()),
                ("tags", Value::Array(vec![])),
            ]
            .into_iter()
            .collect(),
        ];
        let enc = encode_call("VDI.create", &params);
        assert_eq!(
            decode_call(enc.as_bytes()).unwrap(),
            ("VDI.create".into(), params)
        );
        assert_eq!(
            decode_call(encode_call("system.listMethods", &[]).as_bytes()).unwrap(),
            ("system.listMethods".into(), vec![])
        );
        assert_eq!(
            decode_call(b"<methodCall><methodName>a.b</methodName></methodCall>").unwrap(),
            ("a.b".into(), vec![])
        );
    }

    #[test]
    fn python_sdk_call_shape_decodes() {
        // What Python's xmlrpc.client sends for login_with_password(user, pwd, "1.0", "x").
        let doc = b"<?xml version='1.0'?>\n<methodCall>\n<methodName>session.login_with_password</methodName>\n<params>\n<param>\n<value><string>root</string></value>\n</param>\n<param>\n<value><string>pw</string></value>\n</param>\n<param>\n<value><string>1.0</string></value>\n</param>\n<param>\n<value><string>x</string></value>\n</param>\n</params>\n</methodCall>\n";
        let (m, p) = decode_call(doc).unwrap();
        assert_eq!(m, "session.login_with_password");
        assert_eq!(p.len(), 4);
        assert_eq!(p[1], Value::from("pw"));
    }

    #[test]
    fn fault_is_an_error() {
        let doc = b"<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>4</int></value></member><member><name>faultString</name><value>boom</value></member></struct></value></fault></methodResponse>";
        assert!(matches!(
            decode_response(doc),
            Err(WireError::Fault { code: 4, ref message }) if message == "boom"
        ));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "<value><array><data>".repeat(200) + &"</data></array></value>".repeat(200);
        assert!(matches!(
            decode_value_document(deep.as_bytes()),
            Err(WireError::TooDeep { .. })
        ));
        let ok = "<value><array><data>".repeat(MAX_DEPTH - 1)
            + &"</data></array></value>".repeat(MAX_DEPTH - 1);
        assert!(decode_value_document(ok.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_inputs_are_errors() {
        for doc in [
            &b"<methodResponse></methodResponse>"[..],
            b"<methodResponse><params/></methodResponse>",
            b"<methodResponse><params><param><value>x</value></param></params></methodResponse>",
            b"<methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member></struct></value></param></params></methodResponse>",
            b"<value><i4>x</i4></value>",
            b"<value><double>x</double></value>",
            b"<value><boolean>2</boolean></value>",
            b"<value><base64>AA==</base64></value>",
            b"<value>a<string>b</string></value>",
            b"<value><struct><member><name>a</name></member></struct></value>",
            b"<value><array></array></value>",
            b"<notavalue/>",
        ] {
            let r1 = decode_response(doc);
            let r2 = decode_value_document(doc);
            assert!(r1.is_err() && r2.is_err(), "{}", String::from_utf8_lossy(doc));
        }
        assert!(decode_call(b"<methodCall><params/></methodCall>").is_err());
    }
}
