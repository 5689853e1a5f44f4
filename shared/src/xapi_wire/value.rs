//! The XAPI value model shared by both encodings.

use std::collections::BTreeMap;

/// A struct's members, ordered by name so that encodings are deterministic.
pub type Struct = BTreeMap<String, Value>;

/// One XAPI value as it travels on the wire.
///
/// XAPI's own types map onto these: refs, uuids and enums are `String`, sets are `Array`,
/// maps and records are `Struct`. Over XML-RPC an XAPI `int` travels as a bare string, so
/// a decoded XML-RPC record holds its ints as `String`; [`Value::as_i64`] reads both.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string, ref, uuid or enum value.
    String(String),
    /// A 64-bit integer (`<i4>`/`<int>` over XML-RPC, a number over JSON-RPC).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A float.
    Double(f64),
    /// A datetime, kept as XAPI writes it, e.g. `20240101T12:34:56Z`.
    DateTime(String),
    /// A set or list.
    Array(Vec<Value>),
    /// A map or record.
    Struct(Struct),
}

impl Value {
    /// The string inside a `String` or `DateTime`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::DateTime(s) => Some(s),
            _ => None,
        }
    }

    /// An integer, from an `Int` or from a string of decimal digits (XAPI's XML-RPC form).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A float, from a `Double`, an `Int`, or a numeric string.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Double(d) => Some(*d),
            Value::Int(i) => Some(*i as f64),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The boolean inside a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The elements of an `Array`.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The members of a `Struct`.
    pub fn as_struct(&self) -> Option<&Struct> {
        match self {
            Value::Struct(s) => Some(s),
            _ => None,
        }
    }

    /// A member of a `Struct` by name; `None` for a missing member or a non-struct.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.as_struct()?.get(field)
    }

    /// A string member of a `Struct`, the common case for refs, uuids and names.
    pub fn get_str(&self, field: &str) -> Option<&str> {
        self.get(field)?.as_str()
    }

    /// The name of this value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Int(_) => "int",
            Value::Bool(_) => "bool",
            Value::Double(_) => "double",
            Value::DateTime(_) => "datetime",
            Value::Array(_) => "array",
            Value::Struct(_) => "struct",
        }
    }

    /// An empty struct, the value of an empty XAPI map.
    pub fn empty_struct() -> Value {
        Value::Struct(Struct::new())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Value::String(s.clone())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(d: f64) -> Self {
        Value::Double(d)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Self {
        Value::Array(items.into_iter().map(Into::into).collect())
    }
}

impl From<Struct> for Value {
    fn from(s: Struct) -> Self {
        Value::Struct(s)
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Value {
    /// Collects `(name, value)` pairs into a `Struct`.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Value::Struct(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_read_from_both_wire_forms() {
        assert_eq!(Value::from("42").as_i64(), Some(42));
        assert_eq!(Value::Int(-7).as_i64(), Some(-7));
        assert_eq!(Value::from("x").as_i64(), None);
        assert_eq!(Value::Bool(true).as_i64(), None);
    }

    #[test]
    fn struct_helpers() {
        let v: Value = [
            ("name_label", Value::from("vm1")),
            ("VCPUs_max", Value::from("2")),
        ]
        .into_iter()
        .collect();
        assert_eq!(v.get_str("name_label"), Some("vm1"));
        assert_eq!(v.get("VCPUs_max").and_then(Value::as_i64), Some(2));
        assert!(v.get("missing").is_none());
        assert!(Value::from("x").get("a").is_none());
        assert_eq!(v.kind(), "struct");
    }
}
